//! Threads: registers, extended state, masks and per-thread kernel settings.

use crate::arch::{Regs, Restart};
use crate::batch::{self, Call, Job};
use crate::freeze::FrozenThread;
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

/// A thread's stat and status, read from /proc.
struct ProcView {
    comm: String,
    sched: Json,
    status: String,
}

impl ProcView {
    fn read(pid: Pid, tid: Pid) -> ProcView {
        let stat = std::fs::read_to_string(format!("/proc/{}/task/{}/stat", pid, tid)).unwrap_or_default();
        let (comm, fields) = crate::proc::parse_stat(&stat).unwrap_or_default();
        ProcView {
            comm,
            sched: crate::creds::sched_of_stat(&fields),
            status: std::fs::read_to_string(format!("/proc/{}/task/{}/status", pid, tid)).unwrap_or_default(),
        }
    }
}

/// The injected reads of one thread's settings; their results land in its
/// batch slot at `data`.
fn dump_calls(data: u64) -> Vec<Call> {
    vec![
        Call::new("sigaltstack(get)", nr::SIGALTSTACK, &[0, data]),
        Call::new("prctl(PR_GET_TID_ADDRESS)", nr::PRCTL, &[PR_GET_TID_ADDRESS, data + 32]),
        Call::new("prctl(PR_GET_PDEATHSIG)", nr::PRCTL, &[2, data + 40]),
        Call::new("prctl(PR_GET_TIMERSLACK)", nr::PRCTL, &[30]),
    ]
}

/// Everything per thread that can be read while the threads are stopped.
/// `leader` runs in the first thread and owns the areas `others` (one per
/// further thread, in order) share; sigaltstack and the tid address are
/// per thread. The injected reads of all threads run at once.
/// `leader_first`: calls the leader runs before its own (the process-wide
/// reads); their results are returned apart.
pub fn dump_threads(pid: Pid, threads: &[FrozenThread], leader: &mut Injector, others: &mut [Injector], leader_first: Vec<Call>) -> Result<(Vec<Json>, Vec<u64>)> {
    let first = leader_first.len();
    let mut leader_first = Some(leader_first);
    let mut jobs = Vec::with_capacity(others.len() + 1);
    for (k, inj) in std::iter::once(leader).chain(others.iter_mut()).enumerate() {
        let d = batch::data(inj, k)?;
        let mut calls = leader_first.take().unwrap_or_default();
        calls.extend(dump_calls(d));
        jobs.push(Job { inj, slot: k, calls });
    }
    // What /proc tells of the threads is read on another thread of ours
    // meanwhile (ptrace calls must stay on this one).
    let tids: Vec<Pid> = threads.iter().map(|t| t.tid).collect();
    let (res, views) = std::thread::scope(|sc| {
        let reader = sc.spawn(|| tids.iter().map(|&tid| ProcView::read(pid, tid)).collect::<Vec<_>>());
        let res = batch::run_checked(&mut jobs);
        (res, reader.join())
    });
    crate::sys::trace_mark("dump: thread batch ran");
    let mut res = res?;
    let views = views.map_err(|_| Error::new("EPANIC", "reading the threads' /proc entries panicked"))?;
    let extra: Vec<u64> = res.first_mut().map(|r| r.drain(..first).collect()).unwrap_or_default();
    let mut out: Vec<Json> = Vec::with_capacity(threads.len());
    let online = online_cpus();
    let mut leader_creds: Option<Json> = None;
    for (((t, job), r), view) in threads.iter().zip(jobs.iter()).zip(res).zip(views) {
        let inj = &*job.inj;
        let d = batch::data(inj, out.len())?;
        let b = inj.read_mem(d, 48)?;
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let altstack = signals::sigaltstack_json(&b[0..24]);
        let pdeathsig = u32::from_le_bytes(b[40..44].try_into().unwrap_or([0; 4]));
        let (j, creds) = dump_thread(t, inj, &view, altstack, u64_at(32), pdeathsig, r[3])?;
        let mut j = dump_placement(t.tid, j, &online);
        // The leader's are the process's; a thread that changed its own
        // (a raw setresuid, not glibc's process-wide one) keeps its own.
        match &leader_creds {
            None => leader_creds = Some(creds),
            Some(l) if *l != creds => {
                j.set("creds", creds);
            }
            Some(_) => {}
        }
        out.push(j);
    }
    Ok((out, extra))
}

