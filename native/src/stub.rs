//! Stub processes: the empty shells a restore fills in.
//!
//! A stub is created with the wanted pid (clone3 with set_tid), traced by the
//! session thread, and then emptied: every mapping but the vDSO group goes,
//! the vDSO group moves to the address the target had, and every descriptor
//! is closed. The root stub is made by a short-lived intermediate process so
//! that it is not phaul's child (it must outlive phaul).

use crate::batch::{self, Call, Job};
use crate::inject::{find_syscall_insn, Injector};
use crate::memory::{Kind, Vma, MAP_FIXED_NOREPLACE};
use crate::proc;
use crate::ptrace;
use crate::sys::{self, nr, Error, Pid, Result};

/// EXITKILL: if the engine dies, its stubs (and a restored tree held for a
/// commit) die with it instead of running half-made or as a second copy.
pub const STUB_OPTIONS: u64 = ptrace::O_TRACESYSGOOD | ptrace::O_TRACECLONE | ptrace::O_TRACEFORK | ptrace::O_TRACEVFORK | ptrace::O_EXITKILL;
const SIGCHLD: u64 = 17;

#[repr(C)]
#[derive(Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

impl CloneArgs {
    pub fn bytes(&self) -> Vec<u8> {
        let v = [self.flags, self.pidfd, self.child_tid, self.parent_tid, self.exit_signal, self.stack, self.stack_size, self.tls, self.set_tid, self.set_tid_size, self.cgroup];
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
}

fn pid_taken(pid: Pid) -> Error {
    Error::new("EPIDTAKEN", format!("pid {} is already in use on this host{}", pid, proc::why_taken(pid)))
}

/// After clone3 found `pid` taken (EEXIST) though no process has it: is it
/// worth trying again? Yes while the id is only held as a group or session
/// id by exited processes (orphans of the dumped tree that this host's init
/// has not reaped yet), or by nobody (just freed), for at most 5 s.
fn pid_frees_soon(pid: Pid, since: std::time::Instant) -> bool {
    if proc::exists(pid) || since.elapsed() > std::time::Duration::from_secs(5) {
        return false;
    }
    let soon = proc::group_ids_in_use().get(&pid).is_none_or(|h| h.dead);
    if soon {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    soon
}

/// clone3(args) from a short-lived intermediate process, so the new process
/// is not phaul's child. Returns the host pid of the new process, or the
/// errno clone3 failed with (as the intermediate's exit code).
fn clone_detached(args: &CloneArgs) -> Result<std::result::Result<Pid, i32>> {
    let args_ptr = args as *const CloneArgs as u64;
    let mut p = [0i32; 2];
    sys::call("pipe2", 293, &[p.as_mut_ptr() as u64, 0o2000000])?;
    let (r, w) = (sys::Fd(p[0]), sys::Fd(p[1]));
    // Only raw syscalls between fork and exit: the child is a copy of a
    // multi-threaded process and must not touch locks or the allocator.
    let mid = unsafe { sys::raw(nr::CLONE, &[SIGCHLD, 0, 0, 0, 0]) }.map_err(|e| Error::sys("fork", e))?;
    if mid == 0 {
        unsafe {
            match sys::raw(nr::CLONE3, &[args_ptr, std::mem::size_of::<CloneArgs>() as u64]) {
                Ok(0) => loop {
                    let _ = sys::raw(nr::PAUSE, &[]);
                },
                Ok(child) => {
                    let b = (child as i32).to_le_bytes();
                    let _ = sys::raw(nr::WRITE, &[w.raw() as u64, b.as_ptr() as u64, 4]);
                    let _ = sys::raw(nr::EXIT_GROUP, &[0]);
                }
                Err(e) => {
                    let _ = sys::raw(nr::EXIT_GROUP, &[(e as u64) & 0xff]);
                }
            }
            loop {
                let _ = sys::raw(nr::EXIT_GROUP, &[1]);
            }
        }
    }
    drop(w);
    let st = ptrace::wait(mid as Pid)?;
    let code = (st >> 8) & 0xff;
    if st & 0x7f != 0 || code != 0 {
        return Ok(Err(if st & 0x7f != 0 { 4 } else { code }));
    }
    let mut b = [0u8; 4];
    sys::call("read pid", nr::READ, &[r.raw() as u64, b.as_mut_ptr() as u64, 4])?;
    Ok(Ok(i32::from_le_bytes(b)))
}

/// Create a stub with pid `pid`, detached from phaul, and seize it.
pub fn spawn_detached(pid: Pid) -> Result<Pid> {
    if proc::exists(pid) {
        return Err(pid_taken(pid));
    }
    let tid_arr: [i32; 1] = [pid];
    let args = CloneArgs { exit_signal: SIGCHLD, set_tid: tid_arr.as_ptr() as u64, set_tid_size: 1, ..Default::default() };
    let t0 = std::time::Instant::now();
    let mut made = clone_detached(&args)?;
    while made == Err(17) && pid_frees_soon(pid, t0) {
        made = clone_detached(&args)?;
    }
    match made {
        Ok(_) => {}
        Err(17) => return Err(pid_taken(pid)), // EEXIST
        Err(1) => return Err(Error::new("EPERM", format!("not allowed to create a process with pid {} (needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)", pid))),
        Err(code) => return Err(Error::sys(format!("clone3 with pid {}", pid), code)),
    }
    seize_stub(pid)?;
    Ok(pid)
}

/// Create the init (pid 1) of a new pid namespace, detached from phaul, and
/// seize it. Processes restored under it keep their pids inside the namespace
/// even when those pids are taken on the host. Returns its host pid.
pub fn spawn_ns_init() -> Result<Pid> {
    let tid_arr: [i32; 1] = [1];
    const CLONE_NEWPID: u64 = 0x20000000;
    let args = CloneArgs { flags: CLONE_NEWPID, exit_signal: SIGCHLD, set_tid: tid_arr.as_ptr() as u64, set_tid_size: 1, ..Default::default() };
    let host = clone_detached(&args)?.map_err(|code| Error::sys("clone3 of a pid namespace init", code))?;
    seize_stub(host)?;
    Ok(host)
}

/// Turn an emptied stub into the namespace's init: a few instructions that
/// reap children until none is left, then exit (which ends the namespace).
pub fn become_init(inj: &mut Injector) -> Result<()> {
    let code = crate::arch::INIT_LOOP_CODE;
    let at = inj.call("mmap(init code)", nr::MMAP, &[0x1000_0000_0000, 4096, 5, 0x22, u64::MAX, 0])?;
    inj.write_mem(at, code)?;
    let name = inj.put_str("phaul-ns-init", 0)?;
    inj.call("prctl(PR_SET_NAME)", nr::PRCTL, &[15, name])?;
    let mut r = *inj.saved_regs();
    r.rip = at;
    r.orig_rax = u64::MAX;
    inj.set_saved_regs(r);
    Ok(())
}

pub fn seize_stub(pid: Pid) -> Result<()> {
    ptrace::seize(pid, STUB_OPTIONS)?;
    ptrace::interrupt(pid)?;
    let st = ptrace::wait(pid)?;
    if !ptrace::stopped(st) {
        return Err(Error::new("ESTUB", format!("stub {} died before it could be prepared", pid)));
    }
    Ok(())
}

/// Wait for the first stop of a thread or process born from an injected clone.
pub fn wait_new(tid: Pid) -> Result<()> {
    loop {
        let st = ptrace::wait(tid)?;
        if !ptrace::stopped(st) {
            return Err(Error::new("ESTUB", format!("new task {} died at birth", tid)));
        }
        if ptrace::event(st) == ptrace::EVENT_STOP || ptrace::stop_sig(st) == 19 {
            return Ok(());
        }
        ptrace::cont(tid, 0)?;
    }
}

fn vdso_group(vmas: &[Vma]) -> Vec<(Kind, u64, u64)> {
    vmas.iter().filter(|v| matches!(v.kind, Kind::Vdso | Kind::Vvar | Kind::VvarVclock)).map(|v| (v.kind.clone(), v.start, v.end)).collect()
}

/// An injector on a fresh stub, ready to build a process of layout `target`.
pub fn attach_injector(pid: Pid, target: &[Vma]) -> Result<Injector> {
    let insn = find_syscall_insn(pid)?;
    let regs = ptrace::get_regs(pid)?;
    let mask = ptrace::get_sigmask(pid)?;
    let mut inj = Injector::new(pid, pid, insn, regs.rewound(true), mask)?;
    inj.set_scratch_hint(crate::memory::free_spot(target, 1 << 20), MAP_FIXED_NOREPLACE);
    Ok(inj)
}

/// Empty the stub: unmap all but the vDSO group, move that group to where the
/// target had it, close every descriptor. `shared`: the clone flags it was
/// forked with; a descriptor table shared with an earlier stub is that
/// stub's (empty already, or holding what it needs).
pub fn empty(inj: &mut Injector, target: &[Vma], shared: u64) -> Result<()> {
    let pid = inj.pid;
    // The stub inherited phaul's rseq registration, whose area is about to be
    // unmapped: the kernel would answer the next return to user space with SIGSEGV.
    if let Ok((addr, len, sig)) = ptrace::get_rseq(pid) {
        if addr != 0 {
            const RSEQ_FLAG_UNREGISTER: u64 = 1;
            inj.call("rseq(unregister)", nr::RSEQ, &[addr, len as u64, RSEQ_FLAG_UNREGISTER, sig as u64])?;
        }
    }
    let mine = crate::memory::vmas(pid)?;
    // One munmap per gap between the areas kept: a stub forked from a
    // restored one inherits its whole layout (a shell: about a hundred
    // areas; one call each took 4-12 ms of a migration's frozen window).
    let scratch = inj.scratch_range();
    let kept = |v: &Vma| matches!(v.kind, Kind::Vdso | Kind::Vvar | Kind::VvarVclock | Kind::Vsyscall) || Some((v.start, v.end)) == scratch;
    let mut from = 0u64;
    for v in mine.iter().filter(|v| kept(v)).map(|v| (v.start, v.end)).chain(std::iter::once((crate::arch::USER_TOP, crate::arch::USER_TOP))) {
        let to = v.0.min(crate::arch::USER_TOP);
        if to > from {
            inj.call(&format!("munmap {:#x}-{:#x}", from, to), nr::MUNMAP, &[from, to - from])?;
        }
        from = from.max(v.1);
    }
    for v in mine.iter().filter(|v| !kept(v) && v.end > crate::arch::USER_TOP) {
        inj.call(&format!("munmap {:#x}", v.start), nr::MUNMAP, &[v.start, v.end - v.start])?;
    }
    if shared & crate::shares::CLONE_FILES == 0 {
        inj.call("close_range", nr::CLOSE_RANGE, &[0, u32::MAX as u64, 0])?;
    }
    let have = vdso_group(&mine);
    let want = vdso_group(target);
    if want.is_empty() || have.is_empty() {
        return Ok(());
    }
    let same_shape = have.len() == want.len()
        && have.iter().zip(&want).all(|(h, w)| h.0 == w.0 && h.2 - h.1 == w.2 - w.1 && h.1.wrapping_sub(have[0].1) == w.1.wrapping_sub(want[0].1));
    if !same_shape {
        return Err(Error::new("EVDSO", "the vDSO layout of this kernel differs from the dumped one (different kernel version)"));
    }
    let delta = want[0].1.wrapping_sub(have[0].1);
    if delta == 0 {
        return Ok(());
    }
    let span = have.last().map(|h| h.2).unwrap_or(0) - have[0].1;
    let overlap = have[0].1 < want[0].1 + span && want[0].1 < have[0].1 + span;
    let mut cur = have[0].1;
    let moves: Vec<u64> = if overlap { vec![crate::memory::free_spot(target, span + (1 << 20)) + (1 << 20), want[0].1] } else { vec![want[0].1] };
    for dest in moves {
        for (_, s, e) in &have {
            let from = cur + (s - have[0].1);
            let to = dest + (s - have[0].1);
            const MREMAP_MAYMOVE: u64 = 1;
            const MREMAP_FIXED: u64 = 2;
            inj.call("mremap vdso", nr::MREMAP, &[from, e - s, e - s, MREMAP_MAYMOVE | MREMAP_FIXED, to])?;
        }
        inj.shift_insn(dest.wrapping_sub(cur));
        cur = dest;
    }
    Ok(())
}

/// Fork a child stub with pid `pid` (in the stub's pid namespace) out of the
/// (empty) stub behind `inj`, with clone `flags` (what it shares with it;
/// CLONE_PARENT makes it a sibling). Returns the child's pid as phaul sees it.
pub fn fork_child(inj: &mut Injector, pid: Pid, flags: u64) -> Result<Pid> {
    // clone3 refuses an exit signal with CLONE_PARENT: the child gets the caller's.
    let exit_signal = if flags & crate::shares::CLONE_PARENT != 0 { 0 } else { SIGCHLD };
    fork_with(inj, Some(pid), flags, exit_signal).map(|(_, host)| host)
}

/// A child stub with pid `pid` (any free pid: None) that will die without
/// its parent hearing of it (no exit signal): a stand-in, reaped by
/// `reap_quiet_child`. Returns (its pid in the stub's namespace, its pid as
/// phaul sees it).
pub fn fork_quiet_child(inj: &mut Injector, pid: Option<Pid>) -> Result<(Pid, Pid)> {
    fork_with(inj, pid, 0, 0)
}

/// Kill a child made by `fork_quiet_child` (`host`: as phaul sees it) and
/// have its parent reap it, so that nothing of it is left when the parent runs.
pub fn reap_quiet_child(inj: &mut Injector, pid: Pid, host: Pid) -> Result<()> {
    sys::kill(host, 9)?;
    // Phaul, its tracer, hears of its end first; only then can the parent reap it.
    until_gone(host, 0)?;
    inj.call(&format!("wait4 for stand-in {}", pid), nr::WAIT4, &[pid as u64, 0, ptrace::WALL, 0])?;
    Ok(())
}

fn fork_with(inj: &mut Injector, pid: Option<Pid>, flags: u64, exit_signal: u64) -> Result<(Pid, Pid)> {
    let (set_tid, set_tid_size) = match pid {
        Some(pid) => (inj.put(&pid.to_le_bytes(), 3584)?, 1),
        None => (0, 0),
    };
    let args = CloneArgs { flags, exit_signal, set_tid, set_tid_size, ..Default::default() };
    let a = inj.put(&args.bytes(), 3456)?;
    let t0 = std::time::Instant::now();
    let mut r = inj.raw(nr::CLONE3, &[a, 88])?;
    while let (Some(pid), -17) = (pid, r) {
        if !pid_frees_soon(pid, t0) {
            return Err(pid_taken(pid));
        }
        r = inj.raw(nr::CLONE3, &[a, 88])?;
    }
    if r < 0 {
        let what = pid.map_or("clone3".to_string(), |p| format!("clone3 for pid {}", p));
        return Err(Error::sys(what, (-r) as i32));
    }
    let host = inj.new_children.pop().unwrap_or(r as Pid);
    wait_new(host)?;
    Ok((r as Pid, host))
}

/// Create threads `tids` in the stub (sharing everything a pthread
/// shares), in one batch of clone3 calls per batch table. Returns their
/// tids as phaul sees them. Thread `tids[i]`'s arguments go in batch slot
/// i + 1, free until that thread's own settings are written there.
pub fn clone_threads(inj: &mut Injector, tids: &[Pid]) -> Result<Vec<Pid>> {
    const FLAGS: u64 = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000; // VM FS FILES SIGHAND THREAD SYSVSEM
    let mut hosts = Vec::with_capacity(tids.len());
    for (c, chunk) in tids.chunks(batch::MAX_CALLS).enumerate() {
        let mut calls = Vec::with_capacity(chunk.len());
        for (i, &tid) in chunk.iter().enumerate() {
            let at = batch::data(inj, c * batch::MAX_CALLS + i + 1)?;
            inj.write_mem(at + 128, &tid.to_le_bytes())?;
            let args = CloneArgs { flags: FLAGS, set_tid: at + 128, set_tid_size: 1, ..Default::default() };
            inj.write_mem(at, &args.bytes())?;
            calls.push(Call::new(format!("clone3 for thread {}", tid), nr::CLONE3, &[at, 88]));
        }
        inj.new_children.clear();
        let res = batch::run(&mut [Job { inj: &mut *inj, slot: 0, calls }])?;
        let born = std::mem::take(&mut inj.new_children);
        for (&tid, &r) in chunk.iter().zip(&res[0]) {
            if r == -17 {
                return Err(Error::new("EPIDTAKEN", format!("thread id {} is already in use on this host", tid)));
            }
            if r < 0 {
                return Err(Error::sys(format!("clone3 for thread {}", tid), (-r) as i32));
            }
        }
        if born.len() != chunk.len() {
            return Err(Error::new("ESTUB", format!("{} threads were made, {} reported", chunk.len(), born.len())));
        }
        for &host in &born {
            wait_new(host)?;
        }
        hosts.extend(born);
    }
    Ok(hosts)
}

/// Kill stubs that will not become processes (restore failed).
pub fn discard(pids: &[Pid]) {
    for &p in pids.iter().rev() {
        let _ = sys::kill(p, 9);
    }
    for &p in pids.iter().rev() {
        ptrace::reap(p, 2000);
    }
}

/// Make a fresh child stub exit with wait status `status` and leave it a
/// zombie for its (stopped) parent to reap, as it was.
pub fn become_zombie(host: Pid, status: i32, comm: &str) -> Result<()> {
    {
        let regs = ptrace::get_regs(host)?;
        let mut inj = Injector::new(host, host, find_syscall_insn(host)?, regs, u64::MAX)?;
        let a = inj.put_str(comm, 0)?;
        inj.call("prctl(PR_SET_NAME)", nr::PRCTL, &[15, a])?;
        inj.finish()?;
    }
    let sig = status & 0x7f;
    if sig != 0 {
        // Killed by a signal: deliver that signal with its default action.
        sys::kill(host, sig)?;
        return until_gone(host, sig);
    }
    let insn = find_syscall_insn(host)?;
    let mut r = ptrace::get_regs(host)?;
    r.set_syscall(insn, nr::EXIT_GROUP, &[((status >> 8) & 0xff) as u64]);
    ptrace::set_regs(host, &r)?;
    ptrace::cont(host, 0)?;
    until_gone(host, 0)
}

/// Let traced `host` run until it has exited, passing signal `pass` on
/// (0: none) and letting every other stop go.
fn until_gone(host: Pid, pass: i32) -> Result<()> {
    loop {
        let st = ptrace::wait(host)?;
        if !ptrace::stopped(st) {
            return Ok(());
        }
        let s = ptrace::stop_sig(st);
        ptrace::cont(host, if pass != 0 && s == pass { pass } else { 0 })?;
    }
}
