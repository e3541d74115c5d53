//! Dumping a frozen tree into the state document and page files.

use crate::arch;
use crate::files::FileTable;
use crate::freeze::{self, Frozen};
use crate::inject::{find_syscall_insn_in, open_mem, Injector};
use crate::json::Json;
use crate::memory;
use crate::process;
use crate::shares;
use crate::ptrace;
use crate::signals;
use crate::sys::{self, Context, Error, Pid, Result, PAGE_SIZE};
use std::os::unix::fs::FileExt;
use crate::threads;
use std::fs::File;
use std::io::BufWriter;

pub struct DumpStats {
    pub pages: u64,
    pub bytes: u64,
}

/// Refuse targets we must never freeze, with one clear sentence each.
pub fn validate_target(pid: Pid) -> Result<()> {
    if pid <= 0 {
        return Err(Error::new("EINVAL", format!("pid {} is not valid", pid)));
    }
    if pid == sys::getpid() {
        return Err(Error::new("EINVAL", format!("pid {} is phaul itself", pid)));
    }
    if !crate::proc::exists(pid) {
        return Err(Error::new("ESRCH", format!("no process with pid {}", pid)));
    }
    if crate::proc::is_kernel_thread(pid) {
        return Err(Error::new("EINVAL", format!("pid {} is a kernel thread", pid)));
    }
    // A tree containing phaul would freeze the freezer.
    let mut p = sys::getpid();
    while p > 1 {
        if p == pid {
            return Err(Error::new("EINVAL", format!("pid {} is an ancestor of phaul itself", pid)));
        }
        p = crate::proc::stat(p).map(|(_, f)| crate::proc::stat_u64(&f, 4) as Pid).unwrap_or(0);
    }
    Ok(())
}

pub fn header(root: Pid) -> Json {
    let (xcr0, xsave_size) = arch::xsave_info();
    Json::obj()
        .with("format", 1u64)
        .with("arch", arch::ARCH)
        .with("kernel", std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim())
        .with("xcr0", format!("{:#x}", xcr0))
        .with("xsave_size", xsave_size)
        .with("root_pid", root)
        .with("created_ns", sys::now_ns())
}

/// Read everything but memory from one frozen process (injecting into its
/// threads), then its memory once the injections are over.
/// `dir`: where page files go; None when pages travel another way (migration).
/// VmFlags of each area (by start address) of each process, read before a
/// freeze: reading smaps walks every page table (16-24 ms for 1 GiB
/// resident), too slow for a migration's frozen window.
pub type VmFlags = std::collections::HashMap<Pid, std::collections::HashMap<u64, String>>;

