//! Freezing a whole process tree with PTRACE_SEIZE + PTRACE_INTERRUPT.
//!
//! Everything is seized before anything is read, and the walk repeats until
//! no new thread or child appears, so a tree that forks or spawns threads
//! while we freeze it is still caught whole.

use crate::arch::Regs;
use crate::proc;
use crate::ptrace;
use crate::sys::{Error, Pid, Result};
use std::collections::BTreeMap;

pub const SEIZE_OPTIONS: u64 = ptrace::O_TRACESYSGOOD;

pub struct FrozenThread {
    pub tid: Pid,
    /// Registers as seen at the stop (rax may hold -ERESTART*).
    pub regs: Regs,
    pub sigmask: u64,
}

pub struct FrozenProc {
    pub pid: Pid,
    pub ppid: Pid,
    pub threads: Vec<FrozenThread>,
    /// A zombie (exited, not yet reaped by its parent): its wait status.
    pub zombie: Option<i32>,
    /// Stopped by job control (SIGSTOP, SIGTSTP...) before we came: the signal.
    pub group_stop: Option<i32>,
}

pub struct Frozen {
    pub root: Pid,
    /// Tree order: parents before children.
    pub procs: Vec<FrozenProc>,
    released: bool,
}

fn ppid_of(pid: Pid) -> Pid {
    proc::stat(pid).map(|(_, f)| proc::stat_u64(&f, 4) as Pid).unwrap_or(0)
}

/// How long a thread may take to reach the stop. A thread stops within a
/// millisecond, one in an uninterruptible wait once the wait ends (a vfork
/// parent when its child leaves); one that never does (a system call that
/// faults on a page a userfaultfd handler must provide, the handler being
/// stopped already) must not hang the freeze.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

enum Waited {
    Exited,
    /// The stop reports SIGTRAP for our interrupt, the stopping signal when
    /// the thread was in a group stop already.
    Stopped(i32),
    TimedOut,
}

/// Wait until `tid` is in a ptrace stop we caused. Signal-delivery stops that
/// race with the interrupt are let through (the signal is delivered as it
/// would have been), and we keep waiting for the interrupt's stop.
fn wait_interrupted(tid: Pid, timeout: std::time::Duration) -> Result<Waited> {
    let t0 = std::time::Instant::now();
    let mut nap = 0u64;
    loop {
        let st = match ptrace::wait_nohang(tid)? {
            Some(st) => st,
            None if t0.elapsed() > timeout => return Ok(Waited::TimedOut),
            None => {
                if nap > 0 {
                    std::thread::sleep(std::time::Duration::from_micros(nap));
                }
                nap = (nap * 2).clamp(5, 1000);
                continue;
            }
        };
        if !ptrace::stopped(st) {
            return Ok(Waited::Exited);
        }
        let sig = ptrace::stop_sig(st);
        let ev = ptrace::event(st);
        if ev == ptrace::EVENT_STOP {
            return Ok(Waited::Stopped(sig));
        }
        if ev != 0 || sig == (libc_sigtrap() | 0x80) {
            ptrace::cont(tid, 0)?;
        } else {
            ptrace::cont(tid, sig)?;
        }
    }
}

fn is_zombie(pid: Pid) -> bool {
    proc::stat(pid).map(|(_, f)| f.first().map(|s| s == "Z").unwrap_or(false)).unwrap_or(false)
}

/// A zombie leader whose other threads run on (main called pthread_exit):
/// the process is alive, without the thread a restore makes first. Threads
/// on their way out of an exit_group do not count.
fn headless(pid: Pid) -> Option<usize> {
    const PF_EXITING: u64 = 0x4;
    let live = proc::tasks(pid)
        .ok()?
        .into_iter()
        .filter(|&t| t != pid)
        .filter(|&t| match proc::stat(t) {
            Ok((_, f)) => !matches!(f.first().map(String::as_str), Some("Z" | "X" | "x")) && proc::stat_u64(&f, 9) & PF_EXITING == 0,
            Err(_) => false,
        })
        .count();
    (live > 0).then_some(live)
}

const fn libc_sigtrap() -> i32 {
    5
}

/// Once the thread is stopped: suspend its seccomp filters, which our
/// injected syscalls must not meet. Not at the seize: the thread runs its
/// own code until the interrupt stops it, and must meet them then. Where
/// the kernel refuses the option, injection goes on unsuspended.
fn suspend_seccomp(tid: Pid) {
    let suspend = crate::seccomp::suspend_option();
    if suspend != 0 {
        let _ = ptrace::set_options(tid, SEIZE_OPTIONS | suspend);
    }
}

