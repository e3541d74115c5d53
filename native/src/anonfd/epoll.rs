//! epoll: the object is created by phaul; its watches are added from inside
//! the restored process (epoll_ctl names the target's descriptor numbers).

use super::{fd_of, nr, pid_of_pidfd, registry, tokens, O_CLOEXEC};
use crate::files::FileCtx;
use crate::inject::Injector;
use crate::json::Json;
use crate::sys::{self, Error, Fd, Pid, Result};

const KCMP_EPOLL_TFD: u64 = 7;
const EPOLL_CTL_ADD: u64 = 1;

/// Is descriptor `fd` of `pid` the very file epoll `epfd` watches as its
/// `toff`-th target registered under number `tfd`?
fn same_target(pid: Pid, epfd: i32, tfd: i32, toff: u32, fd: i32) -> bool {
    let slot: [u32; 3] = [epfd as u32, tfd as u32, toff];
    matches!(unsafe { sys::raw(crate::sys::nr::KCMP, &[pid as u64, pid as u64, KCMP_EPOLL_TFD, fd as u64, slot.as_ptr() as u64]) }, Ok(0))
}

pub fn describe(ctx: &FileCtx) -> Result<Json> {
    let pid = pid_of_pidfd(ctx.pidfd)?;
    let mut watches = Vec::new();
    // Several targets can be registered under one number (the number closed
    // or reused after each registration): the kernel tells them apart by
    // their rank among those of that number, in the order fdinfo lists them.
    let mut rank: std::collections::HashMap<i32, u32> = std::collections::HashMap::new();
    let mut fds: Option<Vec<i32>> = None;
    for l in ctx.info.raw.lines().filter(|l| l.starts_with("tfd:")) {
        let t = tokens(l);
        let bad = || Error::new("EPROC", format!("fd {}: epoll fdinfo line not understood: {}", ctx.fd, l));
        let tfd: i32 = t.get("tfd").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let events = t.get("events").and_then(|v| u32::from_str_radix(v, 16).ok()).ok_or_else(bad)?;
        let data = t.get("data").and_then(|v| u64::from_str_radix(v, 16).ok()).ok_or_else(bad)?;
        let toff = {
            let r = rank.entry(tfd).or_insert(0);
            *r += 1;
            *r - 1
        };
        let w = Json::obj().with("tfd", tfd).with("events", events).with("data", data);
        if same_target(pid, ctx.fd, tfd, toff, tfd) {
            watches.push(w);
            continue;
        }
        // The number was closed (or names another file now): the watch goes
        // back through another descriptor of the process holding its file.
        let all = fds.get_or_insert_with(|| crate::proc::fds(pid).unwrap_or_default());
        match all.iter().copied().find(|&o| o != tfd && same_target(pid, ctx.fd, tfd, toff, o)) {
            Some(via) => watches.push(w.with("via", via)),
            None => {
                return ctx.unsupported(&format!(
                    "epoll watch on fd {} that is closed or now names another file, and whose file no other descriptor of the process holds (watches registered through descriptors of other processes)",
                    tfd
                ))
            }
        }
    }
    Ok(ctx.base.clone().with("kind", "epoll").with("owner_pid", pid).with("watches", watches))
}

pub fn open(f: &Json) -> Result<Fd> {
    let _ = f;
    Ok(fd_of(sys::call("epoll_create1", nr::EPOLL_CREATE1, &[O_CLOEXEC as u64])?))
}

pub fn after_install(inj: &mut Injector, p: &Json) -> Result<()> {
    let pid = p.i64_of("pid").unwrap_or(0);
    for fde in p.arr_of("fds") {
        let id = fde.u64_of("file_id").unwrap_or(0);
        let epfd = fde.u64_of("fd").unwrap_or(0);
        let f = {
            let mut reg = registry();
            let f = match reg.files.get(&id) {
                Some(f) if f.str_of("kind") == Some("epoll") && f.i64_of("owner_pid") == Some(pid) && !reg.epoll_done.contains(&id) => f.clone(),
                _ => continue,
            };
            reg.epoll_done.push(id);
            f
        };
        for w in f.arr_of("watches") {
            let tfd = w.u64_of("tfd").unwrap_or(0);
            let events = w.u64_of("events").unwrap_or(0) as u32;
            let data = w.u64_of("data").unwrap_or(0);
            // struct epoll_event is packed on x86_64: u32 events, u64 data.
            let mut ev = Vec::with_capacity(12);
            ev.extend_from_slice(&events.to_le_bytes());
            ev.extend_from_slice(&data.to_le_bytes());
            let a = inj.put(&ev, 2048)?;
            match w.u64_of("via") {
                None => {
                    inj.call(&format!("epoll_ctl(fd {}, ADD, fd {})", epfd, tfd), nr::EPOLL_CTL, &[epfd, EPOLL_CTL_ADD, tfd, a])?;
                }
                Some(via) => add_through(inj, epfd, tfd, via, a)?,
            }
        }
    }
    Ok(())
}

/// Register the file of descriptor `via` under number `tfd` (closed, or
/// naming another file now): `tfd` names it for the moment of the
/// epoll_ctl; whatever `tfd` held is put back after, with its close-on-exec.
fn add_through(inj: &mut Injector, epfd: u64, tfd: u64, via: u64, ev: u64) -> Result<()> {
    const F_GETFD: u64 = 1;
    const F_DUPFD_CLOEXEC: u64 = 1030;
    const DUP3: i64 = 292;
    let held = inj.raw(crate::sys::nr::FCNTL, &[tfd, F_GETFD, 0])?;
    let saved = if held >= 0 { Some(inj.call("F_DUPFD_CLOEXEC (aside)", crate::sys::nr::FCNTL, &[tfd, F_DUPFD_CLOEXEC, 0])?) } else { None };
    inj.call(&format!("dup3 fd {} to {}", via, tfd), DUP3, &[via, tfd, O_CLOEXEC as u64])?;
    let r = inj.call(&format!("epoll_ctl(fd {}, ADD, fd {} as fd {})", epfd, via, tfd), nr::EPOLL_CTL, &[epfd, EPOLL_CTL_ADD, tfd, ev]);
    match saved {
        Some(tmp) => {
            inj.call(&format!("dup3 back to fd {}", tfd), DUP3, &[tmp, tfd, if held & 1 != 0 { O_CLOEXEC as u64 } else { 0 }])?;
            inj.call("close", crate::sys::nr::CLOSE, &[tmp])?;
        }
        None => {
            inj.call("close", crate::sys::nr::CLOSE, &[tfd])?;
        }
    }
    r.map(|_| ())
}
