//! inotify: every watch is resolved to a path at dump time (file handle from
//! fdinfo, open_by_handle_at on the mount of the watched inode, readlink) and
//! added again on restore, in wd order, keeping the watch descriptors.
//! fanotify's inode marks are resolved the same way (`resolve_handle`).

use super::{fd_of, nr, tokens, O_CLOEXEC, O_NONBLOCK};
use crate::files::FileCtx;
use crate::json::Json;
use crate::sys::{self, cstr, Error, Fd, Result};
use std::os::unix::fs::MetadataExt;

const O_PATH: u64 = 0o10000000;
const O_DIRECTORY: u64 = 0o200000;
const IN_DONT_FOLLOW: u32 = 0x02000000;
const IN_MASK_ADD: u32 = 0x20000000;

/// Mount points (phaul's view) of device `maj:min`, whole-filesystem mounts first.
pub(crate) fn mounts_of(maj: u64, min: u64) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = format!("{}:{}", maj, min);
    let mut out: Vec<(bool, String)> = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() > 4 && f[2] == want {
            out.push((f[3] != "/", crate::proc::unescape_mountinfo(f[4])));
        }
    }
    out.sort();
    out.into_iter().map(|(_, p)| p).collect()
}


/// The bytes of an fdinfo `f_handle:` hex string.
pub(crate) fn handle_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect()
}

/// The path of inode `ino` on device `sdev` (fdinfo's encoding: major << 20
/// | minor) named by a file handle; Err: why it cannot be named by path.
pub(crate) fn resolve_handle(ino: u64, sdev: u64, htype: u32, handle: &[u8]) -> std::result::Result<String, String> {
    let (maj, min) = (sdev >> 20, sdev & 0xfffff);
    let mut fh = Vec::with_capacity(8 + handle.len());
    fh.extend_from_slice(&(handle.len() as u32).to_le_bytes());
    fh.extend_from_slice(&htype.to_le_bytes());
    fh.extend_from_slice(handle);
    let mut last = String::from("no mount of the device is visible");
    for m in mounts_of(maj, min) {
        let c = match cstr(&m) {
            Ok(c) => c,
            Err(e) => {
                last = e.message;
                continue;
            }
        };
        let mfd = match sys::call("open mount", crate::sys::nr::OPEN, &[c.as_ptr() as u64, O_DIRECTORY | O_CLOEXEC as u64, 0] /* not O_PATH: open_by_handle_at ignores those */) {
            Ok(f) => fd_of(f),
            Err(e) => {
                last = e.message;
                continue;
            }
        };
        let f = match sys::call("open_by_handle_at", nr::OPEN_BY_HANDLE_AT, &[mfd.raw() as u64, fh.as_ptr() as u64, O_PATH | O_CLOEXEC as u64]) {
            Ok(f) => fd_of(f),
            Err(e) => {
                last = e.message;
                continue;
            }
        };
        let path = crate::proc::readlink(&format!("/proc/self/fd/{}", f.raw())).map_err(|e| e.message)?;
        if path.ends_with(" (deleted)") {
            last = "the watched file was removed".to_string();
            continue;
        }
        if !path.starts_with('/') {
            last = format!("the watched file is now {}", path);
            continue;
        }
        match std::fs::symlink_metadata(&path) {
            Ok(md) if md.ino() == ino => return Ok(path),
            _ => last = format!("{} is not reachable by path", path),
        }
    }
    Err(last)
}

