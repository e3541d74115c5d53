//! FIFOs removed while open ("PATH (deleted)"): only descriptors lead to
//! them, so restore cannot open them by name. Dump reads their queued bytes
//! even from a write end alone (a reader opened through /proc/PID/fd/N: no
//! one else can open the FIFO by name to be woken by it) and tells where
//! else one is open. Restore makes a new FIFO under a free name, opens it,
//! removes the name, and opens each description through /proc/self/fd.

use crate::sys::{self, cstr, nr, Error, Fd, Pid, Result, O_CLOEXEC, O_NONBLOCK, O_RDWR};
use std::os::unix::fs::MetadataExt;

const MKNOD: i64 = 133;
const UNLINK: i64 = 87;
const FCHMOD: i64 = 91;
const FCHOWN: i64 = 93;
const S_IFIFO: u64 = 0o010000;
const EEXIST: i32 = 17;

/// A read end of the FIFO that fd `fd` of `pid` (a write end) holds, to
/// peek its queued bytes: opened without blocking through /proc.
pub fn reader_of(pid: Pid, fd: i32) -> Result<Fd> {
    let path = format!("/proc/{}/fd/{}", pid, fd);
    let c = cstr(&path)?;
    sys::call(&format!("open {} for reading", path), nr::OPEN, &[c.as_ptr() as u64, (sys::O_NONBLOCK | O_CLOEXEC) as u64, 0]).map(|f| Fd(f as i32))
}

/// For each FIFO of `fifos` (device, inode), a process outside `tree` (and
/// other than phaul) that holds it too, as (pid, fd): its end will no longer
/// be connected to the restored one. One pass over /proc for all.
pub fn held_outside(fifos: &[(u64, u64)], tree: &[Pid]) -> Vec<Option<(Pid, i32)>> {
    let mut found = vec![None; fifos.len()];
    let me = sys::getpid();
    let procs = match std::fs::read_dir("/proc") {
        Ok(d) => d,
        Err(_) => return found,
    };
    for e in procs.flatten() {
        let pid: Pid = match e.file_name().to_str().and_then(|s| s.parse().ok()) {
            Some(p) => p,
            None => continue,
        };
        if pid == me || tree.contains(&pid) {
            continue;
        }
        let fds = match std::fs::read_dir(format!("/proc/{}/fd", pid)) {
            Ok(d) => d,
            Err(_) => continue,
        };
        for f in fds.flatten() {
            let deleted = std::fs::read_link(f.path()).map(|t| t.to_string_lossy().ends_with(" (deleted)")).unwrap_or(false);
            if !deleted {
                continue;
            }
            let md = match std::fs::metadata(f.path()) {
                Ok(m) => m,
                Err(_) => continue,
            };
            for (i, w) in fifos.iter().enumerate() {
                if found[i].is_none() && *w == (md.dev(), md.ino()) {
                    found[i] = Some((pid, f.file_name().to_str().and_then(|s| s.parse().ok()).unwrap_or(-1)));
                }
            }
        }
    }
    found
}

/// mknod a FIFO at `path` and open it both ways, without blocking.
fn make_at(path: &str, mode: u64) -> std::result::Result<Fd, (i32, String)> {
    let c = cstr(path).map_err(|e| (0, e.message))?;
    unsafe { sys::raw(MKNOD, &[c.as_ptr() as u64, S_IFIFO | (mode & 0o777), 0]) }.map_err(|e| (e, sys::strerror(e)))?;
    let fd = unsafe { sys::raw(nr::OPEN, &[c.as_ptr() as u64, (O_RDWR | O_NONBLOCK | O_CLOEXEC) as u64, 0]) };
    let _ = unsafe { sys::raw(UNLINK, &[c.as_ptr() as u64]) };
    fd.map(|f| Fd(f as i32)).map_err(|e| (e, sys::strerror(e)))
}

/// A new FIFO for one removed at the dump: under its old name if free (its
/// descriptors then read "PATH (deleted)" as before), else under a
/// temporary name in the same directory, else in a scratch directory; the
/// name is removed at once. Returns a descriptor open both ways
/// (non-blocking), with the old permission bits and owner.
pub fn make_unlinked(path: &str, mode: u64, owner: Option<(u64, u64)>) -> Result<Fd> {
    let dir = std::path::Path::new(path).parent().and_then(|p| p.to_str()).unwrap_or("/");
    let mut fd = make_at(path, mode);
    for n in 0..16 {
        match &fd {
            Err((EEXIST, _)) => fd = make_at(&format!("{}/.phaul-fifo-{}-{}", dir, sys::getpid(), n), mode),
            _ => break,
        }
    }
    let fd = match fd {
        Ok(fd) => fd,
        Err(_) => {
            // The directory is gone, or phaul may not write there.
            let scratch = std::env::temp_dir().join(format!("phaul-fifo-{}", sys::getpid()));
            let scratch = scratch.to_str().ok_or_else(|| Error::new("EFILE", "the temporary directory has a name that is not UTF-8"))?.to_string();
            let _ = std::fs::create_dir(&scratch);
            let r = make_at(&format!("{}/fifo", scratch), mode);
            let _ = std::fs::remove_dir(&scratch);
            r.map_err(|(_, m)| Error::new("EFILE", format!("cannot make FIFO {} (removed while open) again: {}", path, m)))?
        }
    };
    if let Some((uid, gid)) = owner {
        let _ = sys::call("fchown", FCHOWN, &[fd.raw() as u64, uid, gid]);
    }
    sys::call("fchmod", FCHMOD, &[fd.raw() as u64, mode & 0o7777])?;
    Ok(fd)
}

/// Open a description of the FIFO `keeper` holds, with `flags`.
pub fn reopen(keeper: &Fd, flags: u32) -> Result<Fd> {
    let path = format!("/proc/self/fd/{}", keeper.raw());
    let c = cstr(&path)?;
    sys::call("open of a removed FIFO", nr::OPEN, &[c.as_ptr() as u64, (flags | O_CLOEXEC) as u64, 0]).map(|f| Fd(f as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A FIFO made again is unnamed at once, keeps the mode, and its ends
    // opened through the keeper are one pipe.
    #[test]
    fn made_again_without_a_name() {
        let dir = std::env::temp_dir().join(format!("phaul-fifo-test-{}", sys::getpid()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("ff");
        let p = path.to_str().expect("utf8");
        // The old name is taken: a temporary name in the same directory.
        std::fs::write(&path, b"x").expect("file");
        let k = make_unlinked(p, 0o640, None).expect("fifo");
        let link = std::fs::read_link(format!("/proc/self/fd/{}", k.raw())).expect("link");
        let link = link.to_string_lossy();
        assert!(link.starts_with(dir.to_str().unwrap()) && link.ends_with(" (deleted)"), "{}", link);
        assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 1, "only the file in the way is left");
        let w = reopen(&k, sys::O_WRONLY | O_NONBLOCK).expect("write end");
        let r = reopen(&k, O_NONBLOCK).expect("read end");
        assert_eq!(sys::call("write", nr::WRITE, &[w.raw() as u64, b"ab".as_ptr() as u64, 2]).expect("write"), 2);
        let mut b = [0u8; 4];
        assert_eq!(sys::call("read", nr::READ, &[r.raw() as u64, b.as_mut_ptr() as u64, 4]).expect("read"), 2);
        let md = std::fs::metadata(format!("/proc/self/fd/{}", k.raw())).expect("stat");
        assert_eq!(md.mode() & 0o7777, 0o640);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
