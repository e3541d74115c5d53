//! Process-wide attributes: identity, cwd/root, umask, rlimits and the mm
//! fields behind /proc/PID/cmdline, environ, brk and auxv.

use crate::batch::Call;
use crate::inject::Injector;
use crate::json::Json;
use crate::memory::file_identity;
use crate::proc;
use crate::sys::{nr, Error, Pid, Result};

const RLIM_NAMES: [&str; 16] = [
    "Max cpu time", "Max file size", "Max data size", "Max stack size", "Max core file size", "Max resident set", "Max processes",
    "Max open files", "Max locked memory", "Max address space", "Max file locks", "Max pending signals", "Max msgqueue size",
    "Max nice priority", "Max realtime priority", "Max realtime timeout",
];

fn parse_limit(s: &str) -> u64 {
    if s == "unlimited" {
        u64::MAX
    } else {
        s.parse().unwrap_or(u64::MAX)
    }
}

/// /proc/PID/limits: readable by root without CAP_SYS_RESOURCE (prlimit is not).
pub fn rlimits(pid: Pid) -> Result<Vec<Json>> {
    let text = std::fs::read_to_string(format!("/proc/{}/limits", pid)).map_err(|e| Error::from(e).context("reading limits"))?;
    let mut out = Vec::new();
    for l in text.lines() {
        for (i, name) in RLIM_NAMES.iter().enumerate() {
            if let Some(rest) = l.strip_prefix(name) {
                let mut f = rest.split_whitespace();
                let cur = parse_limit(f.next().unwrap_or(""));
                let max = parse_limit(f.next().unwrap_or(""));
                out.push(Json::obj().with("resource", i as u64).with("cur", cur).with("max", max));
            }
        }
    }
    Ok(out)
}

/// The injected reads of the process-wide attributes, run in the leader
/// with its thread's own (threads::dump_threads); `out`: 4 bytes of its slot.
pub fn reads(out: u64) -> Vec<Call> {
    vec![
        Call::new("brk(0)", nr::BRK, &[0]),
        Call::new("prctl(PR_GET_DUMPABLE)", nr::PRCTL, &[3]),
        Call::new("prctl(PR_GET_THP_DISABLE)", nr::PRCTL, &[42]),
        Call::new("prctl(PR_GET_CHILD_SUBREAPER)", nr::PRCTL, &[37, out]),
        Call::new("membarrier(GET_REGISTRATIONS)", nr::MEMBARRIER, &[MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0]),
        Call::new("prctl(PR_GET_MDWE)", nr::PRCTL, &[PR_GET_MDWE, 0, 0, 0, 0]),
    ]
}

const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;
/// The registrations GET_REGISTRATIONS reports that a process can make
/// again: global expedited, private expedited, its sync-core and rseq
/// flavours. Each is a command of its own, run in the restored process.
const MEMBARRIER_REGISTRATIONS: [u64; 4] = [1 << 2, 1 << 4, 1 << 6, 1 << 8];
const PR_SET_MDWE: u64 = 65;
const PR_GET_MDWE: u64 = 66;