pub fn describe(ctx: &FileCtx) -> Result<Json> {
    let mut watches = Vec::new();
    for l in ctx.info.raw.lines().filter(|l| l.starts_with("inotify ")) {
        let t = tokens(l);
        let bad = || Error::new("EPROC", format!("fd {}: inotify fdinfo line not understood: {}", ctx.fd, l));
        let hx = |k: &str| t.get(k).and_then(|v| u64::from_str_radix(v, 16).ok());
        let wd = hx("wd").ok_or_else(bad)?;
        let ino = hx("ino").ok_or_else(bad)?;
        let sdev = hx("sdev").ok_or_else(bad)?;
        let mask = hx("mask").ok_or_else(bad)? as u32;
        let htype = hx("fhandle-type").ok_or_else(bad)? as u32;
        let hstr = t.get("f_handle").ok_or_else(bad)?;
        let path = match resolve_handle(ino, sdev, htype, &handle_bytes(hstr)) {
            Ok(p) => p,
            Err(why) => return ctx.unsupported(&format!("inotify watch on inode {} of device {}:{} ({})", ino, sdev >> 20, sdev & 0xfffff, why)),
        };
        watches.push(Json::obj().with("wd", wd).with("path", path).with("mask", mask));
    }
    Ok(ctx.base.clone().with("kind", "inotify").with("inotify_watches", watches))
}

fn add_watch(fd: &Fd, path: &str, mask: u32) -> Result<i64> {
    let c = cstr(path)?;
    sys::call(&format!("inotify_add_watch {}", path), nr::INOTIFY_ADD_WATCH, &[fd.raw() as u64, c.as_ptr() as u64, mask as u64])
}

pub fn open(f: &Json) -> Result<Fd> {
    let flags = f.u64_of("flags").unwrap_or(0) as u32;
    let fd = fd_of(sys::call("inotify_init1", nr::INOTIFY_INIT1, &[(O_NONBLOCK | O_CLOEXEC) as u64])?);
    let mut ws: Vec<(i64, String, u32)> =
        f.arr_of("inotify_watches").iter().map(|w| (w.i64_of("wd").unwrap_or(0), w.str_of("path").unwrap_or("").to_string(), w.u64_of("mask").unwrap_or(0) as u32)).collect();
    ws.sort();
    let spare = ["/", "/proc", "/dev", "/sys", "/tmp"].into_iter().find(|s| !ws.iter().any(|w| w.1 == *s));
    let mut dummies = false;
    for (wd, path, mask) in &ws {
        // Watch descriptors are handed out in increasing order: burn the
        // numbers of watches removed before the dump with throwaway watches.
        let mut guard = 0;
        loop {
            let got = add_watch(&fd, path, (mask | IN_DONT_FOLLOW) & !IN_MASK_ADD)
                .map_err(|e| Error::new("EFILE", format!("inotify watch {} on {}: {}", wd, path, e.message)))?;
            if got == *wd {
                break;
            }
            let _ = sys::call("inotify_rm_watch", nr::INOTIFY_RM_WATCH, &[fd.raw() as u64, got as u64]);
            dummies = true;
            guard += 1;
            if got > *wd || guard > 100_000 {
                return Err(Error::new("EFILE", format!("inotify watch on {} gets descriptor {} instead of {}", path, got, wd)));
            }
            // step the counter with the spare path up to wd - 1
            if got < *wd - 1 {
                let s = spare.ok_or_else(|| Error::new("EFILE", "no spare path to skip inotify watch descriptors"))?;
                while add_watch(&fd, s, 0x4 /* IN_ATTRIB */).map(|n| {
                    let _ = sys::call("inotify_rm_watch", nr::INOTIFY_RM_WATCH, &[fd.raw() as u64, n as u64]);
                    n
                })? < *wd - 1
                {}
            }
        }
    }
    if dummies {
        // Drop the IN_IGNORED events of the throwaway watches.
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = sys::call("read inotify", crate::sys::nr::READ, &[fd.raw() as u64, buf.as_mut_ptr() as u64, buf.len() as u64]) {
            if n <= 0 {
                break;
            }
        }
    }
    if flags & O_NONBLOCK == 0 {
        sys::call("F_SETFL", crate::sys::nr::FCNTL, &[fd.raw() as u64, 4, 0])?;
    }
    Ok(fd)
}
