//! POSIX timers (timer_create): clock, notification (the process or one of
//! its threads: SIGEV_THREAD_ID, which glibc's SIGEV_THREAD uses), signal,
//! value, time left and interval. Timer ids are kept
//! (PR_TIMER_CREATE_RESTORE_IDS where the kernel has it, else creation in id
//! order and a check). Restore runs once the process's threads exist.

use super::{ns_timespec, timespec_ns};
use crate::inject::Injector;
use crate::json::Json;
use crate::sys::{nr, Error, Pid, Result};

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const SIGEV_SIGNAL: i64 = 0;
const SIGEV_NONE: i64 = 1;
const SIGEV_THREAD_ID: i64 = 4;

struct Raw {
    id: i64,
    signo: i64,
    value: u64,
    notify: i64,
    tid: i64,
    clock: i64,
}

fn parse(text: &str) -> Result<Vec<Raw>> {
    let mut out: Vec<Raw> = Vec::new();
    let bad = |l: &str| Error::new("EPROC", format!("/proc/PID/timers line not understood: {}", l));
    for l in text.lines() {
        let (k, v) = match l.split_once(':') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => continue,
        };
        if k == "ID" {
            out.push(Raw { id: v.parse().map_err(|_| bad(l))?, signo: 0, value: 0, notify: 0, tid: 0, clock: 0 });
            continue;
        }
        let t = match out.last_mut() {
            Some(t) => t,
            None => continue,
        };
        match k {
            "signal" => {
                let (s, val) = v.split_once('/').ok_or_else(|| bad(l))?;
                t.signo = s.parse().map_err(|_| bad(l))?;
                t.value = u64::from_str_radix(val.trim_start_matches("0x"), 16).map_err(|_| bad(l))?;
            }
            "notify" => {
                // "signal/pid.N", "none/pid.N", "thread/tid.N", "signal/tid.N"
                let (kind, who) = v.split_once('/').ok_or_else(|| bad(l))?;
                let (what, n) = who.split_once('.').ok_or_else(|| bad(l))?;
                t.notify = match kind {
                    "signal" => SIGEV_SIGNAL,
                    "none" => SIGEV_NONE,
                    "thread" => 2,
                    _ => return Err(bad(l)),
                };
                if what == "tid" {
                    t.notify |= SIGEV_THREAD_ID;
                }
                t.tid = n.parse().map_err(|_| bad(l))?;
            }
            "ClockID" => t.clock = v.parse().map_err(|_| bad(l))?,
            _ => {}
        }
    }
    Ok(out)
}

pub fn dump(inj: &mut Injector, pid: Pid) -> Result<Vec<Json>> {
    let text = match std::fs::read_to_string(format!("/proc/{}/timers", pid)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::from(e).context(format!("reading /proc/{}/timers", pid))),
    };
    let mut out = Vec::new();
    for t in parse(&text)? {
        // The thread to notify, as the tree sees it (/proc shows our view).
        let tid = if t.notify & SIGEV_THREAD_ID != 0 { crate::proc::innermost_pid(pid, t.tid as Pid) as i64 } else { 0 };
        let a = inj.scratch(4096)? + 2048;
        inj.call(&format!("timer_gettime({})", t.id), nr::TIMER_GETTIME, &[t.id as u64, a])?;
        let its = inj.read_mem(a, 32)?;
        out.push(
            Json::obj()
                .with("id", t.id)
                .with("clock", t.clock)
                .with("signo", t.signo)
                .with("sigev_value", t.value)
                .with("notify", t.notify)
                .with("tid", tid)
                .with("interval_ns", timespec_ns(&its[0..16]))
                .with("value_ns", timespec_ns(&its[16..32])),
        );
    }
    Ok(out)
}

/// Run by the process's leader once all its threads exist (a timer may
/// notify any of them).
pub fn restore(inj: &mut Injector, p: &Json) -> Result<()> {
    let mut timers: Vec<&Json> = p.arr_of("posix_timers").iter().collect();
    if timers.is_empty() {
        return Ok(());
    }
    timers.sort_by_key(|t| t.i64_of("id").unwrap_or(0));
    let pid = p.i64_of("pid").unwrap_or(0);
    let by_id = inj.raw(nr::PRCTL, &[PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0])? == 0;
    let r = (|| -> Result<()> {
        for t in timers {
            let id = t.i64_of("id").unwrap_or(0);
            let notify = t.i64_of("notify").unwrap_or(0);
            // struct sigevent (64 bytes): value, signo, notify, tid; then the wanted id.
            let mut sev = vec![0u8; 72];
            sev[0..8].copy_from_slice(&t.u64_of("sigev_value").unwrap_or(0).to_le_bytes());
            sev[8..12].copy_from_slice(&(t.i64_of("signo").unwrap_or(0) as i32).to_le_bytes());
            sev[12..16].copy_from_slice(&(notify as i32).to_le_bytes());
            let target = if notify & SIGEV_THREAD_ID != 0 { t.i64_of("tid").filter(|&x| x > 0).unwrap_or(pid) } else { pid };
            sev[16..20].copy_from_slice(&(target as i32).to_le_bytes());
            sev[64..68].copy_from_slice(&(id as i32).to_le_bytes());
            let a = inj.put(&sev, 2048)?;
            inj.call(&format!("timer_create(id {})", id), nr::TIMER_CREATE, &[t.i64_of("clock").unwrap_or(0) as u64, a, a + 64])?;
            let got = i32::from_le_bytes(inj.read_mem(a + 64, 4)?[..4].try_into().unwrap_or([0; 4])) as i64;
            if got != id {
                return Err(Error::new("ETIMER", format!("POSIX timer {} came back as timer {} (ids of deleted timers cannot be skipped on this kernel)", id, got)));
            }
            let value = t.u64_of("value_ns").unwrap_or(0);
            if value > 0 {
                let mut its = Vec::with_capacity(32);
                ns_timespec(t.u64_of("interval_ns").unwrap_or(0), &mut its);
                ns_timespec(value, &mut its);
                let b = inj.put(&its, 2048 + 128)?;
                inj.call(&format!("timer_settime({})", id), nr::TIMER_SETTIME, &[id as u64, 0, b, 0])?;
            }
        }
        Ok(())
    })();
    if by_id {
        inj.call("prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)", nr::PRCTL, &[PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0])?;
    }
    r
}