/// `res`: the results of `reads(out)`.
pub fn dump_process(pid: Pid, inj: &Injector, res: &[u64], out: u64) -> Result<Json> {
    let (comm, st) = proc::stat(pid)?;
    let exe = proc::readlink(&format!("/proc/{}/exe", pid)).unwrap_or_default();
    let umask = u64::from_str_radix(&proc::status_field(pid, "Umask").unwrap_or_else(|_| "22".into()), 8).unwrap_or(0o22);
    let r = |i: usize| res.get(i).copied().unwrap_or(0);
    let (brk, dumpable, thp_disable) = (r(0), r(1), r(2));
    // Negative: the kernel has no such query (older than 6.3, 6.3 for MDWE).
    let known = |v: u64| (v as i64) >= 0;
    let membarrier = MEMBARRIER_REGISTRATIONS.iter().filter(|&&b| known(r(4)) && r(4) & b != 0).fold(0, |m, b| m | b);
    let mdwe = if known(r(5)) { r(5) } else { 0 };
    let subreaper = u32::from_le_bytes(inj.read_mem(out, 4)?.try_into().unwrap_or([0; 4])) != 0;
    let auxv_raw = std::fs::read(format!("/proc/{}/auxv", pid)).unwrap_or_default();
    let auxv: Vec<Json> = auxv_raw.chunks_exact(8).map(|c| Json::U64(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))).collect();
    let f = |n| proc::stat_u64(&st, n);
    let mm = Json::obj()
        .with("start_code", f(26))
        .with("end_code", f(27))
        .with("start_stack", f(28))
        .with("start_data", f(45))
        .with("end_data", f(46))
        .with("start_brk", f(47))
        .with("brk", brk)
        .with("arg_start", f(48))
        .with("arg_end", f(49))
        .with("env_start", f(50))
        .with("env_end", f(51))
        .with("auxv", auxv);
    let mut exe_j = file_identity(exe.trim_end_matches(" (deleted)"));
    if let Json::Obj(_) = exe_j {
        exe_j.set("path", exe.as_str());
    } else {
        exe_j = Json::obj().with("path", exe.as_str());
    }
    Ok(Json::obj()
        .with("pid", pid)
        .with("ppid", f(4))
        .with("pgid", f(5))
        .with("sid", f(6))
        .with("comm", comm)
        .with("exe", exe_j)
        .with("cwd", dump_cwd(pid)?)
        .with("root", proc::readlink(&format!("/proc/{}/root", pid))?)
        .with("umask", umask)
        .with("rlimits", rlimits(pid)?)
        .with("creds", crate::creds::dump_creds(pid)?)
        .with("personality", crate::creds::dump_personality(pid))
        .with("dumpable", dumpable)
        .with("thp_disable", thp_disable != 0)
        .with("child_subreaper", subreaper)
        .with("oom_score_adj", oom_score_adj(pid))
        .with("membarrier", membarrier)
        .with("mdwe", mdwe)
        .with("loginuid", loginuid(pid))
        .with("cgroups", crate::cgroup::dump(pid))
        .with("mm", mm))
}

/// The working directory; one under /proc/PID must be of a live process.
fn dump_cwd(pid: Pid) -> Result<String> {
    let cwd = proc::readlink(&format!("/proc/{}/cwd", pid))?;
    if cwd.starts_with("/proc/") {
        let md = std::fs::metadata(format!("/proc/{}/cwd", pid)).map_err(|e| Error::from(e).context("the working directory"))?;
        let named = crate::procpid::check(pid, "the working directory", &cwd, &md)?;
        // A dead entry is told by its " (deleted)" (procpid::dead_entry).
        if named.is_some_and(|n| n.dead) && !cwd.ends_with(" (deleted)") {
            return Ok(format!("{} (deleted)", cwd));
        }
    }
    Ok(cwd)
}

/// The audit login uid (u32::MAX: never set), per process: the leader's.
fn loginuid(pid: Pid) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/loginuid", pid)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(u32::MAX as u64)
}

/// The audit login uid, written by the process itself (the kernel takes it
/// from no one else) before its threads are made, so that they inherit it,
/// and while it still has CAP_AUDIT_CONTROL. Like the OOM adjustment, a
/// refusal (an immutable login uid) is a warning, not a failed restore.
pub fn restore_loginuid(inj: &mut Injector, p: &Json) -> Result<()> {
    let Some(want) = p.u64_of("loginuid").filter(|&v| v <= u32::MAX as u64) else { return Ok(()) };
    if loginuid(inj.pid) == want {
        return Ok(());
    }
    let path = inj.put_str("/proc/thread-self/loginuid", 0)?;
    let text = want.to_string();
    let value = inj.put_str(&text, 64)?;
    let fd = inj.raw(nr::OPEN, &[path, 1 /* O_WRONLY */ | 0o2000000, 0])?;
    let wrote = if fd >= 0 {
        let w = inj.raw(nr::WRITE, &[fd as u64, value, text.len() as u64])?;
        inj.raw(nr::CLOSE, &[fd as u64])?;
        w
    } else {
        fd
    };
    if wrote < 0 {
        eprintln!("phaul: warning: process {}: login uid {} not restored: {}", p.i64_of("pid").unwrap_or(0), want, Error::sys("write", (-wrote) as i32).message);
    }
    Ok(())
}

