//! What this host offers phaul: each feature probed for real, not guessed
//! from the kernel version.

use crate::json::Json;
use crate::sys::{self, nr, Fd};
use std::fs::File;
use std::os::unix::io::AsRawFd;

fn feature(ok: bool, detail: impl Into<String>) -> Json {
    Json::obj().with("ok", ok).with("detail", detail.into())
}

fn cap_eff() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()).unwrap_or(0)
}

fn probe_uffd_wp_async() -> Json {
    const UFFD_USER_MODE_ONLY: u64 = 1;
    let fd = match unsafe { sys::raw(nr::USERFAULTFD, &[0o2000000 | 0o4000 | UFFD_USER_MODE_ONLY]) } {
        Ok(f) => Fd(f as i32),
        Err(e) => return feature(false, format!("userfaultfd: {}", sys::strerror(e))),
    };
    // struct uffdio_api { api, features, ioctls }
    let mut api: [u64; 3] = [0xAA, 0xa000, 0]; // WP_ASYNC | WP_UNPOPULATED
    const UFFDIO_API: u64 = 0xc018aa3f;
    match unsafe { sys::raw(nr::IOCTL, &[fd.raw() as u64, UFFDIO_API, api.as_mut_ptr() as u64]) } {
        Ok(_) => feature(true, "write-protect in async mode (UFFD_FEATURE_WP_ASYNC)"),
        Err(e) => feature(false, format!("UFFDIO_API with WP_ASYNC: {}", sys::strerror(e))),
    }
}

fn probe_pagemap_scan() -> Json {
    let f = match File::open("/proc/self/pagemap") {
        Ok(f) => f,
        Err(e) => return feature(false, format!("/proc/self/pagemap: {}", e)),
    };
    // struct pm_scan_arg with an empty range: valid on kernels with the ioctl.
    let arg: [u64; 12] = [96, 0, 0x1000, 0x1000, 0, 0, 0, 0, 0, 0, 0, 0];
    const PAGEMAP_SCAN: u64 = 0xc0606610;
    match unsafe { sys::raw(nr::IOCTL, &[f.as_raw_fd() as u64, PAGEMAP_SCAN, arg.as_ptr() as u64]) } {
        Ok(_) => feature(true, "PAGEMAP_SCAN ioctl (Linux 6.7+)"),
        Err(e) => feature(false, format!("PAGEMAP_SCAN: {}", sys::strerror(e))),
    }
}

fn probe_soft_dirty() -> Json {
    // Touch a page, clear soft-dirty bits, write it again: bit 55 must come back.
    let mut page = vec![0u8; 8192];
    let a = (page.as_mut_ptr() as u64 + 4095) & !4095;
    unsafe { std::ptr::write_volatile(a as *mut u8, 1) };
    if std::fs::write("/proc/self/clear_refs", "4").is_err() {
        return feature(false, "cannot write /proc/self/clear_refs");
    }
    unsafe { std::ptr::write_volatile(a as *mut u8, 2) };
    let f = match File::open("/proc/self/pagemap") {
        Ok(f) => f,
        Err(e) => return feature(false, e.to_string()),
    };
    let mut b = [0u8; 8];
    let ok = std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, a / 4096 * 8).is_ok() && u64::from_le_bytes(b) & (1 << 55) != 0;
    feature(ok, if ok { "soft-dirty bits (CONFIG_MEM_SOFT_DIRTY)" } else { "no soft-dirty bits on this kernel (CONFIG_MEM_SOFT_DIRTY is off)" })
}

fn probe_clone3_set_tid() -> Json {
    // clone3 with a zero size is rejected with EINVAL where clone3 exists.
    match unsafe { sys::raw(nr::CLONE3, &[0, 0]) } {
        Err(22) => feature(std::path::Path::new("/proc/sys/kernel/ns_last_pid").exists(), "clone3 with set_tid (Linux 5.5+)"),
        Err(e) => feature(false, format!("clone3: {}", sys::strerror(e))),
        Ok(_) => feature(false, "clone3 probe returned unexpectedly"),
    }
}

fn probe_tcp_repair() -> Json {
    let s = match unsafe { sys::raw(41 /* socket */, &[2, 1 | 0o2000000, 0]) } {
        Ok(s) => Fd(s as i32),
        Err(e) => return feature(false, format!("socket: {}", sys::strerror(e))),
    };
    let one: i32 = 1;
    match unsafe { sys::raw(54 /* setsockopt */, &[s.raw() as u64, 6, 19, &one as *const i32 as u64, 4]) } {
        Ok(_) => feature(true, "TCP_REPAIR (needs CAP_NET_ADMIN)"),
        Err(e) => feature(false, format!("TCP_REPAIR: {}", sys::strerror(e))),
    }
}

pub fn check() -> Json {
    let caps = cap_eff();
    let cap = |bit: u32, name: &str| feature(caps & (1u64 << bit) != 0, name.to_string());
    let mut local = 0u64;
    let iov_l = [&mut local as *mut u64 as u64, 8u64];
    let remote = 42u64;
    let iov_r = [&remote as *const u64 as u64, 8u64];
    let pvr = unsafe { sys::raw(nr::PROCESS_VM_READV, &[sys::getpid() as u64, iov_l.as_ptr() as u64, 1, iov_r.as_ptr() as u64, 1, 0]) };
    let (xcr0, xsize) = crate::arch::xsave_info();
    let features = Json::obj()
        .with("ptrace", cap(19, "CAP_SYS_PTRACE"))
        .with("checkpoint_restore", feature(caps & (1u64 << 40) != 0 || caps & (1 << 21) != 0, "CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN (choosing pids)"))
        .with("sys_resource", cap(24, "CAP_SYS_RESOURCE (raising hard rlimits on restore)"))
        .with("net_admin", cap(12, "CAP_NET_ADMIN"))
        .with("process_vm_readv", feature(pvr.is_ok() && local == 42, "process_vm_readv"))
        .with("pagemap_scan", probe_pagemap_scan())
        .with("uffd_wp_async", probe_uffd_wp_async())
        .with("soft_dirty", probe_soft_dirty())
        .with("clone3_set_tid", probe_clone3_set_tid())
        .with("tcp_repair", probe_tcp_repair());
    Json::obj()
        .with("features", features)
        .with("arch", crate::arch::ARCH)
        .with("kernel", std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim())
        .with("boot_id", crate::proc::boot_id())
        .with("net_ns", crate::proc::net_ns_id(None))
        .with("xcr0", format!("{:#x}", xcr0))
        .with("xsave_size", xsize)
}
