//! Signals: handlers, pending signals, alternate stacks and interval timers.

use crate::base64;
use crate::batch::Call;
use crate::inject::Injector;
use crate::json::Json;
use crate::ptrace;
use crate::sys::{nr, Error, Pid, Result};

const SIGKILL: u64 = 9;
const SIGSTOP: u64 = 19;
const NSIG: u64 = 64;

/// struct kernel_sigaction on x86_64: handler, flags, restorer, mask.
fn parse_sigaction(b: &[u8]) -> [u64; 4] {
    let g = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    [g(0), g(1), g(2), g(3)]
}

/// Signals whose disposition is not the default (caught or ignored), from
/// /proc/PID/status: only those are asked for, which keeps the frozen time
/// of a migration short (one injected syscall each).
fn non_default(pid: Pid) -> u64 {
    let f = |k: &str| crate::proc::status_field(pid, k).ok().and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    match (f("SigCgt"), f("SigIgn")) {
        (Some(c), Some(i)) => c | i,
        _ => u64::MAX,
    }
}

/// The injected reads of the signal handlers that are not the default; each
/// lands at `at` + 32 * its place in the returned list of signals.
pub fn sigaction_reads(pid: Pid, at: u64) -> (Vec<u64>, Vec<Call>) {
    let wanted = non_default(pid);
    let sigs: Vec<u64> = (1..=NSIG).filter(|&sig| sig != SIGKILL && sig != SIGSTOP && wanted & (1 << (sig - 1)) != 0).collect();
    let calls = sigs.iter().enumerate().map(|(k, &sig)| Call::new("rt_sigaction(get)", nr::RT_SIGACTION, &[sig, 0, at + 32 * k as u64, 8])).collect();
    (sigs, calls)
}

/// The handlers `sigaction_reads` read.
pub fn sigactions_from(inj: &Injector, sigs: &[u64], at: u64) -> Result<Vec<Json>> {
    let all = inj.read_mem(at, 32 * sigs.len())?;
    let mut out = Vec::new();
    for (k, &sig) in sigs.iter().enumerate() {
        let a = parse_sigaction(&all[32 * k..32 * k + 32]);
        if a == [0, 0, 0, 0] {
            continue;
        }
        out.push(Json::obj().with("sig", sig).with("handler", a[0]).with("flags", a[1]).with("restorer", a[2]).with("mask", Json::Str(a[3].to_string())));
    }
    Ok(out)
}

/// Set every handler: the listed ones as saved, all others back to default
/// (the stub inherited the engine's dispositions; only those that are not
/// the default need resetting).
/// The calls that set every handler: the listed ones as saved, all others
/// back to default (the stub inherited the engine's dispositions; only those
/// that are not the default need resetting). Each struct goes at `at` + 32 k.
pub fn sigaction_calls(inj: &Injector, acts: &[Json], at: u64) -> Result<Vec<Call>> {
    let inherited = non_default(inj.pid);
    let mut calls = Vec::new();
    let mut structs = Vec::new();
    for sig in 1..=NSIG {
        if sig == SIGKILL || sig == SIGSTOP {
            continue;
        }
        let a = acts.iter().find(|a| a.u64_of("sig") == Some(sig));
        if a.is_none() && inherited & (1 << (sig - 1)) == 0 {
            continue;
        }
        let v = match a {
            Some(a) => [a.u64_of("handler").unwrap_or(0), a.u64_of("flags").unwrap_or(0), a.u64_of("restorer").unwrap_or(0), a.u64_of("mask").unwrap_or(0)],
            None => [0, 0, 0, 0],
        };
        for x in v {
            structs.extend_from_slice(&x.to_le_bytes());
        }
        calls.push(Call::new(format!("rt_sigaction({})", sig), nr::RT_SIGACTION, &[sig, at + 32 * (calls.len() as u64), 0, 8]));
    }
    inj.write_mem(at, &structs)?;
    Ok(calls)
}

pub fn siginfos_to_json(v: Vec<[u8; ptrace::SIGINFO_SIZE]>) -> Json {
    Json::Arr(v.iter().map(|s| Json::Str(base64::encode(s))).collect())
}

fn siginfo_sig(b: &[u8]) -> u64 {
    u32::from_le_bytes(b[0..4].try_into().unwrap_or([0; 4])) as u64
}