pub fn freeze_tree(root: Pid) -> Result<Frozen> {
    freeze(root, true)
}

/// The threads of one process only, e.g. to change its memory's
/// registration while none of them can change its layout.
pub fn freeze_process(pid: Pid) -> Result<Frozen> {
    freeze(pid, false)
}

fn freeze(root: Pid, children: bool) -> Result<Frozen> {
    let mut seized: BTreeMap<Pid, Vec<Pid>> = BTreeMap::new(); // pid -> tids
    let mut order: Vec<Pid> = Vec::new();
    let mut zombies: Vec<Pid> = Vec::new();
    let mut stopped: BTreeMap<Pid, i32> = BTreeMap::new();
    let mut frozen = Frozen { root, procs: Vec::new(), released: false };
    let mut stuck = None;
    let mut exiting = std::collections::BTreeSet::new();
    let res = (|| -> Result<()> {
        loop {
            let mut changed = false;
            let mut queue = vec![root];
            let mut walk = Vec::new();
            while let Some(p) = queue.pop() {
                walk.push(p);
                if children {
                    queue.extend(proc::children(p));
                }
            }
            for p in walk {
                if !zombies.contains(&p) && is_zombie(p) {
                    if let Some(n) = headless(p) {
                        return Err(Error::new("EUNSUPPORTED", format!("process {}: its main thread has exited while {} other threads run on; a process without its main thread is not supported", p, n)));
                    }
                }
                if p != root && !zombies.contains(&p) && is_zombie(p) {
                    zombies.push(p);
                    // Seized while it was exiting (its threads then ended
                    // instead of stopping): it is in the order already.
                    if !order.contains(&p) {
                        order.push(p);
                    }
                    changed = true;
                }
                if zombies.contains(&p) {
                    continue;
                }
                let tids = match proc::tasks(p) {
                    Ok(t) => t,
                    Err(_) if p != root => continue, // exited meanwhile
                    Err(e) => return Err(e),
                };
                // Every new thread is seized and interrupted first, then
                // waited for: the round trips of their stops overlap, and the
                // threads stop closer together.
                let mut interrupted = Vec::new();
                for t in tids {
                    let known = seized.get(&p).map(|v| v.contains(&t)).unwrap_or(false);
                    if known {
                        continue;
                    }
                    match ptrace::seize(t, SEIZE_OPTIONS) {
                        Ok(()) => {}
                        Err(e) if e.errno == 3 => continue, // ESRCH: gone
                        // EPERM also comes from a thread that has just
                        // exited (the kernel refuses a zombie): the next
                        // walk finds its process a zombie, or gone.
                        Err(e) if e.errno == 1 && proc::exited(t) => {
                            if exiting.insert(t) {
                                changed = true;
                            }
                            continue;
                        }
                        Err(e) if e.errno == 1 => {
                            return Err(Error::new("EPERM", format!("cannot trace thread {} of process {}: {} (is it traced by someone else?)", t, p, e.message)))
                        }
                        Err(e) => return Err(e),
                    }
                    if !seized.contains_key(&p) {
                        order.push(p);
                    }
                    seized.entry(p).or_default().push(t);
                    changed = true;
                    ptrace::interrupt(t)?;
                    interrupted.push(t);
                }
                for t in interrupted {
                    match wait_interrupted(t, STOP_TIMEOUT)? {
                        Waited::Exited => {
                            seized.get_mut(&p).map(|v| v.retain(|&x| x != t));
                        }
                        Waited::TimedOut => {
                            if let Some(v) = seized.get_mut(&p) {
                                v.retain(|&x| x != t);
                            }
                            stuck = Some(t);
                            return Err(not_stopping(p, t));
                        }
                        Waited::Stopped(sig) => {
                            suspend_seccomp(t);
                            if sig != libc_sigtrap() {
                                stopped.insert(p, sig);
                            }
                        }
                    }
                }
            }
            if !changed {
                break;
            }
        }
        Ok(())
    })();
    for p in &order {
        let tids = seized.get(p).cloned().unwrap_or_default();
        let mut threads = Vec::new();
        for t in tids {
            let regs = ptrace::get_regs(t);
            let mask = ptrace::get_sigmask(t);
            match (regs, mask) {
                // An io_uring worker (PF_IO_WORKER) is the kernel's: it stops
                // like a thread, but never runs the code injected into it (a
                // dump waited for it forever). Its user registers are empty,
                // so only a thread at address 0 costs a look at its flags.
                (Ok(regs), Ok(_)) if regs.pc() == 0 && proc::is_io_worker(t) => {
                    let _ = ptrace::detach(t, 0);
                }
                (Ok(regs), Ok(sigmask)) => threads.push(FrozenThread { tid: t, regs, sigmask }),
                _ => {
                    let _ = ptrace::detach(t, 0);
                }
            }
        }
        // Leader first, as proc::tasks orders it.
        threads.sort_by_key(|t| if t.tid == *p { 0 } else { t.tid });
        let zombie = zombies.contains(p).then(|| proc::stat(*p).map(|(_, f)| proc::stat_u64(&f, 52) as i32).unwrap_or(0));
        frozen.procs.push(FrozenProc { pid: *p, ppid: ppid_of(*p), threads, zombie, group_stop: stopped.get(p).copied() });
    }
    if let Err(e) = res {
        frozen.resume();
        if let Some(t) = stuck {
            // With the others running again its wait may end: it then stops
            // for our interrupt, and must be let go. (If it does not soon,
            // the interrupt is dropped when this process exits.)
            if let Ok(Waited::Stopped(_)) = wait_interrupted(t, std::time::Duration::from_millis(300)) {
                let _ = ptrace::detach(t, 0);
            }
        }
        return Err(e);
    }
    frozen.procs.retain(|p| !p.threads.is_empty() || p.zombie.is_some());
    if frozen.procs.first().map(|p| p.pid) != Some(root) {
        frozen.resume();
        return Err(Error::new("ESRCH", format!("process {} exited while being frozen", root)));
    }
    Ok(frozen)
}