pub fn dump_process(fz: &freeze::FrozenProc, files: &mut FileTable, dir: Option<&str>, stats: &mut DumpStats, flags: Option<&VmFlags>) -> Result<Json> {
    let pid = fz.pid;
    // Read once, before the injector maps anything of its own: the layout
    // as the process has it (proc::maps of 247 areas costs 0.2-0.3 ms, and
    // the dump needed it three times per process).
    let maps = crate::proc::maps(pid)?;
    let insn = find_syscall_insn_in(pid, &maps)?;
    let empty = std::collections::HashMap::new();
    let leader = &fz.threads[0];
    let locked_before = locked_kb(pid);
    let mut inj = Injector::new(pid, leader.tid, insn, leader.regs.rewound(true), leader.sigmask)?;
    crate::sys::trace_mark("dump: injector ready");
    let res = (|| -> Result<(Json, crate::anonfd::userfaultfd::Registrations)> {
        // One batch runs every injected read: the process-wide ones in the
        // leader, before its thread's, and every thread's at once.
        crate::batch::reserve(&mut inj, fz.threads.len())?;
        crate::sys::trace_mark("dump: batch area mapped");
        let mlockall = mlock_future(pid, locked_before, &inj);
        let d0 = crate::batch::data(&inj, 0)?;
        let (out, timers_at, sigs_at) = (d0 + 1024, d0 + 1088, d0 + 2048);
        let mut first = process::reads(out);
        let n_proc = first.len();
        let (sigs, sig_calls) = signals::sigaction_reads(pid, sigs_at);
        first.extend(sig_calls);
        first.extend(signals::itimer_reads(timers_at));
        let mut others = Vec::with_capacity(fz.threads.len() - 1);
        let mut made = Ok(());
        for t in &fz.threads[1..] {
            match Injector::new(pid, t.tid, insn, t.regs.rewound(true), t.sigmask) {
                Ok(mut ti) => {
                    ti.share_scratch(&inj);
                    others.push(ti);
                }
                Err(e) => {
                    made = Err(e);
                    break;
                }
            }
        }
        crate::sys::trace_mark("dump: thread injectors made");
        let ths = made.and_then(|_| threads::dump_threads(pid, &fz.threads, &mut inj, &mut others, first));
        let mut fin = Ok(());
        for ti in others {
            if let Err(e) = ti.finish() {
                fin = fin.and(Err(e));
            }
        }
        crate::sys::trace_mark("dump: thread injectors finished");
        let (ths, first_res) = ths?;
        fin?;
        let mut p = process::dump_process(pid, &inj, &first_res[..n_proc], out)?;
        if mlockall != 0 {
            p.set("mlockall", mlockall);
        }
        if let Some(sig) = fz.group_stop {
            p.set("stop_signal", sig);
        }
        crate::sys::trace_mark("dump: process and threads");
        p.set("sigactions", signals::sigactions_from(&inj, &sigs, sigs_at)?);
        p.set("itimers", signals::itimers_from(&inj, timers_at)?);
        for (k, v) in crate::anonfd::dump_process_extras(&mut inj, pid)? {
            p.set(k, v);
        }
        let rings = crate::aio::dump(&mut inj, &maps)?;
        if !rings.is_empty() {
            p.set("aio_rings", rings);
        }
        p.set("shared_pending", signals::siginfos_to_json(ptrace::peek_siginfo(leader.tid, true)?));
        p.set("threads", ths);
        crate::sys::trace_mark("dump: threads");
        let pidfd = sys::pidfd_open(pid)?;
        let fds = files.dump_fds(pid, &pidfd)?;
        // Before the injector goes: telling which userfaultfd is of this
        // memory takes a page mapped here (anonfd::userfaultfd::dump).
        let read_before = flags.map(|f| f.get(&pid).unwrap_or(&empty));
        let uffd = crate::anonfd::userfaultfd::dump(&mut inj, pid, &pidfd, &fds, files, read_before)?;
        p.set("fds", fds);
        Ok((p, uffd))
    })();
    let ours = inj.own_ranges();
    crate::sys::trace_mark("dump: fds");
    let fin = inj.finish();
    crate::sys::trace_mark("dump: injector finished");
    let (mut p, uffd) = res?;
    fin?;
    // VmFlags read again at the freeze for a process with a userfaultfd.
    let read_before = uffd.flags.as_ref().or_else(|| flags.map(|f| f.get(&pid).unwrap_or(&empty)));
    let mut vmas: Vec<memory::Vma> = memory::without_ranges(memory::vmas_with_flags(pid, &maps, read_before)?, &ours);
    for v in vmas.iter_mut().filter(|v| uffd.phauls.contains(&v.start)) {
        // Registered by phaul's own dirty tracking, not by the process.
        v.flags = crate::anonfd::userfaultfd::without_modes(&v.flags);
    }
    files.note_mapped_only(pid, &vmas)?;
    let with_uffd = |v: &memory::Vma| {
        let mut j = v.to_json();
        if let Some(a) = uffd.areas.get(&v.start) {
            j.set("uffd", a.clone());
        }
        j
    };
    p.set("vmas", vmas.iter().map(with_uffd).collect::<Vec<_>>());
    let dir = match dir {
        Some(d) => d,
        None => {
            p.set("pages", memory::runs_to_json("", &[]));
            return Ok(p);
        }
    };
    let pagemap = File::open(format!("/proc/{}/pagemap", pid)).ctx("opening pagemap")?;
    let mut pages = Vec::new();
    for v in vmas.iter().filter(|v| v.stores_pages()) {
        memory::present_pages(&pagemap, v, &mut pages)?;
    }
    // Shared memory also holds what other processes, maybe gone, put there.
    memory::add_pages(&mut pages, vmas.iter().flat_map(|v| crate::shmem::held_pages(pid, v)).collect());
    let runs = memory::runs_of(&pages);
    let name = format!("pages-{}.img", pid);
    let out = File::create(format!("{}/{}", dir, name)).ctx(format!("creating {}/{}", dir, name))?;
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let mem = open_mem(pid, false)?;
    let bytes = memory::copy_runs(&mem, &runs, &mut w)?;
    std::io::Write::flush(&mut w).ctx("writing the page file")?;
    stats.pages += pages.len() as u64;
    stats.bytes += bytes;
    p.set("pages", memory::runs_to_json(&name, &runs));
    Ok(p)
}

