//! epoll: the object is created by phaul; its watches are added from inside
//! the restored process (epoll_ctl names the target's descriptor numbers).

use super::{fd_of, nr, pid_of_pidfd, registry, tokens, O_CLOEXEC};
use crate::files::FileCtx;
use crate::inject::Injector;
use crate::json::Json;
use crate::sys::{self, Error, Fd, Pid, Result};

const KCMP_EPOLL_TFD: u64 = 7;
const EPOLL_CTL_ADD: u64 = 1;

/// Is `tfd` of `pid` the very file watched as `tfd` by epoll `epfd`?
fn same_target(pid: Pid, epfd: i32, tfd: i32) -> bool {
    let slot: [u32; 3] = [epfd as u32, tfd as u32, 0];
    matches!(unsafe { sys::raw(crate::sys::nr::KCMP, &[pid as u64, pid as u64, KCMP_EPOLL_TFD, tfd as u64, slot.as_ptr() as u64]) }, Ok(0))
}

pub fn describe(ctx: &FileCtx) -> Result<Json> {
    let pid = pid_of_pidfd(ctx.pidfd)?;
    let mut watches = Vec::new();
    for l in ctx.info.raw.lines().filter(|l| l.starts_with("tfd:")) {
        let t = tokens(l);
        let bad = || Error::new("EPROC", format!("fd {}: epoll fdinfo line not understood: {}", ctx.fd, l));
        let tfd: i32 = t.get("tfd").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let events = t.get("events").and_then(|v| u32::from_str_radix(v, 16).ok()).ok_or_else(bad)?;
        let data = t.get("data").and_then(|v| u64::from_str_radix(v, 16).ok()).ok_or_else(bad)?;
        if !same_target(pid, ctx.fd, tfd) {
            return ctx.unsupported(&format!(
                "epoll watch on fd {} that is closed or now names another file (watches registered through descriptors of other processes or closed ones)",
                tfd
            ));
        }
        watches.push(Json::obj().with("tfd", tfd).with("events", events).with("data", data));
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
            inj.call(&format!("epoll_ctl(fd {}, ADD, fd {})", epfd, tfd), nr::EPOLL_CTL, &[epfd, EPOLL_CTL_ADD, tfd, a])?;
        }
    }
    Ok(())
}
