//! Credentials (uids, gids, groups, capabilities, no_new_privs), scheduling
//! policy and nice value, and personality.
//!
//! Credentials are per thread in Linux: they are restored in every thread,
//! as the very last injected step, because a thread that has dropped root can
//! no longer do the privileged parts of a restore.

use crate::batch::Call;
use crate::inject::Injector;
use crate::json::Json;
use crate::sys::{nr, Error, Pid, Result};

fn ids(s: &str) -> Vec<Json> {
    s.split_whitespace().filter_map(|x| x.parse::<u64>().ok()).map(Json::U64).collect()
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim(), 16).unwrap_or(0)
}

pub fn dump_creds(pid: Pid) -> Result<Json> {
    dump_creds_of_thread(pid, pid)
}

/// Credentials of one thread (they are per thread in Linux).
pub fn dump_creds_of_thread(pid: Pid, tid: Pid) -> Result<Json> {
    Ok(creds_of_status(&std::fs::read_to_string(format!("/proc/{}/task/{}/status", pid, tid)).unwrap_or_default()))
}

/// Credentials as a thread's /proc status text shows them.
pub fn creds_of_status(status: &str) -> Json {
    let f = |k: &str| -> String { crate::proc::field_of_status(status, k).unwrap_or_default() };
    Json::obj()
        .with("uid", ids(&f("Uid")))
        .with("gid", ids(&f("Gid")))
        .with("groups", ids(&f("Groups")))
        .with("cap_inh", Json::Str(hex(&f("CapInh")).to_string()))
        .with("cap_prm", Json::Str(hex(&f("CapPrm")).to_string()))
        .with("cap_eff", Json::Str(hex(&f("CapEff")).to_string()))
        .with("cap_bnd", Json::Str(hex(&f("CapBnd")).to_string()))
        .with("cap_amb", Json::Str(hex(&f("CapAmb")).to_string()))
        .with("no_new_privs", f("NoNewPrivs").trim() == "1")
}

pub fn dump_personality(pid: Pid) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/personality", pid)).map(|s| hex(&s)).unwrap_or(0)
}

/// Per-thread scheduling: policy, real-time priority, nice.
pub fn dump_sched(pid: Pid, tid: Pid) -> Json {
    let st = std::fs::read_to_string(format!("/proc/{}/task/{}/stat", pid, tid)).unwrap_or_default();
    sched_of_stat(&crate::proc::parse_stat(&st).map(|(_, f)| f).unwrap_or_default())
}

/// Policy, priority and nice from a thread's stat fields (after its comm).
pub fn sched_of_stat(fields: &[String]) -> Json {
    let g = |n: usize| fields.get(n - 3).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    Json::obj().with("policy", g(41)).with("priority", g(40)).with("nice", g(19))
}

pub fn personality_calls(p: &Json) -> Vec<Call> {
    match p.u64_of("personality") {
        Some(v) => vec![Call::new("personality", nr::PERSONALITY, &[v & 0xffff_ffff])],
        None => Vec::new(),
    }
}

/// The calls that give a thread its scheduling policy, priority and nice
/// value (`nice`: its value now); arguments go at `at`.
pub fn sched_calls(s: Option<&Json>, inj: &Injector, at: u64, nice: i64) -> Result<Vec<Call>> {
    let s = match s {
        Some(s) => s,
        None => return Ok(Vec::new()),
    };
    let mut calls = Vec::new();
    const SCHED_RESET_ON_FORK: i64 = 0x40000000;
    let policy = s.i64_of("policy").unwrap_or(0) & !SCHED_RESET_ON_FORK;
    let prio = s.i64_of("priority").unwrap_or(0);
    if policy != 0 || prio != 0 {
        inj.write_mem(at, &(prio as i32).to_le_bytes())?;
        calls.push(Call::new("sched_setscheduler", 144, &[0, policy as u64, at]));
    }
    let want = s.i64_of("nice").unwrap_or(0);
    if want != nice {
        // PRIO_PROCESS with who = 0 means the calling thread here.
        calls.push(Call::new("setpriority", 141, &[0, 0, want as u64]));
    }
    Ok(calls)
}

fn cap_last() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
}