/// VmLck of /proc/PID/status, in kB (0 if it cannot be read).
fn locked_kb(pid: Pid) -> u64 {
    crate::proc::status_field(pid, "VmLck").ok().and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok())).unwrap_or(0)
}

/// mlockall(MCL_FUTURE) of the process (the mm's default flags, which no
/// file shows): the injector's own areas, mapped just now, were locked if
/// it is on. Then MCL_ONFAULT too when their last page was not made present.
/// Returns the mlockall flags to restore (0: none).
fn mlock_future(pid: Pid, locked_before: u64, inj: &Injector) -> u64 {
    const MCL_FUTURE: u64 = 2;
    const MCL_ONFAULT: u64 = 4;
    // Nothing locked at all: no MCL_FUTURE (whatever it maps would be).
    let locked = locked_kb(pid);
    let ours: u64 = inj.own_ranges().iter().map(|(a, b)| b - a).sum();
    if locked == 0 || ours == 0 || locked < locked_before + ours / 1024 {
        return 0;
    }
    let last = inj.own_ranges().iter().map(|&(_, b)| b - PAGE_SIZE).max().unwrap_or(0);
    let present = File::open(format!("/proc/{}/pagemap", pid)).ok().and_then(|pm| {
        let mut e = [0u8; 8];
        pm.read_exact_at(&mut e, (last / PAGE_SIZE) * 8).ok().map(|_| u64::from_le_bytes(e) >> 63 == 1)
    });
    if present == Some(false) {
        MCL_FUTURE | MCL_ONFAULT
    } else {
        MCL_FUTURE
    }
}

/// Freeze `root` and its descendants and dump them. The tree stays frozen
/// (the caller decides to kill or resume it); on error it is resumed.
pub fn dump(root: Pid, dir: &str) -> Result<(Frozen, Json, DumpStats)> {
    validate_target(root)?;
    std::fs::create_dir_all(dir).ctx(format!("creating {}", dir))?;
    let t0 = sys::monotonic();
    let frozen = freeze::freeze_tree(root)?;
    let frozen_at = t0.elapsed();
    let (mut state, stats) = dump_frozen(&frozen, Some(dir), None)?;
    state.set("freeze_us", frozen_at.as_micros() as u64);
    Ok((frozen, state, stats))
}

/// A zombie: only its place in the tree and its wait status survive.
fn zombie_json(pid: Pid, status: i32) -> Json {
    let (comm, st) = crate::proc::stat(pid).unwrap_or_default();
    Json::obj()
        .with("pid", pid)
        .with("comm", comm)
        .with("ppid", crate::proc::stat_u64(&st, 4))
        .with("pgid", crate::proc::stat_u64(&st, 5))
        .with("sid", crate::proc::stat_u64(&st, 6))
        .with("zombie", true)
        .with("exit_code", status as i64)
        .with("threads", Vec::<Json>::new())
        .with("vmas", Vec::<Json>::new())
        .with("fds", Vec::<Json>::new())
        .with("pages", memory::runs_to_json("", &[]))
}

