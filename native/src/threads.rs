//! Threads: registers, extended state, masks and per-thread kernel settings.

use crate::arch::{Regs, Restart};
use crate::base64;
use crate::inject::Injector;
use crate::json::Json;
use crate::ptrace;
use crate::signals;
use crate::sys::{self, nr, Error, Pid, Result};

const PR_SET_NAME: u64 = 15;
const PR_GET_TID_ADDRESS: u64 = 40;

fn robust_list(tid: Pid) -> (u64, u64) {
    let mut head: u64 = 0;
    let mut len: u64 = 0;
    match unsafe { sys::raw(nr::GET_ROBUST_LIST, &[tid as u64, &mut head as *mut u64 as u64, &mut len as *mut u64 as u64]) } {
        Ok(_) => (head, len),
        Err(_) => (0, 0),
    }
}

/// Everything per thread that can be read while the thread is stopped. `inj`
/// runs in this very thread (sigaltstack and the tid address are per thread).
pub fn dump_thread(pid: Pid, tid: Pid, regs: &Regs, mask: u64, inj: &mut Injector) -> Result<Json> {
    let restart = match regs.restart_kind() {
        Restart::None => "none",
        Restart::Again => "again",
        Restart::Block => "block",
    };
    let xsave = ptrace::get_ext_state(tid)?;
    let pending = ptrace::peek_siginfo(tid, false)?;
    let altstack = signals::dump_sigaltstack(inj)?;
    let buf = inj.scratch(4096)?;
    inj.call("prctl(PR_GET_TID_ADDRESS)", nr::PRCTL, &[PR_GET_TID_ADDRESS, buf + 256])?;
    let ctid = u64::from_le_bytes(inj.read_mem(buf + 256, 8)?.try_into().unwrap_or([0; 8]));
    let (rhead, rlen) = robust_list(tid);
    inj.call("prctl(PR_GET_PDEATHSIG)", nr::PRCTL, &[2, buf + 264])?;
    let pdeathsig = u32::from_le_bytes(inj.read_mem(buf + 264, 4)?.try_into().unwrap_or([0; 4]));
    let timerslack = inj.call("prctl(PR_GET_TIMERSLACK)", nr::PRCTL, &[30])?;
    let rseq = ptrace::get_rseq(tid).unwrap_or((0, 0, 0));
    let comm = std::fs::read_to_string(format!("/proc/{}/task/{}/comm", pid, tid)).unwrap_or_default();
    let seccomp = crate::seccomp::dump(pid, tid)?;
    let j = Json::obj()
        .with("tid", tid)
        .with("regs", regs_for_new_task(regs, inj).to_json())
        .with("restart", restart)
        .with("xsave", base64::encode(&xsave))
        .with("sigmask", Json::Str(mask.to_string()))
        .with("pending", signals::siginfos_to_json(pending))
        .with("sigaltstack", altstack)
        .with("rseq", Json::obj().with("addr", rseq.0).with("len", rseq.1).with("sig", rseq.2))
        .with("robust_list", Json::obj().with("head", rhead).with("len", rlen))
        .with("clear_child_tid", ctid)
        .with("comm", comm.trim_end_matches('\n'))
        .with("sched", crate::creds::dump_sched(pid, tid))
        .with("pdeathsig", pdeathsig)
        .with("timerslack_ns", timerslack);
    Ok(match seccomp {
        Some(s) => j.with("seccomp", s),
        None => j,
    })
}