/// The calls that make a thread take the saved identity `c`, run in each
/// thread after everything else; none when `now` (its identity now, the same
/// for every thread of a new process) is already that. Arguments go at
/// `data` (a batch slot's data area, `room` bytes).
pub fn creds_calls(c: Option<&Json>, now: Option<&Json>, inj: &Injector, data: u64, room: u64) -> Result<Vec<Call>> {
    let c = match c {
        Some(c) => c,
        None => return Ok(Vec::new()),
    };
    let list = |k: &str| -> Vec<u64> { c.arr_of(k).iter().filter_map(Json::as_u64).collect() };
    let (uid, gid, groups) = (list("uid"), list("gid"), list("groups"));
    if uid.len() != 4 || gid.len() != 4 {
        return Err(Error::new("EIMAGE", "credentials in the image are incomplete"));
    }
    let cap = |k: &str| c.u64_of(k).unwrap_or(0);
    // The usual root process: nothing to do.
    if let Some(now) = now {
        let same_list = |k: &str| now.arr_of(k).iter().filter_map(Json::as_u64).collect::<Vec<_>>() == list(k);
        let same_cap = |k: &str| now.u64_of(k) == c.u64_of(k);
        if same_list("uid") && same_list("gid") && same_list("groups") && ["cap_inh", "cap_prm", "cap_eff", "cap_bnd", "cap_amb"].iter().all(|k| same_cap(k)) && now.bool_of("no_new_privs") == c.bool_of("no_new_privs") {
            return Ok(Vec::new());
        }
    }
    const PR_SET_KEEPCAPS: u64 = 8;
    const PR_CAPBSET_DROP: u64 = 24;
    const PR_SET_NO_NEW_PRIVS: u64 = 38;
    const PR_CAP_AMBIENT: u64 = 47;
    const PR_CAP_AMBIENT_RAISE: u64 = 2;
    let mut calls = vec![Call::new("prctl(PR_SET_KEEPCAPS)", nr::PRCTL, &[PR_SET_KEEPCAPS, 1])];
    let bnd = cap("cap_bnd");
    for bit in 0..=cap_last().min(63) {
        if bnd & (1 << bit) == 0 {
            calls.push(Call::new("prctl(PR_CAPBSET_DROP)", nr::PRCTL, &[PR_CAPBSET_DROP, bit]));
        }
    }
    let g: Vec<u8> = groups.iter().flat_map(|x| (*x as u32).to_le_bytes()).collect();
    if g.len() as u64 > room - 64 {
        return Err(Error::new("EUNSUPPORTED", format!("{} supplementary groups (phaul restores at most {})", groups.len(), (room - 64) / 4)));
    }
    inj.write_mem(data + 64, &g)?;
    calls.push(Call::new("setgroups", 116, &[groups.len() as u64, if g.is_empty() { 0 } else { data + 64 }]));
    calls.push(Call::new("setresgid", 119, &[gid[0], gid[1], gid[2]]));
    calls.push(Call::new("setfsgid", 123, &[gid[3]])); // returns the previous value, never an error
    calls.push(Call::new("setresuid", 117, &[uid[0], uid[1], uid[2]]));
    calls.push(Call::new("setfsuid", 122, &[uid[3]]));
    // capset v3: header {version, pid=0}, then {effective, permitted, inheritable} x 2 (low, high 32 bits).
    let (eff, prm, inh) = (cap("cap_eff"), cap("cap_prm"), cap("cap_inh"));
    let mut b = Vec::new();
    b.extend_from_slice(&0x2008_0522u32.to_le_bytes());
    b.extend_from_slice(&0i32.to_le_bytes());
    for half in [0u32, 32] {
        for v in [eff, prm, inh] {
            b.extend_from_slice(&((v >> half) as u32).to_le_bytes());
        }
    }
    inj.write_mem(data, &b)?;
    calls.push(Call::new("capset", 126, &[data, data + 8]));
    let amb = cap("cap_amb");
    for bit in 0..64 {
        if amb & (1 << bit) != 0 {
            calls.push(Call::new("prctl(PR_CAP_AMBIENT_RAISE)", nr::PRCTL, &[PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, bit, 0, 0]));
        }
    }
    calls.push(Call::new("prctl(PR_SET_KEEPCAPS)", nr::PRCTL, &[PR_SET_KEEPCAPS, 0]));
    if c.bool_of("no_new_privs") {
        calls.push(Call::new("prctl(PR_SET_NO_NEW_PRIVS)", nr::PRCTL, &[PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0]));
    }
    Ok(calls)
}
