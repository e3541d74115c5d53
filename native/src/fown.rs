//! Signal-driven I/O: a descriptor with O_ASYNC, its owner (F_SETOWN_EX) and
//! its signal (F_SETSIG).
//!
//! The owner belongs to the open file description, so dump reads it from a
//! copy of the descriptor taken with pidfd_getfd. Restore sets it from inside
//! the restored process, with the descriptor's own number: O_ASYNC registers
//! that number (the kernel puts it in si_fd), and the owner's pid is read in
//! the process's own pid namespace.

use crate::inject::Injector;
use crate::json::Json;
use crate::sys::{self, nr, Error, Fd, Result};

pub const O_ASYNC: u32 = 0o20000;
const F_GETFL: u64 = 3;
const F_SETFL: u64 = 4;
const F_SETSIG: u64 = 10;
const F_GETSIG: u64 = 11;
const F_SETOWN_EX: u64 = 15;
const F_GETOWN_EX: u64 = 16;
const ESRCH: i32 = 3;

/// The owner and signal of fd `fd` of the process behind `pidfd`, if the
/// descriptor does signal-driven I/O (`flags` from its fdinfo).
pub fn dump(pidfd: &Fd, fd: i32, flags: u32) -> Result<Option<Json>> {
    if flags & O_ASYNC == 0 {
        return Ok(None);
    }
    let copy = sys::pidfd_getfd(pidfd, fd)?;
    let mut owner = [0i32; 2]; // struct f_owner_ex { int type; pid_t pid; }
    sys::call("fcntl(F_GETOWN_EX)", nr::FCNTL, &[copy.raw() as u64, F_GETOWN_EX, owner.as_mut_ptr() as u64])
        .map_err(|e| e.context(format!("fd {}: owner", fd)))?;
    let sig = sys::call("fcntl(F_GETSIG)", nr::FCNTL, &[copy.raw() as u64, F_GETSIG]).map_err(|e| e.context(format!("fd {}: signal", fd)))?;
    Ok(Some(Json::obj().with("type", owner[0]).with("pid", if owner[1] > 0 { crate::proc::innermost_pid(owner[1], owner[1]) } else { owner[1] }).with("sig", sig)))
}

/// Give every descriptor of the process (installed already) its owner,
/// signal and O_ASYNC, from inside it.
pub fn restore(inj: &mut Injector, p: &Json) -> Result<()> {
    for f in p.arr_of("fds") {
        let Some(o) = f.get("owner") else { continue };
        let fd = f.u64_of("fd").unwrap_or(0);
        let pid = o.i64_of("pid").unwrap_or(0) as i32;
        if pid != 0 {
            let mut owner = [0u8; 8];
            owner[..4].copy_from_slice(&(o.i64_of("type").unwrap_or(0) as i32).to_le_bytes());
            owner[4..].copy_from_slice(&pid.to_le_bytes());
            let at = inj.put(&owner, 3072)?;
            match inj.call(&format!("fcntl(fd {}, F_SETOWN_EX)", fd), nr::FCNTL, &[fd, F_SETOWN_EX, at]) {
                Ok(_) => {}
                Err(e) if e.errno == ESRCH => {} // the owner did not come along: nobody to signal, as before
                Err(e) => return Err(e),
            }
        }
        let sig = o.u64_of("sig").unwrap_or(0);
        if sig > 64 {
            return Err(Error::new("EIMAGE", format!("fd {}: signal {} in the image is not valid", fd, sig)));
        }
        inj.call(&format!("fcntl(fd {}, F_SETSIG)", fd), nr::FCNTL, &[fd, F_SETSIG, sig])?;
        let fl = inj.call(&format!("fcntl(fd {}, F_GETFL)", fd), nr::FCNTL, &[fd, F_GETFL])?;
        inj.call(&format!("fcntl(fd {}, F_SETFL O_ASYNC)", fd), nr::FCNTL, &[fd, F_SETFL, fl | O_ASYNC as u64])?;
    }
    Ok(())
}
