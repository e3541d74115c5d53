//! Classic BPF socket filters (SO_ATTACH_FILTER) and the lock that pins them
//! (SO_LOCK_FILTER), for every socket kind restored. The kernel keeps a copy
//! of a classic program as it was attached and gives it back (SO_GET_FILTER);
//! an eBPF program (SO_ATTACH_BPF) has no such copy, so a socket holding one
//! is refused.

use super::{getsockopt_int, setsockopt_buf, setsockopt_int, snr, SOL_SOCKET};
use crate::base64;
use crate::json::Json;
use crate::sys::{self, Error, Fd, Result};

/// SO_GET_FILTER is the same option number as SO_ATTACH_FILTER.
const SO_ATTACH_FILTER: i32 = 26;
const SO_LOCK_FILTER: i32 = 44;
/// struct sock_filter: code (u16), jt, jf (u8), k (u32).
const INSN: usize = 8;
/// BPF_MAXINSNS: the kernel refuses longer classic programs.
const MAX_INSNS: usize = 4096;
const EACCES: i32 = 13;

/// getsockopt(SO_GET_FILTER) counts in instructions, not bytes: `len` is
/// how many fit in `buf` (0 asks for the count) and comes back as how many
/// there are.
fn get_filter(fd: &Fd, buf: &mut [u8]) -> std::result::Result<usize, i32> {
    let mut len: u32 = (buf.len() / INSN) as u32;
    let p = if buf.is_empty() { 0 } else { buf.as_mut_ptr() as u64 };
    unsafe { sys::raw(snr::GETSOCKOPT, &[fd.raw() as u64, SOL_SOCKET as u64, SO_ATTACH_FILTER as u64, p, &mut len as *mut u32 as u64]) }?;
    Ok(len as usize)
}

/// Add "filter" (the program, base64) and "filter_locked" to socket `s`.
/// `what` names the socket in a refusal.
pub fn dump(copy: &Fd, s: &mut Json, what: &str) -> Result<()> {
    let n = match get_filter(copy, &mut []) {
        Ok(n) => n,
        Err(EACCES) => {
            return Err(Error::new("EUNSUPPORTED", format!("{} has an eBPF filter (SO_ATTACH_BPF), whose program cannot be read back: not supported", what)));
        }
        Err(e) => return Err(Error::sys(format!("{}: SO_GET_FILTER", what), e)),
    };
    if n > 0 {
        let mut prog = vec![0u8; n * INSN];
        let got = get_filter(copy, &mut prog).map_err(|e| Error::sys(format!("{}: SO_GET_FILTER", what), e))?;
        prog.truncate(got * INSN);
        s.set("filter", base64::encode(&prog));
    }
    if getsockopt_int(copy, SOL_SOCKET, SO_LOCK_FILTER).map(|v| v != 0).unwrap_or(false) {
        s.set("filter_locked", true);
    }
    Ok(())
}

/// Attach the saved program, then lock it if it was: a locked filter can no
/// longer be changed, so this comes after everything else that sets up the
/// socket (queue refills went through no filter, as the data had already
/// passed the original's).
pub fn restore(fd: &Fd, s: &Json) -> Result<()> {
    if let Some(b) = s.str_of("filter") {
        let prog = base64::decode(b)
            .filter(|p| !p.is_empty() && p.len() % INSN == 0 && p.len() / INSN <= MAX_INSNS)
            .ok_or_else(|| Error::new("EIMAGE", "the socket filter in the image is malformed"))?;
        // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
        let mut fprog = [0u8; 16];
        fprog[0..2].copy_from_slice(&((prog.len() / INSN) as u16).to_le_bytes());
        fprog[8..16].copy_from_slice(&(prog.as_ptr() as u64).to_le_bytes());
        setsockopt_buf(fd, SOL_SOCKET, SO_ATTACH_FILTER, &fprog, "setsockopt(SO_ATTACH_FILTER)")?;
    }
    if s.bool_of("filter_locked") {
        setsockopt_int(fd, SOL_SOCKET, SO_LOCK_FILTER, 1)?;
    }
    Ok(())
}