fn oom_score_adj(pid: Pid) -> i64 {
    std::fs::read_to_string(format!("/proc/{}/oom_score_adj", pid)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// The OOM killer's adjustment, written from here. Lowering it below the
/// stub's minimum needs CAP_SYS_RESOURCE, which phaul may lack: then the
/// process runs on with the stub's value and the agent log says so (an
/// OOM preference is no reason to fail a restore or a migration).
fn restore_oom_score_adj(pid: Pid, p: &Json) {
    let Some(want) = p.i64_of("oom_score_adj").filter(|v| (-1000..=1000).contains(v)) else { return };
    if oom_score_adj(pid) == want {
        return;
    }
    if let Err(e) = std::fs::write(format!("/proc/{}/oom_score_adj", pid), want.to_string()) {
        eprintln!("phaul: warning: process {}: oom_score_adj {} not restored: {}", p.i64_of("pid").unwrap_or(0), want, e);
    }
}

const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;

/// A working directory removed while in use ("PATH (deleted)") is made
/// again for the chdir and removed right after, so the process is back in
/// a deleted directory (empty: what it held is gone with it).
fn restore_cwd(inj: &mut Injector, cwd: &str) -> Result<()> {
    let path = cwd.strip_suffix(" (deleted)");
    let made = match path {
        Some(p) if std::fs::metadata(p).is_err() => {
            std::fs::create_dir(p).map_err(|e| Error::new("EFILE", format!("working directory {} (deleted) cannot be made again: {}", p, e)))?;
            Some(p)
        }
        _ => None,
    };
    let dir = path.unwrap_or(cwd);
    let a = inj.put_str(dir, 0)?;
    let r = inj.call(&format!("chdir {}", dir), nr::CHDIR, &[a]).map_err(|e| Error::new("EFILE", format!("working directory {} is missing: {}", cwd, e.message)));
    if let Some(p) = made {
        let _ = std::fs::remove_dir(p);
    }
    r.map(|_| ())
}

/// Let the stub hold descriptors up to `n` (the process's own limits come
/// later, with its other attributes): the soft RLIMIT_NOFILE is raised as
/// far as the hard one allows, from phaul, without an injected call.
/// Returns the soft limit now.
pub fn make_room_for_fds(inj: &Injector, n: u64) -> Result<u64> {
    const RLIMIT_NOFILE: u64 = 7;
    let mut cur = [0u64; 2];
    sys_prlimit(inj.pid, RLIMIT_NOFILE, None, Some(&mut cur))?;
    if cur[0] >= n {
        return Ok(cur[0]);
    }
    let want = [n.min(cur[1]), cur[1]];
    sys_prlimit(inj.pid, RLIMIT_NOFILE, Some(&want), None)?;
    Ok(want[0])
}

fn sys_prlimit(pid: Pid, res: u64, new: Option<&[u64; 2]>, old: Option<&mut [u64; 2]>) -> Result<()> {
    let n = new.map(|v| v.as_ptr() as u64).unwrap_or(0);
    let o = old.map(|v| v.as_mut_ptr() as u64).unwrap_or(0);
    crate::sys::call(&format!("prlimit(NOFILE) of {}", pid), nr::PRLIMIT64, &[pid as u64, res, n, o]).map(|_| ())
}

/// Root, cwd and umask (the kernel's fs_struct, which CLONE_FS shares),
/// injected into the stub.
/// `hosts`: image pid -> host pid, for a cwd under /proc/PID of the tree.
pub fn restore_fs(inj: &mut Injector, p: &Json, hosts: &std::collections::BTreeMap<Pid, Pid>) -> Result<()> {
    if let Some(root) = p.str_of("root") {
        if root != "/" {
            let a = inj.put_str(root, 0)?;
            inj.call(&format!("chroot {}", root), nr::CHROOT, &[a]).map_err(|e| Error::new("EFILE", e.message))?;
        }
    }
    if let Some(cwd) = p.str_of("cwd") {
        // A dead process's directory: entered under its helper (procpid.rs).
        let (cwd, named) = match crate::procpid::dead_entry(cwd) {
            Some((pid, path)) => (path, Some(pid)),
            None => (cwd, crate::procpid::parse(cwd).map(|e| e.pid)),
        };
        match named.and_then(|pid| hosts.get(&pid).map(|h| (pid, *h))) {
            Some((pid, host)) => restore_cwd(inj, &crate::procpid::on_host(cwd, pid, host))?,
            None => restore_cwd(inj, cwd)?,
        }
    }
    inj.call("umask", nr::UMASK, &[p.u64_of("umask").unwrap_or(0o22) & 0o777])?;
    Ok(())
}

/// oom_score_adj and rlimits, injected into the stub.
pub fn restore_attrs(inj: &mut Injector, p: &Json) -> Result<()> {
    restore_oom_score_adj(inj.pid, p);
    crate::cgroup::restore(inj.pid, p);
    // Only limits that differ from what the stub already has (one injected
    // call each, inside a migration's frozen window).
    let have = rlimits(inj.pid).unwrap_or_default();
    for r in p.arr_of("rlimits") {
        let res = r.u64_of("resource").unwrap_or(99);
        if res > 15 {
            continue;
        }
        let same = have.iter().any(|h| h.u64_of("resource") == Some(res) && h.u64_of("cur") == r.u64_of("cur") && h.u64_of("max") == r.u64_of("max"));
        if same {
            continue;
        }
        let mut b = Vec::new();
        b.extend_from_slice(&r.u64_of("cur").unwrap_or(u64::MAX).to_le_bytes());
        b.extend_from_slice(&r.u64_of("max").unwrap_or(u64::MAX).to_le_bytes());
        let a = inj.put(&b, 256)?;
        // Raising a hard limit needs CAP_SYS_RESOURCE, which some hosts withhold
        // even from root: then keep the stub's hard limit and set what we may.
        if inj.raw(nr::PRLIMIT64, &[0, res, a, 0])? < 0 {
            let old = inj.scratch(4096)? + 272;
            inj.call("prlimit(get)", nr::PRLIMIT64, &[0, res, 0, old])?;
            let cur_max = u64::from_le_bytes(inj.read_mem(old + 8, 8)?.try_into().unwrap_or([0; 8]));
            let mut b2 = Vec::new();
            b2.extend_from_slice(&r.u64_of("cur").unwrap_or(u64::MAX).min(cur_max).to_le_bytes());
            b2.extend_from_slice(&cur_max.to_le_bytes());
            let a2 = inj.put(&b2, 256)?;
            let _ = inj.raw(nr::PRLIMIT64, &[0, res, a2, 0])?;
        }
    }
    Ok(())
}

/// PR_SET_MM_MAP: the mm fields and the exe link in one call (the single-field
/// variants need CAP_SYS_RESOURCE). `exe_fd` is a descriptor in the stub.
pub fn restore_mm(inj: &mut Injector, mm: &Json, exe_fd: Option<u64>) -> Result<()> {
    let f = |k: &str| mm.u64_of(k).unwrap_or(0);
    let auxv: Vec<u64> = mm.arr_of("auxv").iter().filter_map(Json::as_u64).collect();
    let mut ab = Vec::new();
    for v in &auxv {
        ab.extend_from_slice(&v.to_le_bytes());
    }
    let auxv_addr = inj.put(&ab, 3072)?;
    let mut b = Vec::new();
    for k in ["start_code", "end_code", "start_data", "end_data", "start_brk", "brk", "start_stack", "arg_start", "arg_end", "env_start", "env_end"] {
        b.extend_from_slice(&f(k).to_le_bytes());
    }
    b.extend_from_slice(&auxv_addr.to_le_bytes());
    b.extend_from_slice(&(ab.len() as u32).to_le_bytes());
    b.extend_from_slice(&(exe_fd.map(|x| x as u32).unwrap_or(u32::MAX)).to_le_bytes());
    let a = inj.put(&b, 2048)?;
    let r = inj.raw(nr::PRCTL, &[PR_SET_MM, PR_SET_MM_MAP, a, b.len() as u64, 0])?;
    if r < 0 && exe_fd.is_some() {
        // The executable cannot be taken (written to by someone: ETXTBSY
        // shows as EACCES): the rest without it, and say so.
        eprintln!("phaul: warning: /proc/PID/exe not restored: {}", Error::sys("prctl(PR_SET_MM_MAP)", (-r) as i32).message);
        let n = b.len();
        b[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        inj.write_mem(a, &b)?;
        inj.call("prctl(PR_SET_MM_MAP)", nr::PRCTL, &[PR_SET_MM, PR_SET_MM_MAP, a, b.len() as u64, 0])?;
    } else if r < 0 {
        return Err(Error::sys("prctl(PR_SET_MM_MAP)", (-r) as i32));
    }
    Ok(())
}

/// Open the executable inside the stub for PR_SET_MM_MAP's exe_fd.
pub fn open_exe_in_stub(inj: &mut Injector, p: &Json) -> Result<Option<u64>> {
    let (path, removed) = match p.get("exe").and_then(|e| e.str_of("path")) {
        Some(x) if !x.is_empty() => (x.trim_end_matches(" (deleted)").to_string(), x.ends_with(" (deleted)")),
        _ => return Ok(None),
    };
    // Removed while running (an upgraded package): the file restored from
    // the image's copy of its mapped contents, if the process maps it.
    let path = match removed {
        true => match crate::anonfd::unlinked::object_path(&path) {
            Some(p) => p,
            None => {
                eprintln!("phaul: warning: process {}: its executable {} (deleted) is not mapped: /proc/PID/exe is not restored", p.i64_of("pid").unwrap_or(0), path);
                return Ok(None);
            }
        },
        false => path,
    };
    // The stub already runs this very executable (a Node.js program restored
    // by phaul's own node): keep it. Replacing it would fail with EBUSY, as
    // the kernel refuses to change exe while the old file is still mapped.
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(cur), Ok(want)) = (std::fs::metadata(format!("/proc/{}/exe", inj.pid)), std::fs::metadata(&path)) {
            if cur.dev() == want.dev() && cur.ino() == want.ino() {
                return Ok(None);
            }
        }
    }
    let a = inj.put_str(&path, 0)?;
    match inj.raw(nr::OPEN, &[a, 0o2000000, 0])? {
        r if r >= 0 => Ok(Some(r as u64)),
        r => Err(Error::new("EFILE", format!("executable {} cannot be opened: {}", path, std::io::Error::from_raw_os_error(-r as i32)))),
    }
}


/// prctl settings of the process that must come after the credentials
/// (a change of uid resets "dumpable").
pub fn late_prctl_calls(p: &Json) -> Vec<Call> {
    let mut calls = Vec::new();
    if let Some(d) = p.u64_of("dumpable").filter(|&d| d <= 1) {
        calls.push(Call::new("prctl(PR_SET_DUMPABLE)", nr::PRCTL, &[4, d]));
    }
    if p.bool_of("thp_disable") {
        calls.push(Call::new("prctl(PR_SET_THP_DISABLE)", nr::PRCTL, &[41, 1, 0, 0, 0]));
    }
    if p.bool_of("child_subreaper") {
        calls.push(Call::new("prctl(PR_SET_CHILD_SUBREAPER)", nr::PRCTL, &[36, 1]));
    }
    let membarrier = p.u64_of("membarrier").unwrap_or(0);
    for bit in MEMBARRIER_REGISTRATIONS.iter().filter(|&&b| membarrier & b != 0) {
        calls.push(Call::new(format!("membarrier(register {:#x})", bit), nr::MEMBARRIER, &[*bit, 0, 0]));
    }
    // Last: from here on the process may not map memory writable and
    // executable, and the restore maps nothing more.
    if let Some(flags) = p.u64_of("mdwe").filter(|&f| f != 0) {
        calls.push(Call::new("prctl(PR_SET_MDWE)", nr::PRCTL, &[PR_SET_MDWE, flags, 0, 0, 0]));
    }
    calls
}