/// Per-thread kernel settings, applied by injecting into the thread itself.
/// (Pending signals are queued by the leader afterwards, see restore.rs.)
pub fn restore_thread_settings(t: &Json, inj: &mut Injector) -> Result<()> {
    signals::restore_sigaltstack(inj, t.get("sigaltstack"))?;
    inj.call("set_tid_address", nr::SET_TID_ADDRESS, &[t.u64_of("clear_child_tid").unwrap_or(0)])?;
    if let Some(r) = t.get("robust_list") {
        let head = r.u64_of("head").unwrap_or(0);
        if head != 0 {
            inj.call("set_robust_list", nr::SET_ROBUST_LIST, &[head, r.u64_of("len").unwrap_or(24)])?;
        }
    }
    if let Some(r) = t.get("rseq") {
        let addr = r.u64_of("addr").unwrap_or(0);
        if addr != 0 {
            // The area still holds the old registration's cpu fields; the kernel
            // rewrites them on the first return to user space.
            inj.call("rseq", nr::RSEQ, &[addr, r.u64_of("len").unwrap_or(32), 0, r.u64_of("sig").unwrap_or(0)])?;
        }
    }
    if let Some(c) = t.str_of("comm") {
        let a = inj.put_str(c, 512)?;
        inj.call("prctl(PR_SET_NAME)", nr::PRCTL, &[PR_SET_NAME, a])?;
    }
    crate::creds::restore_sched(inj, t.get("sched"))?;
    if let Some(ns) = t.u64_of("timerslack_ns").filter(|&v| v > 0 && v != 50_000) {
        inj.call("prctl(PR_SET_TIMERSLACK)", nr::PRCTL, &[29, ns])?;
    }
    Ok(())
}

/// Per-thread settings that must come after the credentials (a change of
/// uid clears the parent-death signal).
pub fn restore_late_thread_settings(t: &Json, inj: &mut Injector) -> Result<()> {
    if let Some(sig) = t.u64_of("pdeathsig").filter(|&s| s > 0 && s <= 64) {
        inj.call("prctl(PR_SET_PDEATHSIG)", nr::PRCTL, &[1, sig])?;
    }
    Ok(())
}

/// The registers, extended state and mask the thread will run on with.
pub fn final_state(t: &Json) -> Result<(Regs, Vec<u8>, u64)> {
    let regs = t.get("regs").and_then(Regs::from_json).ok_or_else(|| Error::new("EIMAGE", "a thread's registers are missing or incomplete in the image"))?;
    let xsave = t.str_of("xsave").and_then(base64::decode).unwrap_or_default();
    let mask = t.u64_of("sigmask").unwrap_or(0);
    Ok((regs, xsave, mask))
}

pub fn apply_final_state(tid: Pid, regs: &Regs, xsave: &[u8], mask: u64) -> Result<()> {
    if !xsave.is_empty() {
        ptrace::set_ext_state(tid, xsave).map_err(|e| e.context(format!("thread {}: restoring FPU/vector state (different CPU features?)", tid)))?;
    }
    ptrace::set_regs(tid, regs)?;
    ptrace::set_sigmask(tid, mask)
}

/// Registers that resume this thread in a new task. A thread stopped inside
/// restart_syscall (it was stopped and resumed before, in the middle of a
/// nanosleep, poll...) cannot re-enter it elsewhere: the kernel's restart
/// block stays behind. The original call is then read back from the code
/// that made it (glibc's wrappers load it with `mov eax, NR` right before
/// `syscall`) and run again with its arguments, still in their registers;
/// when the code does not tell, the thread sees EINTR, as a signal would give.
fn regs_for_new_task(regs: &Regs, inj: &Injector) -> Regs {
    let mut r = regs.rewound(false);
    if regs.restart_kind() == Restart::None || regs.orig_rax != crate::arch::NR_RESTART_SYSCALL {
        return r;
    }
    let insn = regs.rip.wrapping_sub(2);
    match inj.read_mem(insn.wrapping_sub(5), 7) {
        Ok(b) if b[0] == 0xb8 && b[5..7] == crate::arch::SYSCALL_INSN => {
            let nr = u32::from_le_bytes([b[1], b[2], b[3], b[4]]) as u64;
            r.rax = nr;
            r.orig_rax = nr;
        }
        _ => {
            r = *regs;
            r.rax = (-4i64) as u64; // EINTR
        }
    }
    r
}