/// What is read without injection, and the record of one thread.
/// Its credentials come apart: threads of one process usually share them.
fn dump_thread(t: &FrozenThread, inj: &Injector, view: &ProcView, altstack: Json, ctid: u64, pdeathsig: u32, timerslack: u64) -> Result<(Json, Json)> {
    let (tid, regs) = (t.tid, &t.regs);
    let restart = match regs.restart_kind() {
        Restart::None => "none",
        Restart::Again => "again",
        Restart::Block => "block",
    };
    let xsave = ptrace::get_ext_state(tid)?;
    let pending = ptrace::peek_siginfo(tid, false)?;
    let (rhead, rlen) = robust_list(tid);
    let rseq = ptrace::get_rseq(tid).unwrap_or((0, 0, 0));
    let seccomp = crate::seccomp::dump(tid, crate::seccomp::mode_of_status(&view.status))?;
    let j = Json::obj()
        .with("tid", tid)
        .with("regs", regs_for_new_task(regs, inj).to_json())
        .with("restart", restart)
        // Trailing zeros (the AVX-512 state of a thread that never used it)
        // are left out; the restore pads to the kernel's size. A 64-thread
        // process's state was half XSAVE bytes, costly to move and parse.
        .with("xsave", base64::encode(&xsave[..xsave.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)]))
        .with("sigmask", Json::Str(t.sigmask.to_string()))
        .with("pending", signals::siginfos_to_json(pending))
        .with("sigaltstack", altstack)
        .with("rseq", Json::obj().with("addr", rseq.0).with("len", rseq.1).with("sig", rseq.2))
        .with("robust_list", Json::obj().with("head", rhead).with("len", rlen))
        .with("clear_child_tid", ctid)
        .with("comm", view.comm.as_str())
        .with("sched", view.sched.clone())
        .with("pdeathsig", pdeathsig)
        .with("timerslack_ns", timerslack);
    let j = match seccomp {
        Some(s) => j.with("seccomp", s),
        None => j,
    };
    Ok((j, crate::creds::creds_of_status(&view.status)))
}

/// Bytes of CPU mask read and written: 1024 CPUs.
const CPU_MASK: usize = 128;

/// The CPUs this host has online, as a mask.
fn online_cpus() -> Vec<u8> {
    let mut m = vec![0u8; CPU_MASK];
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
            for c in a..=b.min(CPU_MASK * 8 - 1) {
                m[c / 8] |= 1 << (c % 8);
            }
        }
    }
    m
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{:02x}", x)).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// Where a thread may run and its I/O priority, read from outside: "cpus"
/// (a mask, bytes in hex, only when it leaves out CPUs this host has) and
/// "ioprio" (only when set).
fn dump_placement(tid: Pid, mut j: Json, online: &[u8]) -> Json {
    // (of a thread pinned for the frozen window, its own: pin.rs)
    if let Some(mask) = crate::pin::mask_of(tid) {
        if online.iter().zip(&mask).any(|(o, m)| o & !m != 0) {
            j.set("cpus", hex(&mask));
        }
    }
    const IOPRIO_WHO_PROCESS: u64 = 1;
    if let Ok(p) = unsafe { sys::raw(nr::IOPRIO_GET, &[IOPRIO_WHO_PROCESS, tid as u64]) } {
        // 0 (class NONE): never set, the I/O scheduler derives it from nice.
        if p != 0 {
            j.set("ioprio", p as u64);
        }
    }
    j
}

/// Set what `dump_placement` saved, from outside, on restored thread
/// `host`: the CPU mask (only the CPUs this host has; none of them: left
/// as it is, with a warning) and the I/O priority.
pub fn restore_placement(host: Pid, t: &Json) {
    if let Some(want) = t.str_of("cpus").and_then(unhex) {
        let online = online_cpus();
        let mask: Vec<u8> = (0..CPU_MASK).map(|i| want.get(i).copied().unwrap_or(0) & online[i]).collect();
        if mask.iter().all(|&b| b == 0) {
            eprintln!("phaul: warning: thread {}: none of its CPUs (mask {}) is online here: its affinity is not restored", t.i64_of("tid").unwrap_or(0), t.str_of("cpus").unwrap_or(""));
        } else if let Err(e) = unsafe { sys::raw(nr::SCHED_SETAFFINITY, &[host as u64, CPU_MASK as u64, mask.as_ptr() as u64]) } {
            eprintln!("phaul: warning: thread {}: CPU affinity not restored: {}", t.i64_of("tid").unwrap_or(0), Error::sys("sched_setaffinity", e).message);
        }
    }
    if let Some(p) = t.u64_of("ioprio") {
        if let Err(e) = unsafe { sys::raw(nr::IOPRIO_SET, &[1, host as u64, p]) } {
            eprintln!("phaul: warning: thread {}: I/O priority not restored: {}", t.i64_of("tid").unwrap_or(0), Error::sys("ioprio_set", e).message);
        }
    }
}

