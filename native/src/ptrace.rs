//! Thin wrappers over ptrace(2). Every tracee must be driven by the thread that
//! seized it, so callers keep all ptrace work of one session on one thread.

use crate::arch::{Regs, NT_EXT_STATE};
use crate::sys::{self, nr, Error, Pid, Result};

pub const PTRACE_CONT: u64 = 7;
pub const PTRACE_GETREGS: u64 = 12;
pub const PTRACE_SETREGS: u64 = 13;
pub const PTRACE_DETACH: u64 = 17;
pub const PTRACE_SYSCALL: u64 = 24;
pub const PTRACE_SETOPTIONS: u64 = 0x4200;
pub const PTRACE_GETEVENTMSG: u64 = 0x4201;
pub const PTRACE_GETREGSET: u64 = 0x4204;
pub const PTRACE_SETREGSET: u64 = 0x4205;
pub const PTRACE_SEIZE: u64 = 0x4206;
pub const PTRACE_INTERRUPT: u64 = 0x4207;
pub const PTRACE_LISTEN: u64 = 0x4208;
pub const PTRACE_PEEKSIGINFO: u64 = 0x4209;
pub const PTRACE_GETSIGMASK: u64 = 0x420a;
pub const PTRACE_SETSIGMASK: u64 = 0x420b;
pub const PTRACE_GET_RSEQ_CONFIGURATION: u64 = 0x420f;

pub const O_TRACESYSGOOD: u64 = 1;
pub const O_TRACEFORK: u64 = 2;
pub const O_TRACEVFORK: u64 = 4;
pub const O_TRACECLONE: u64 = 8;
pub const O_EXITKILL: u64 = 1 << 20;

pub const EVENT_FORK: i32 = 1;
pub const EVENT_CLONE: i32 = 3;
pub const EVENT_STOP: i32 = 128;

pub const WALL: u64 = 0x40000000;
pub const WNOHANG: u64 = 1;

fn pt(what: &str, req: u64, tid: Pid, addr: u64, data: u64) -> Result<i64> {
    sys::call(&format!("ptrace({}, {})", what, tid), nr::PTRACE, &[req, tid as u64, addr, data])
}

pub fn seize(tid: Pid, options: u64) -> Result<()> {
    pt("SEIZE", PTRACE_SEIZE, tid, 0, options).map(|_| ())
}
pub fn interrupt(tid: Pid) -> Result<()> {
    pt("INTERRUPT", PTRACE_INTERRUPT, tid, 0, 0).map(|_| ())
}
pub fn detach(tid: Pid, sig: i32) -> Result<()> {
    pt("DETACH", PTRACE_DETACH, tid, 0, sig as u64).map(|_| ())
}
pub fn cont(tid: Pid, sig: i32) -> Result<()> {
    pt("CONT", PTRACE_CONT, tid, 0, sig as u64).map(|_| ())
}
pub fn syscall_step(tid: Pid, sig: i32) -> Result<()> {
    pt("SYSCALL", PTRACE_SYSCALL, tid, 0, sig as u64).map(|_| ())
}
pub fn set_options(tid: Pid, o: u64) -> Result<()> {
    pt("SETOPTIONS", PTRACE_SETOPTIONS, tid, 0, o).map(|_| ())
}
pub fn event_msg(tid: Pid) -> Result<u64> {
    let mut v: u64 = 0;
    pt("GETEVENTMSG", PTRACE_GETEVENTMSG, tid, 0, &mut v as *mut u64 as u64)?;
    Ok(v)
}

pub fn get_regs(tid: Pid) -> Result<Regs> {
    let mut r = Regs::default();
    pt("GETREGS", PTRACE_GETREGS, tid, 0, &mut r as *mut Regs as u64)?;
    Ok(r)
}
pub fn set_regs(tid: Pid, r: &Regs) -> Result<()> {
    pt("SETREGS", PTRACE_SETREGS, tid, 0, r as *const Regs as u64).map(|_| ())
}

#[repr(C)]
struct Iovec {
    base: u64,
    len: u64,
}