fn not_stopping(pid: Pid, tid: Pid) -> Error {
    if let Some(fd) = crate::anonfd::userfaultfd::held_by(pid) {
        return Error::new(
            "EUNSUPPORTED",
            format!(
                "thread {} of process {} does not stop: it waits in the kernel for its userfaultfd (fd {}) handler, most likely a page fault in a system call (reading or writing a missing page) or an event not read yet; such a wait is not supported",
                tid, pid, fd
            ),
        );
    }
    let state = proc::stat(tid).ok().and_then(|(_, f)| f.first().cloned()).unwrap_or_default();
    let wchan = std::fs::read_to_string(format!("/proc/{}/task/{}/wchan", pid, tid)).unwrap_or_default();
    Error::new("EBUSY", format!("thread {} of process {} does not stop within {} s (state {}, waiting in {:?})", tid, pid, STOP_TIMEOUT.as_secs(), state, wchan))
}

impl Frozen {
    /// The processes that run (zombies have nothing to read but their status).
    pub fn live(&self) -> impl Iterator<Item = &FrozenProc> {
        self.procs.iter().filter(|p| p.zombie.is_none())
    }

    /// Let the tree run on exactly as it was: registers and masks are put back
    /// (with syscall restart applied, see arch::Regs::rewound) and ptrace is dropped.
    pub fn resume(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        // TCP connections put into repair mode by the dump must work again.
        crate::sockets::unrepair_all();
        for p in &self.procs {
            for t in &p.threads {
                let _ = ptrace::set_sigmask(t.tid, t.sigmask);
                let _ = ptrace::set_regs(t.tid, &t.regs.rewound(true));
                let _ = ptrace::detach(t.tid, 0);
            }
        }
    }

    /// Leave the tree stopped, untraced: each process gets a SIGSTOP queued
    /// and ptrace lets go, so it enters an ordinary group stop. Nothing runs
    /// and nothing is lost; `kill -CONT` or `kill -KILL` decides later.
    pub fn park(&mut self) {
        for p in self.live() {
            let _ = crate::sys::kill(p.pid, 19);
        }
        self.resume();
    }

    /// Kill every process of the tree (children first) while it is frozen,
    /// and reap the traced threads. A thread-group leader is reported only
    /// after its other threads are gone, so those are waited for first.
    pub fn kill(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        for p in self.procs.iter().rev() {
            let _ = crate::sys::kill(p.pid, 9);
        }
        for p in self.procs.iter().rev().filter(|p| p.zombie.is_none()) {
            for t in p.threads.iter().filter(|t| t.tid != p.pid) {
                ptrace::reap(t.tid, 2000);
            }
            ptrace::reap(p.pid, 2000);
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // A frozen tree must never be left behind: resume is the safe default.
        self.resume();
    }
}
