//! pidfds: the process (or, with PIDFD_THREAD, the thread) they refer to.
//!
//! A pidfd must refer to the restored process, which phaul only knows by
//! its pid inside the tree's pid namespace. So `open` installs a placeholder
//! and `after_install` opens the real pidfd from inside the restored process
//! (its pid namespace resolves the pid) and puts it on the descriptor's number.
//! Each descriptor gets a pidfd of its own: a pidfd carries no state but its
//! flags, which are kept.

use super::{field, fd_of, registry, O_EXCL, O_NONBLOCK};
use crate::files::FileCtx;
use crate::inject::Injector;
use crate::json::Json;
use crate::sys::{self, nr, Error, Fd, Pid, Result};

/// PIDFD_THREAD (Linux 6.9+) shares the bit of O_EXCL.
const PIDFD_THREAD: u32 = O_EXCL;
const O_CLOEXEC_DUP3: u64 = 0o2000000;
const DUP3: i64 = 292;

pub fn is_pidfd(target: &str) -> bool {
    target == "anon_inode:[pidfd]" || target.starts_with("pidfd:")
}

pub fn describe(ctx: &FileCtx) -> Result<Json> {
    let raw = &ctx.info.raw;
    let pid: i64 = field(raw, "Pid").and_then(|v| v.parse().ok()).ok_or_else(|| Error::new("EPROC", format!("fd {}: pidfd without Pid in fdinfo", ctx.fd)))?;
    if pid <= 0 {
        // Reaped: no pid is left to name. The pidfs inode tells two such
        // processes apart (standin.rs: a stand-in each).
        use std::os::unix::fs::MetadataExt;
        return Ok(ctx.base.clone().with("kind", "pidfd").with("dead", true).with("ino", ctx.md.ino()).with("thread", ctx.info.flags & PIDFD_THREAD != 0));
    }
    // The pid as the tree sees it: the innermost of NSpid.
    let inner = field(raw, "NSpid").and_then(|v| v.split_whitespace().last()).and_then(|v| v.parse::<i64>().ok()).unwrap_or(pid);
    Ok(ctx.base.clone().with("kind", "pidfd").with("pid", inner).with("thread", ctx.info.flags & PIDFD_THREAD != 0))
}

/// A pidfd of a reaped process is opened on stand-in `pid` (in the tree's
/// pid namespace), which dies before the tree runs.
pub fn stand_in(file_id: u64, pid: Pid) {
    if let Some(f) = registry().files.get_mut(&file_id) {
        f.set("pid", pid);
    }
}

/// The placeholder, replaced in `after_install`.
pub fn open(_f: &Json) -> Result<Fd> {
    let p = sys::cstr("/dev/null")?;
    Ok(fd_of(sys::call("open /dev/null", nr::OPEN, &[p.as_ptr() as u64, sys::O_CLOEXEC as u64, 0])?))
}

/// Pidfds of processes (`threads` false: right after the descriptors, so
/// epoll watches can name them) or of threads (`threads` true: once the
/// process's threads exist).
pub fn after_install(inj: &mut Injector, p: &Json, threads: bool) -> Result<()> {
    for e in p.arr_of("fds") {
        let f = match e.u64_of("file_id").and_then(|id| registry().files.get(&id).cloned()) {
            Some(f) if f.str_of("kind") == Some("pidfd") && f.bool_of("thread") == threads => f,
            _ => continue,
        };
        let fd = e.u64_of("fd").unwrap_or(0);
        let pid = f.i64_of("pid").unwrap_or(0);
        let flags = f.u64_of("flags").unwrap_or(0) as u32;
        let mut open_flags = flags & O_NONBLOCK;
        if f.bool_of("thread") {
            open_flags |= PIDFD_THREAD;
        }
        let t = inj.call(&format!("pidfd_open({})", pid), nr::PIDFD_OPEN, &[pid as u64, open_flags as u64]).map_err(|e| {
            if e.errno == 3 {
                Error::new("EFILE", format!("fd {}: a pidfd of process {}, which is not here", fd, pid))
            } else {
                e.context(format!("fd {}: pidfd", fd))
            }
        })?;
        let cloexec = if e.bool_of("cloexec") { O_CLOEXEC_DUP3 } else { 0 };
        let r = inj.call("dup3(pidfd)", DUP3, &[t, fd, cloexec]);
        inj.call("close", nr::CLOSE, &[t])?;
        r?;
    }
    Ok(())
}