/// SysV shared memory comes back as shared memory with the same contents,
/// shared by the same processes, but not as a SysV segment (the ids of the
/// IPC namespace are not carried over).
fn sysv_warnings(procs: &[Json]) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for p in procs {
        for v in p.arr_of("vmas") {
            let path = v.str_of("path").unwrap_or("");
            if path.starts_with("/SYSV") && seen.insert(v.u64_of("shmem_id").unwrap_or(0)) {
                out.push(format!(
                    "SysV shared memory segment {} (key 0x{}) is restored as plain shared memory: same contents and sharers, but shmctl and shmdt on it will fail",
                    v.u64_of("shmem_id").unwrap_or(0),
                    path.trim_start_matches("/SYSV").trim_end_matches(" (deleted)")
                ));
            }
        }
    }
    out
}

/// Namespaces other than pid and network (which phaul handles) are not
/// carried: a tree in one of its own is restored into phaul's, where its
/// paths, IPC keys, host name or ids may name other things. Said once per
/// kind, naming the first process found in one.
fn namespace_warnings(frozen: &Frozen) -> Vec<String> {
    const KINDS: [(&str, &str); 5] = [("mnt", "mount"), ("ipc", "IPC"), ("uts", "UTS (host name)"), ("user", "user"), ("cgroup", "cgroup")];
    let mut out = Vec::new();
    for (ns, what) in KINDS {
        let Ok(mine) = crate::proc::readlink(&format!("/proc/self/ns/{}", ns)) else { continue };
        let other = frozen.procs.iter().filter(|p| p.zombie.is_none()).find(|p| crate::proc::readlink(&format!("/proc/{}/ns/{}", p.pid, ns)).is_ok_and(|n| n != mine));
        if let Some(p) = other {
            out.push(format!("process {} runs in a {} namespace other than phaul's: it is not carried over, and the restore puts the tree in the restoring phaul's", p.pid, what));
        }
    }
    out
}

/// The state document of an already frozen tree.
/// `flags`: the areas' VmFlags read before the freeze; None reads them now.
pub fn dump_frozen(frozen: &Frozen, dir: Option<&str>, flags: Option<&VmFlags>) -> Result<(Json, DumpStats)> {
    dump_frozen_each(frozen, dir, flags, &mut |_| {})
}

/// `dump_frozen`, handing each process's entry to `each` as soon as it is
/// complete (a migration streams them while the next process is dumped).
pub fn dump_frozen_each(frozen: &Frozen, dir: Option<&str>, flags: Option<&VmFlags>, each: &mut dyn FnMut(&Json)) -> Result<(Json, DumpStats)> {
    memory::identities_memoized(|| dump_frozen_memoized(frozen, dir, flags, each))
}

fn dump_frozen_memoized(frozen: &Frozen, dir: Option<&str>, flags: Option<&VmFlags>, each: &mut dyn FnMut(&Json)) -> Result<(Json, DumpStats)> {
    let mut files = FileTable::new();
    files.tree = frozen.procs.iter().filter(|p| p.zombie.is_none()).map(|p| p.pid).collect();
    let mut stats = DumpStats { pages: 0, bytes: 0 };
    let mut procs = Vec::new();
    // First: what is refused here costs no dump.
    let shares = shares::dump(frozen)?;
    for fz in &frozen.procs {
        let p = match fz.zombie {
            Some(status) => zombie_json(fz.pid, status),
            None => {
                let mut p = dump_process(fz, &mut files, dir, &mut stats, flags).ctx(format!("process {}", fz.pid))?;
                if let Some(s) = shares.get(&fz.pid) {
                    p.set("shares", s.clone());
                }
                p
            }
        };
        each(&p);
        procs.push(p);
    }
    let pids: Vec<Pid> = frozen.procs.iter().map(|p| p.pid).collect();
    let (files, pipes, mut warnings) = files.finish(&pids)?;
    crate::anonfd::userfaultfd::check_in_flight(&files)?;
    warnings.extend(sysv_warnings(&procs));
    warnings.extend(namespace_warnings(frozen));
    let mut state = header(frozen.root);
    state.set("processes", procs).set("files", files).set("pipes", pipes);
    state.set("warnings", warnings.into_iter().map(Json::from).collect::<Vec<_>>());
    Ok((state, stats))
}
