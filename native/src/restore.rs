//! Restoring a tree from the state document: stubs with the right pids are
//! created and emptied, then each is filled (memory, files, signals,
//! attributes, threads) by injected syscalls, given its registers and let go.

use crate::files::{self, FdChannel};
use crate::inject::{open_mem, Injector};
use crate::json::Json;
use crate::memory::{self, Kind, Vma};
use crate::process;
use crate::ptrace;
use crate::signals;
use crate::stub;
use crate::sys::{self, nr, Context, Error, Pid, Result};
use crate::threads;
use std::fs::File;

pub struct RestoreStats {
    pub pages_bytes: u64,
}

fn pid_of(p: &Json) -> Result<Pid> {
    p.i64_of("pid").filter(|&x| x > 0 && x < (1 << 22)).map(|x| x as Pid).ok_or_else(|| Error::new("EIMAGE", "a process in the image has no valid pid"))
}

/// Everything that can be checked before any process is created.
pub fn preflight(state: &Json) -> Result<()> {
    match state.u64_of("format") {
        Some(1) => {}
        Some(v) => return Err(Error::new("EIMAGE", format!("image format {} is not supported (this phaul reads format 1)", v))),
        None => return Err(Error::new("EIMAGE", "the image has no format version")),
    }
    if state.str_of("arch") != Some(crate::arch::ARCH) {
        return Err(Error::new("EARCH", format!("the image is for {:?}, this host is {}", state.str_of("arch").unwrap_or("?"), crate::arch::ARCH)));
    }
    let procs = state.arr_of("processes");
    if procs.is_empty() {
        return Err(Error::new("EIMAGE", "the image holds no process"));
    }
    for p in procs {
        let pid = pid_of(p)?;
        for t in p.arr_of("threads") {
            let tid = t.i64_of("tid").unwrap_or(0) as Pid;
            if sys::kill(tid, 0).is_ok() || crate::proc::exists(tid) {
                return Err(Error::new("EPIDTAKEN", format!("pid {} is already in use on this host", tid)));
            }
        }
        if p.arr_of("threads").is_empty() {
            return Err(Error::new("EIMAGE", format!("process {} has no threads in the image", pid)));
        }
        if let Some(exe) = p.get("exe") {
            let path = exe.str_of("path").unwrap_or("").trim_end_matches(" (deleted)");
            if !path.is_empty() {
                files::check_file_identity(path, Some(exe))?;
            }
        }
        for v in p.arr_of("vmas") {
            let vma = Vma::from_json(v)?;
            if vma.kind == Kind::File {
                let path = vma.path.trim_end_matches(" (deleted)");
                files::check_file_identity(path, v.get("file"))?;
            }
        }
    }
    Ok(())
}

struct Built {
    pid: Pid,
    leader: Injector,
    vmas: Vec<Vma>,
}

pub fn restore(dir: &str, state: &Json) -> Result<(Pid, RestoreStats)> {
    preflight(state)?;
    let procs = state.arr_of("processes");
    let opened = files::open_all(state.arr_of("files"), state.arr_of("pipes"))?;
    let mut created: Vec<Pid> = Vec::new();
    let res = restore_inner(dir, procs, &opened, &mut created);
    match res {
        Ok(s) => Ok((pid_of(&procs[0])?, s)),
        Err(e) => {
            stub::discard(&created);
            Err(e)
        }
    }
}

fn restore_inner(dir: &str, procs: &[Json], opened: &files::Opened, created: &mut Vec<Pid>) -> Result<RestoreStats> {
    // 1. Stubs with the right pids, each forked from its (still empty) parent.
    let mut built: Vec<Built> = Vec::new();
    for p in procs {
        let pid = pid_of(p)?;
        let vmas = p.arr_of("vmas").iter().map(Vma::from_json).collect::<Result<Vec<_>>>()?;
        let ppid = p.i64_of("ppid").unwrap_or(0) as Pid;
        let first = built.is_empty();
        match built.iter_mut().find(|b| b.pid == ppid) {
            Some(parent) if !first => {
                stub::fork_child(&mut parent.leader, pid)?;
            }
            _ => {
                if !first {
                    return Err(Error::new("EIMAGE", format!("process {} is not a child of any process in the image", pid)));
                }
                stub::spawn_detached(pid)?;
            }
        }
        created.push(pid);
        let mut inj = stub::attach_injector(pid, &vmas)?;
        stub::empty(&mut inj, &vmas)?;
        restore_session(&mut inj, p, pid)?;
        built.push(Built { pid, leader: inj, vmas });
    }
    // 2. Fill each process.
    let mut stats = RestoreStats { pages_bytes: 0 };
    let mut all_threads: Vec<(Pid, Injector, Json)> = Vec::new();
    for (p, b) in procs.iter().zip(built.iter_mut()) {
        stats.pages_bytes += build_process(dir, p, b, opened).map_err(|e| e.context(format!("restoring process {}", b.pid)))?;
    }
    // 3. Threads, per-thread settings, then registers; nothing runs before all is set.
    let mut leaders = Vec::new();
    for (p, b) in procs.iter().zip(built.into_iter()) {
        let mut leader = b.leader;
        let ths = p.arr_of("threads");
        for t in &ths[1..] {
            let tid = t.i64_of("tid").unwrap_or(0) as Pid;
            stub::clone_thread(&mut leader, tid)?;
            created.push(tid);
            let regs = ptrace::get_regs(tid)?;
            let mut ti = Injector::new(b.pid, tid, leader.insn(), regs, u64::MAX)?;
            ti.share_scratch(&leader);
            threads::restore_thread_settings(b.pid, t, &mut ti)?;
            all_threads.push((tid, ti, t.clone()));
        }
        threads::restore_thread_settings(b.pid, &ths[0], &mut leader)?;
        signals::requeue(&mut leader, b.pid, None, p.arr_of("shared_pending"))?;
        leaders.push((b.pid, leader, ths[0].clone()));
    }
    // Leaders last: they own the scratch areas the others borrowed.
    all_threads.extend(leaders);
    let mut finals = Vec::new();
    for (tid, inj, t) in all_threads {
        inj.finish()?;
        finals.push((tid, threads::final_state(&t)?));
    }
    for (tid, (regs, xsave, mask)) in &finals {
        threads::apply_final_state(*tid, regs, xsave, *mask)?;
    }
    for (tid, _) in finals.iter().rev() {
        ptrace::detach(*tid, 0)?;
    }
    Ok(stats)
}