/// Per-thread kernel settings, injected into each thread itself, all
/// threads at once. `leader` runs in the first thread of `ths` and owns the
/// batch area; `others` run in the further ones, in order. `nice`: the
/// threads' nice value now (a new thread has its creator's).
/// (Pending signals are queued by the leader afterwards, see restore.rs.)
pub fn restore_settings(ths: &[Json], leader: &mut Injector, others: &mut [Injector], nice: i64) -> Result<()> {
    let mut jobs = Vec::with_capacity(others.len() + 1);
    for ((k, inj), t) in std::iter::once(leader).chain(others.iter_mut()).enumerate().zip(ths) {
        let calls = settings_calls(t, inj, batch::data(inj, k)?, nice)?;
        jobs.push(Job { inj, slot: k, calls });
    }
    batch::run_checked(&mut jobs).map(|_| ())
}

/// Bytes of a batch slot's data the settings' arguments take.
pub const SETTINGS_DATA: u64 = 512;

/// The calls that set one thread's settings; their arguments are written
/// at `data` (SETTINGS_DATA bytes).
pub fn settings_calls(t: &Json, inj: &Injector, data: u64, nice: i64) -> Result<Vec<Call>> {
    let mut calls = Vec::new();
    inj.write_mem(data, &signals::sigaltstack_bytes(t.get("sigaltstack")))?;
    calls.push(Call::new("sigaltstack(set)", nr::SIGALTSTACK, &[data, 0]));
    calls.push(Call::new("set_tid_address", nr::SET_TID_ADDRESS, &[t.u64_of("clear_child_tid").unwrap_or(0)]));
    if let Some(r) = t.get("robust_list") {
        let head = r.u64_of("head").unwrap_or(0);
        if head != 0 {
            calls.push(Call::new("set_robust_list", nr::SET_ROBUST_LIST, &[head, r.u64_of("len").unwrap_or(24)]));
        }
    }
    if let Some(r) = t.get("rseq") {
        let addr = r.u64_of("addr").unwrap_or(0);
        if addr != 0 {
            // The area still holds the old registration's cpu fields; the kernel
            // rewrites them on the first return to user space.
            calls.push(Call::new("rseq", nr::RSEQ, &[addr, r.u64_of("len").unwrap_or(32), 0, r.u64_of("sig").unwrap_or(0)]));
        }
    }
    if let Some(c) = t.str_of("comm") {
        let mut b: Vec<u8> = c.bytes().take(63).collect();
        b.push(0);
        inj.write_mem(data + 64, &b)?;
        calls.push(Call::new("prctl(PR_SET_NAME)", nr::PRCTL, &[PR_SET_NAME, data + 64]));
    }
    calls.extend(crate::creds::sched_calls(t.get("sched"), inj, data + 128, nice)?);
    if let Some(ns) = t.u64_of("timerslack_ns").filter(|&v| v > 0 && v != 50_000) {
        calls.push(Call::new("prctl(PR_SET_TIMERSLACK)", nr::PRCTL, &[29, ns]));
    }
    Ok(calls)
}

/// Per-thread settings that must come after the credentials (a change of
/// uid clears the parent-death signal).
pub fn late_calls(t: &Json) -> Vec<Call> {
    match t.u64_of("pdeathsig").filter(|&s| s > 0 && s <= 64) {
        Some(sig) => vec![Call::new("prctl(PR_SET_PDEATHSIG)", nr::PRCTL, &[1, sig])],
        None => Vec::new(),
    }
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
        // The kernel takes only a whole XSAVE area: pad what the dump trimmed.
        let full;
        let n = crate::arch::xsave_info().1 as usize;
        let xsave = if n > xsave.len() {
            full = [xsave, &vec![0u8; n - xsave.len()][..]].concat();
            &full[..]
        } else {
            xsave
        };
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
