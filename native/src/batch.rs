//! Batches of injected system calls.
//!
//! An injected call costs its thread two stops, each a round trip through
//! the scheduler (0.1-0.3 ms on the test machine), and a process paid that
//! per call and per thread in its frozen window: 64 threads took about
//! 100 ms to restore. A batch runs a thread's whole list of calls in one
//! stop (arch::BATCH_CODE walks a table in the target), and the threads of
//! a process run their lists at the same time.
//!
//! The batch area (Injector::batch_area) is one code page followed by one
//! slot per thread: the first half of a slot holds the calls' arguments
//! and results (`data`), the second half the table.

use crate::arch;
use crate::inject::Injector;
use crate::ptrace;
use crate::sys::{Error, Result};

pub const SLOT: u64 = 16384;
/// Bytes of a slot free for arguments and results.
pub const DATA_LEN: u64 = 8192;
const ENTRY: u64 = 64;
pub const MAX_CALLS: usize = ((SLOT - DATA_LEN) / ENTRY) as usize;

pub struct Call {
    pub what: String,
    pub nr: i64,
    pub args: [u64; 6],
}

impl Call {
    pub fn new(what: impl Into<String>, nr: i64, args: &[u64]) -> Call {
        let mut a = [0u64; 6];
        for (d, s) in a.iter_mut().zip(args) {
            *d = *s;
        }
        Call { what: what.into(), nr, args: a }
    }
}

/// One thread's list; `slot` must differ between the jobs of one run.
pub struct Job<'a> {
    pub inj: &'a mut Injector,
    pub slot: usize,
    pub calls: Vec<Call>,
}

/// Room for `slots` threads, mapped by the injector that owns the areas,
/// before the other threads share them; nothing to do when there is room.
pub fn reserve(owner: &mut Injector, slots: usize) -> Result<()> {
    owner.batch_area(4096 + slots as u64 * SLOT, &arch::BATCH_CODE).map(|_| ())
}

/// Address of slot `k`'s data area.
pub fn data(inj: &Injector, k: usize) -> Result<u64> {
    let (base, end) = inj.batch_range().ok_or_else(|| Error::new("EINJECT", "no batch area was reserved"))?;
    let at = base + 4096 + k as u64 * SLOT;
    if at + SLOT > end {
        return Err(Error::new("EINJECT", format!("batch slot {} is outside the reserved area", k)));
    }
    Ok(at)
}

/// Run every job, the threads all at once; each call's raw result
/// (negative errno on failure), per job.
pub fn run(jobs: &mut [Job]) -> Result<Vec<Vec<i64>>> {
    let mut tables = Vec::with_capacity(jobs.len());
    for j in jobs.iter_mut() {
        if j.calls.is_empty() {
            tables.push(0);
            continue;
        }
        if j.calls.len() > MAX_CALLS {
            return Err(Error::new("EINJECT", format!("{} calls in one batch (at most {})", j.calls.len(), MAX_CALLS)));
        }
        let table = data(j.inj, j.slot)? + DATA_LEN;
        let mut bytes = Vec::with_capacity(j.calls.len() * ENTRY as usize);
        for c in &j.calls {
            bytes.extend_from_slice(&(c.nr as u64).to_le_bytes());
            for a in c.args {
                bytes.extend_from_slice(&a.to_le_bytes());
            }
            bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        }
        j.inj.write_mem(table, &bytes)?;
        let code = j.inj.batch_range().map(|r| r.0).unwrap_or(0);
        let mut r = *j.inj.saved_regs();
        r.set_batch(code, table, j.calls.len() as u64);
        ptrace::set_regs(j.inj.tid, &r)?;
        tables.push(table);
    }
    // Every thread that was let go is waited for, even after a failure:
    // none may be left running phaul's code.
    let mut first_err = None;
    let mut running = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        if j.calls.is_empty() {
            continue;
        }
        match ptrace::cont(j.inj.tid, 0) {
            Ok(()) => running.push(i),
            Err(e) => {
                first_err = Some(e);
                break;
            }
        }
    }
    for &i in &running {
        if let Err(e) = wait_done(jobs[i].inj) {
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let mut out = Vec::with_capacity(jobs.len());
    for (j, table) in jobs.iter().zip(tables) {
        let n = j.calls.len();
        let b = if n == 0 { Vec::new() } else { j.inj.read_mem(table, n * ENTRY as usize)? };
        out.push((0..n).map(|k| i64::from_le_bytes(b[k * 64 + 56..k * 64 + 64].try_into().unwrap_or([0; 8]))).collect());
    }
    Ok(out)
}

/// `run`, with a failed call an error naming it.
pub fn run_checked(jobs: &mut [Job]) -> Result<Vec<Vec<u64>>> {
    let res = run(jobs)?;
    for (j, rs) in jobs.iter().zip(&res) {
        for (c, &r) in j.calls.iter().zip(rs) {
            if (-4095..0).contains(&r) {
                return Err(Error::sys(format!("{} in thread {} of process {}", c.what, j.inj.tid, j.inj.pid), (-r) as i32));
            }
        }
    }
    Ok(res.into_iter().map(|v| v.into_iter().map(|r| r as u64).collect()).collect())
}

/// Wait for the thread's breakpoint at the end of its table. Clone events
/// (a batch of clone3 calls) are noted as the injector's new children.
fn wait_done(inj: &mut Injector) -> Result<()> {
    loop {
        let st = ptrace::wait(inj.tid)?;
        if !ptrace::stopped(st) {
            return Err(Error::new("ESRCH", format!("thread {} died during a batch of injected calls", inj.tid)));
        }
        let ev = ptrace::event(st);
        if ev == ptrace::EVENT_FORK || ev == ptrace::EVENT_CLONE {
            inj.new_children.push(ptrace::event_msg(inj.tid)? as crate::sys::Pid);
            ptrace::cont(inj.tid, 0)?;
            continue;
        }
        let sig = ptrace::stop_sig(st);
        if ev == 0 && sig == 5 {
            return Ok(());
        }
        if ev != 0 || matches!(sig, 19..=22) {
            // A group stop or another event: the table is not done yet.
            ptrace::cont(inj.tid, 0)?;
            continue;
        }
        let r = ptrace::get_regs(inj.tid)?;
        return Err(Error::new("EINJECT", format!("thread {} stopped with signal {} at {:#x} during a batch of injected calls", inj.tid, sig, r.pc())));
    }
}