/// The extended register state (xsave area on x86_64), sized by the kernel.
pub fn get_ext_state(tid: Pid) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 16384];
    let mut iov = Iovec { base: buf.as_mut_ptr() as u64, len: buf.len() as u64 };
    pt("GETREGSET", PTRACE_GETREGSET, tid, NT_EXT_STATE as u64, &mut iov as *mut Iovec as u64)?;
    buf.truncate(iov.len as usize);
    Ok(buf)
}
pub fn set_ext_state(tid: Pid, data: &[u8]) -> Result<()> {
    let mut iov = Iovec { base: data.as_ptr() as u64, len: data.len() as u64 };
    pt("SETREGSET", PTRACE_SETREGSET, tid, NT_EXT_STATE as u64, &mut iov as *mut Iovec as u64).map(|_| ())
}

pub fn get_sigmask(tid: Pid) -> Result<u64> {
    let mut m: u64 = 0;
    pt("GETSIGMASK", PTRACE_GETSIGMASK, tid, 8, &mut m as *mut u64 as u64)?;
    Ok(m)
}
pub fn set_sigmask(tid: Pid, m: u64) -> Result<()> {
    pt("SETSIGMASK", PTRACE_SETSIGMASK, tid, 8, &m as *const u64 as u64).map(|_| ())
}

pub const SIGINFO_SIZE: usize = 128;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// Pending signals queued for the thread (or, with `shared`, for the process),
/// as raw 128-byte siginfo records, without dequeuing them.
pub fn peek_siginfo(tid: Pid, shared: bool) -> Result<Vec<[u8; SIGINFO_SIZE]>> {
    let mut out = Vec::new();
    loop {
        let mut buf = vec![[0u8; SIGINFO_SIZE]; 32];
        let args = PeekSiginfoArgs { off: out.len() as u64, flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 }, nr: 32 };
        let n = pt("PEEKSIGINFO", PTRACE_PEEKSIGINFO, tid, &args as *const _ as u64, buf.as_mut_ptr() as u64)?;
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
        if n < 32 {
            break;
        }
    }
    Ok(out)
}

/// rseq registration of a thread: (address, length, signature).
pub fn get_rseq(tid: Pid) -> Result<(u64, u32, u32)> {
    #[repr(C)]
    #[derive(Default)]
    struct RseqConf {
        rseq_abi_pointer: u64,
        rseq_abi_size: u32,
        signature: u32,
        flags: u32,
        pad: u32,
    }
    let mut c = RseqConf::default();
    pt("GET_RSEQ_CONFIGURATION", PTRACE_GET_RSEQ_CONFIGURATION, tid, std::mem::size_of::<RseqConf>() as u64, &mut c as *mut _ as u64)?;
    Ok((c.rseq_abi_pointer, c.rseq_abi_size, c.signature))
}

/// wait4 for one traced thread. Returns the raw status.
pub fn wait(tid: Pid) -> Result<i32> {
    let mut status: i32 = 0;
    loop {
        match unsafe { sys::raw(nr::WAIT4, &[tid as u64, &mut status as *mut i32 as u64, WALL, 0]) } {
            Ok(_) => return Ok(status),
            Err(4) => continue, // EINTR
            Err(e) => return Err(Error::sys(format!("wait4({})", tid), e)),
        }
    }
}

pub fn wait_nohang(tid: Pid) -> Result<Option<i32>> {
    let mut status: i32 = 0;
    match unsafe { sys::raw(nr::WAIT4, &[tid as u64, &mut status as *mut i32 as u64, WALL | WNOHANG, 0]) } {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(status)),
        Err(e) => Err(Error::sys(format!("wait4({})", tid), e)),
    }
}

pub fn stopped(status: i32) -> bool {
    status & 0xff == 0x7f
}
pub fn stop_sig(status: i32) -> i32 {
    (status >> 8) & 0xff
}
pub fn event(status: i32) -> i32 {
    (status >> 16) & 0xffff
}
pub fn exited(status: i32) -> bool {
    status & 0x7f == 0 || ((status & 0x7f) + 1) as i8 >> 1 > 0
}

/// Reap a thread we killed, giving up after `ms` (a thread we cannot reap
/// must not hang phaul).
pub fn reap(tid: Pid, ms: u64) {
    let t0 = std::time::Instant::now();
    while t0.elapsed().as_millis() < ms as u128 {
        match wait_nohang(tid) {
            Ok(None) => std::thread::sleep(std::time::Duration::from_micros(200)),
            _ => return,
        }
    }
}