/// Queue saved signals again. Runs inside the target, so any si_code is allowed.
pub fn requeue(inj: &mut Injector, pid: Pid, tid: Option<Pid>, infos: &[Json]) -> Result<()> {
    for s in infos {
        let b = s.as_str().and_then(base64::decode).filter(|b| b.len() == ptrace::SIGINFO_SIZE);
        let b = b.ok_or_else(|| Error::new("EIMAGE", "a pending signal record in the image is malformed"))?;
        let sig = siginfo_sig(&b);
        if sig == 0 || sig > NSIG {
            continue;
        }
        let addr = inj.put(&b, 2048)?;
        match tid {
            Some(t) => inj.call("rt_tgsigqueueinfo", nr::RT_TGSIGQUEUEINFO, &[pid as u64, t as u64, sig, addr])?,
            None => inj.call("rt_sigqueueinfo", nr::RT_SIGQUEUEINFO, &[pid as u64, sig, addr])?,
        };
    }
    Ok(())
}

/// A stack_t as sigaltstack(NULL, &old) wrote it.
pub fn sigaltstack_json(b: &[u8]) -> Json {
    let sp = u64::from_le_bytes(b[0..8].try_into().unwrap_or([0; 8]));
    let flags = i32::from_le_bytes(b[8..12].try_into().unwrap_or([0; 4]));
    let size = u64::from_le_bytes(b[16..24].try_into().unwrap_or([0; 8]));
    Json::obj().with("sp", sp).with("flags", flags as i64).with("size", size)
}

/// The stack_t that sets a thread's alternate signal stack as dumped.
pub fn sigaltstack_bytes(j: Option<&Json>) -> Vec<u8> {
    const SS_DISABLE: i64 = 2;
    let (sp, flags, size) = match j {
        Some(j) => (j.u64_of("sp").unwrap_or(0), j.i64_of("flags").unwrap_or(SS_DISABLE), j.u64_of("size").unwrap_or(0)),
        None => (0, SS_DISABLE, 0),
    };
    // SS_ONSTACK is a report, not a request: a thread running on its
    // alternate stack had it enabled.
    let flags = if flags & SS_DISABLE != 0 { SS_DISABLE } else { flags & !1 };
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&sp.to_le_bytes());
    b.extend_from_slice(&(flags as i32).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&size.to_le_bytes());
    b
}

fn tv_us(b: &[u8]) -> u64 {
    let s = i64::from_le_bytes(b[0..8].try_into().unwrap_or([0; 8]));
    let us = i64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]));
    (s * 1_000_000 + us).max(0) as u64
}

/// The injected reads of the three interval timers, landing at `at` (96 bytes).
pub fn itimer_reads(at: u64) -> Vec<Call> {
    (0..3u64).map(|which| Call::new("getitimer", nr::GETITIMER, &[which, at + 32 * which])).collect()
}

pub fn itimers_from(inj: &Injector, at: u64) -> Result<Vec<Json>> {
    let all = inj.read_mem(at, 96)?;
    let mut out = Vec::new();
    for which in 0..3u64 {
        let b = &all[32 * which as usize..32 * which as usize + 32];
        let (interval, value) = (tv_us(&b[0..16]), tv_us(&b[16..32]));
        if interval != 0 || value != 0 {
            out.push(Json::obj().with("which", which).with("interval_us", interval).with("value_us", value));
        }
    }
    Ok(out)
}

/// The calls that arm the interval timers again; each struct at `at` + 32 k.
pub fn itimer_calls(inj: &Injector, timers: &[Json], at: u64) -> Result<Vec<Call>> {
    let mut calls = Vec::new();
    for (k, t) in timers.iter().enumerate() {
        let which = t.u64_of("which").unwrap_or(0);
        if which > 2 || k > 2 {
            return Err(Error::new("EIMAGE", "an interval timer in the image has an unknown kind"));
        }
        let tv = |us: u64| {
            let mut v = Vec::new();
            v.extend_from_slice(&((us / 1_000_000) as i64).to_le_bytes());
            v.extend_from_slice(&((us % 1_000_000) as i64).to_le_bytes());
            v
        };
        let mut b = tv(t.u64_of("interval_us").unwrap_or(0));
        // A timer that was about to fire keeps a minimal delay rather than 0 (which disarms).
        b.extend(tv(t.u64_of("value_us").unwrap_or(0).max(1)));
        let addr = at + 32 * k as u64;
        inj.write_mem(addr, &b)?;
        calls.push(Call::new("setitimer", nr::SETITIMER, &[which, addr, 0]));
    }
    Ok(calls)
}