fn build_process(dir: &str, p: &Json, b: &mut Built, opened: &files::Opened) -> Result<u64> {
    let inj = &mut b.leader;
    // Memory: map every area, then write the stored pages through /proc/PID/mem.
    for v in b.vmas.iter().filter(|v| !v.kind.is_special()) {
        memory::map_vma(inj, v)?;
    }
    let pages = p.get("pages").ok_or_else(|| Error::new("EIMAGE", format!("process {} has no page index", b.pid)))?;
    let runs = memory::runs_from_json(pages)?;
    let name = pages.str_of("file").unwrap_or("");
    if name.contains('/') || name.is_empty() {
        return Err(Error::new("EIMAGE", "the page file name in the image is not valid"));
    }
    let pf = File::open(format!("{}/{}", dir, name)).map_err(|_| Error::new("EIMAGE", format!("page file {} is missing", name)))?;
    let mem = open_mem(b.pid, true)?;
    let bytes = memory::fill_from_file(&mem, &pf, &runs)?;
    // Files.
    let fds = p.arr_of("fds");
    let park = fds.iter().filter_map(|f| f.u64_of("fd")).max().map(|m| m + 1).unwrap_or(0).max(100);
    let pidfd = sys::pidfd_open(b.pid)?;
    let chan = FdChannel::open(inj, &pidfd, park)?;
    for f in fds {
        let id = f.u64_of("file_id").unwrap_or(0);
        let fd = f.i64_of("fd").filter(|&x| x >= 0 && x < (1 << 20)).ok_or_else(|| Error::new("EIMAGE", "a descriptor number in the image is not valid"))?;
        let obj = opened.by_id.get(&id).ok_or_else(|| Error::new("EIMAGE", format!("fd {} refers to a file missing from the image", fd)))?;
        chan.install(inj, obj, fd as i32, f.bool_of("cloexec")).ctx(format!("installing fd {}", fd))?;
    }
    chan.close(inj)?;
    // Process attributes, signals, mm fields and exe.
    process::restore_attrs(inj, p)?;
    signals::restore_sigactions(inj, p.arr_of("sigactions"))?;
    signals::restore_itimers(inj, p.arr_of("itimers"))?;
    let exe_fd = process::open_exe_in_stub(inj, p)?;
    if let Some(mm) = p.get("mm") {
        let r = process::restore_mm(inj, mm, exe_fd);
        if let Some(fd) = exe_fd {
            inj.call("close", nr::CLOSE, &[fd])?;
        }
        r?;
    }
    Ok(bytes)
}

/// Session and process group, set while the stub is empty so that children
/// forked from it afterwards inherit them.
fn restore_session(inj: &mut Injector, p: &Json, pid: Pid) -> Result<()> {
    let sid = p.i64_of("sid").unwrap_or(0) as Pid;
    let pgid = p.i64_of("pgid").unwrap_or(0) as Pid;
    let my_sid = inj.call("getsid", nr::GETSID, &[0])? as Pid;
    if sid == pid || (my_sid != sid && !crate::proc::exists(sid)) {
        // Its own session, or one whose leader is not here: then a session of
        // its own rather than phaul's (which ends with phaul's terminal).
        inj.call("setsid", nr::SETSID, &[])?;
    }
    if pgid != sid || pgid == pid {
        if pgid == pid {
            let _ = inj.raw(nr::SETPGID, &[0, 0])?;
        } else if crate::proc::exists(pgid) {
            let _ = inj.raw(nr::SETPGID, &[0, pgid as u64])?;
        }
    }
    Ok(())
}
