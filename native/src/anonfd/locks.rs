//! File locks (flock, POSIX fcntl, OFD) and leases, read from the `lock:` lines of
//! fdinfo and taken again from inside the restored process.

use super::nr as anr;
use crate::inject::Injector;
use crate::json::Json;
use crate::sys::{nr, Error, Pid, Result};

const F_SETLK: u64 = 6;
const F_OFD_SETLK: u64 = 37;
const F_SETLEASE: u64 = 1024;
const LOCK_SH: u64 = 1;
const LOCK_EX: u64 = 2;
const LOCK_NB: u64 = 4;

pub fn dump(pid: Pid) -> Result<Vec<Json>> {
    let mut out = Vec::new();
    for fd in crate::proc::fds(pid)? {
        let info = match crate::proc::fdinfo(pid, fd) {
            Ok(i) => i,
            Err(_) => continue,
        };
        for l in info.raw.lines().filter(|l| l.starts_with("lock:") && !l.contains("->")) {
            // lock:	1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF
            let t: Vec<&str> = l.split_whitespace().collect();
            let bad = || Error::new("EPROC", format!("fd {}: lock line not understood: {}", fd, l));
            if t.len() < 9 {
                return Err(bad());
            }
            let kind = match t[2] {
                "POSIX" => "posix",
                "FLOCK" => "flock",
                "OFDLCK" => "ofd",
                "LEASE" => "lease",
                other => return Err(Error::new("EUNSUPPORTED", format!("fd {}: {} lock is not supported", fd, other.to_lowercase()))),
            };
            // A lease being broken waits for its holder to give it up: that
            // exchange with another process cannot be carried over.
            if kind == "lease" && t[3] != "ACTIVE" {
                return Err(Error::new("EUNSUPPORTED", format!("fd {}: a lease in state {} (being broken) is not supported", fd, t[3].to_lowercase())));
            }
            if kind != "lease" && t[3] != "ADVISORY" {
                return Err(Error::new("EUNSUPPORTED", format!("fd {}: {} lock is not supported", fd, t[3].to_lowercase())));
            }
            let write = match t[4] {
                "WRITE" => true,
                "READ" => false,
                _ => return Err(Error::new("EUNSUPPORTED", format!("fd {}: lock of type {} is not supported", fd, t[4]))),
            };
            let start: u64 = t[7].parse().map_err(|_| bad())?;
            let end: u64 = if t[8] == "EOF" { 0 } else { t[8].parse::<u64>().map_err(|_| bad())? + 1 };
            out.push(Json::obj().with("fd", fd).with("kind", kind).with("write", write).with("start", start).with("end", end));
        }
    }
    Ok(out)
}

/// struct flock for lock entry `l` with type `ty` (F_RDLCK 0, F_WRLCK 1,
/// F_UNLCK 2): short type, short whence, off_t start, off_t len, pid_t pid.
fn flock_struct(ty: i16, l: &Json) -> Vec<u8> {
    let start = l.u64_of("start").unwrap_or(0);
    let end = l.u64_of("end").unwrap_or(0);
    let len = if end == 0 { 0 } else { end - start };
    let mut fl = vec![0u8; 32];
    fl[0..2].copy_from_slice(&ty.to_le_bytes());
    fl[8..16].copy_from_slice(&start.to_le_bytes());
    fl[16..24].copy_from_slice(&len.to_le_bytes());
    fl
}

/// Give up the locks `p.file_locks` lists, from inside their process (a
/// live migration on one host: the destination takes them next).
pub fn release(inj: &mut Injector, p: &Json) -> Result<()> {
    const LOCK_UN: u64 = 8;
    const F_UNLCK: i16 = 2;
    for l in p.arr_of("file_locks") {
        let fd = l.u64_of("fd").unwrap_or(0);
        match l.str_of("kind").unwrap_or("") {
            "flock" => {
                inj.call(&format!("flock(fd {}, LOCK_UN)", fd), anr::FLOCK, &[fd, LOCK_UN])?;
            }
            kind @ ("posix" | "ofd") => {
                let a = inj.put(&flock_struct(F_UNLCK, l), 2048)?;
                let cmd = if kind == "ofd" { F_OFD_SETLK } else { F_SETLK };
                inj.call(&format!("fcntl(fd {}, {} unlock)", fd, kind), nr::FCNTL, &[fd, cmd, a])?;
            }
            // Refused on one host before this is reached (both copies would hold the file).
            _ => {}
        }
    }
    Ok(())
}

pub fn restore(inj: &mut Injector, p: &Json) -> Result<()> {
    for l in p.arr_of("file_locks") {
        let fd = l.u64_of("fd").unwrap_or(0);
        let write = l.bool_of("write");
        let kind = l.str_of("kind").unwrap_or("");
        let held = |e: Error| {
            if e.errno == 11 || e.errno == 13 {
                Error::new("ELOCKED", format!("fd {}: the {} lock is held by another process", fd, kind))
            } else {
                e
            }
        };
        match kind {
            "flock" => {
                inj.call(&format!("flock(fd {})", fd), anr::FLOCK, &[fd, if write { LOCK_EX } else { LOCK_SH } | LOCK_NB]).map_err(held)?;
            }
            "posix" | "ofd" => {
                let a = inj.put(&flock_struct(if write { 1 } else { 0 }, l), 2048)?;
                let cmd = if kind == "ofd" { F_OFD_SETLK } else { F_SETLK };
                inj.call(&format!("fcntl(fd {}, {} lock)", fd, kind), nr::FCNTL, &[fd, cmd, a]).map_err(held)?;
            }
            "lease" => {
                // F_RDLCK 0, F_WRLCK 1; a write lease needs this to be the only open of the file
                inj.call(&format!("fcntl(fd {}, F_SETLEASE)", fd), nr::FCNTL, &[fd, F_SETLEASE, write as u64]).map_err(|e| {
                    if e.errno == 11 {
                        Error::new("ELOCKED", format!("fd {}: the lease cannot be taken again: the file is open elsewhere", fd))
                    } else {
                        e
                    }
                })?;
            }
            k => return Err(Error::new("EIMAGE", format!("lock kind {:?} in the image is not known", k))),
        }
    }
    Ok(())
}
