//! Restoring a tree: stubs with the right pids are created and emptied, their
//! address spaces are laid out and filled (from page files, or from a page
//! stream during migration), then each is finished (files, signals,
//! attributes, threads) by injected syscalls, given its registers and let go.

use crate::files::{self, FdChannel};
use crate::inject::{open_mem, Injector};
use crate::json::Json;
use crate::memory::{self, Kind, Vma};
use crate::process;
use crate::ptrace;
use crate::shares;
use crate::signals;
use crate::stub;
use crate::sys::{nr, Context, Error, Pid, Result, PAGE_SIZE};
use crate::threads;
use std::fs::File;
use std::os::unix::fs::FileExt;

pub fn pid_of(p: &Json) -> Result<Pid> {
    p.i64_of("pid").filter(|&x| x > 0 && x < (1 << 22)).map(|x| x as Pid).ok_or_else(|| Error::new("EIMAGE", "a process in the image has no valid pid"))
}

fn tids_of(p: &Json) -> Vec<Pid> {
    // A zombie has no threads in its image but its pid is made again; until
    // then the dumped zombie (an orphan now, reaped slowly by this host's
    // init) also holds its group and session ids, often the root's pid.
    if is_zombie(p) {
        return p.i64_of("pid").map(|t| vec![t as Pid]).unwrap_or_default();
    }
    let from_threads: Vec<Pid> = p.arr_of("threads").iter().filter_map(|t| t.i64_of("tid")).map(|t| t as Pid).collect();
    if from_threads.is_empty() {
        p.arr_of("tids").iter().filter_map(Json::as_i64).map(|t| t as Pid).collect()
    } else {
        from_threads
    }
}

pub fn is_zombie(p: &Json) -> bool {
    p.bool_of("zombie")
}

/// The processes that run, in tree order (zombies are only re-created).
pub fn live_procs(procs: &[Json]) -> Vec<&Json> {
    // Not cloned: a tree's state is large (postgres, 7 processes: 0.5 MB of
    // JSON, 6 ms to copy in the frozen window).
    procs.iter().filter(|p| !is_zombie(p)).collect()
}

pub fn vmas_of(p: &Json) -> Result<Vec<Vma>> {
    p.arr_of("vmas").iter().map(Vma::from_json).collect()
}

/// Is any of these pids taken on this host? (Then only a new pid namespace can host them.)
/// A pid held by a dead process that only waits to be reaped (the dumped tree
/// itself, just killed: this host's init reaps orphans slowly) is waited for.
/// A pid is also taken while it is some process's group or session id (a
/// daemon left in the session the dumped root led).
pub fn any_pid_taken(procs: &[Json]) -> Option<Pid> {
    let t0 = std::time::Instant::now();
    loop {
        let tids = || procs.iter().flat_map(tids_of);
        let (taken, dying) = match tids().find(|&t| crate::proc::exists(t)) {
            Some(t) => (t, crate::proc::exited(t)),
            None => {
                let ids = crate::proc::group_ids_in_use();
                let (t, h) = tids().find_map(|t| ids.get(&t).map(|h| (t, h)))?;
                (t, h.dead)
            }
        };
        if !dying || t0.elapsed() > std::time::Duration::from_secs(5) {
            return Some(taken);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Everything that can be checked before any process is created.
pub fn preflight(state: &Json, pid_ns: bool) -> Result<()> {
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
    if !pid_ns {
        if let Some(t) = any_pid_taken(procs) {
            return Err(Error::new("EPIDTAKEN", format!("pid {} is already in use on this host{} (restore into a new pid namespace with --pid-ns)", t, crate::proc::why_taken(t))));
        }
    }
    // Files and directories opened by path must be there (a removed
    // directory is made again; entries under /proc come from the tree).
    for f in state.arr_of("files") {
        let path = f.str_of("path").unwrap_or("");
        // A file removed under its name, linked under another: by its handle.
        if f.str_of("kind") == Some("reg") && f.get("handle").is_some() {
            crate::files::open_by_handle(f, path, crate::sys::O_PATH)?;
            continue;
        }
        if matches!(f.str_of("kind"), Some("reg" | "dir" | "chr")) && f.get("proc_pid").is_none() && !path.ends_with(" (deleted)") && std::fs::symlink_metadata(path).is_err() {
            let what = match f.str_of("kind") {
                Some("dir") => "directory",
                Some("chr") => "device",
                _ => "file",
            };
            return Err(Error::new("EFILE", format!("{} {} needed by the process is missing", what, path)));
        }
    }
    // A library is mapped several times by every process: each (path,
    // identity) is checked once.
    let mut checked: std::collections::HashSet<(&str, Option<u64>, Option<u64>)> = std::collections::HashSet::new();
    for p in procs.iter().filter(|p| !is_zombie(p)) {
        let pid = pid_of(p)?;
        if p.arr_of("threads").is_empty() {
            return Err(Error::new("EIMAGE", format!("process {} has no threads in the image", pid)));
        }
        // A removed executable, and areas of removed files, come back from
        // the contents in the image (anonfd/unlinked.rs), not from a path.
        if let Some(exe) = p.get("exe") {
            let path = exe.str_of("path").unwrap_or("");
            if !path.is_empty() && !path.ends_with(" (deleted)") {
                files::check_file_identity(path, Some(exe))?;
            }
        }
        // (The areas themselves are checked where they are read, before
        // they are applied: vmas_of.)
        for v in p.arr_of("vmas").iter().filter(|v| v.str_of("kind") == Some(Kind::File.name()) && !v.str_of("path").unwrap_or("").ends_with(" (deleted)")) {
            let path = v.str_of("path").unwrap_or("");
            let id = v.get("file");
            if checked.insert((path, id.and_then(|i| i.u64_of("size")), id.and_then(|i| i.u64_of("mtime_ns")))) {
                files::check_file_identity(path.trim_end_matches(" (deleted)"), id)?;
            }
        }
    }
    Ok(())
}

pub struct Stub {
    /// The pid the process has (in its own pid namespace).
    pub pid: Pid,
    /// The same process as phaul sees it (differs inside a new pid namespace).
    pub host: Pid,
    pub leader: Injector,
    /// Areas currently mapped in the stub.
    pub mapped: Vec<Vma>,
    /// The objects it shares with an earlier stub (CLONE_FILES, CLONE_FS),
    /// which that stub fills.
    pub shared: u64,
    /// Private areas of removed files mapped anonymous while the object
    /// they come from does not exist yet (a migration's pre-copy).
    pub placeholders: Vec<(u64, u64)>,
    /// Ranges of them that pages were written to.
    pub placeholder_pages: Vec<(u64, u64)>,
}

impl Stub {
    /// Pages `[addr, addr + len)` arrive: note what of them falls in a placeholder.
    pub fn note_placeholder_pages(&mut self, addr: u64, len: u64) {
        for &(s, e) in &self.placeholders {
            let (a, b) = (addr.max(s), (addr + len).min(e));
            if a < b {
                self.placeholder_pages.push((a, b));
            }
        }
    }
}

/// The pages the placeholders got, read out before the areas are mapped from
/// their objects: (address, bytes).
pub fn save_placeholder_pages(s: &mut Stub) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut ranges = std::mem::take(&mut s.placeholder_pages);
    s.placeholders.clear();
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(l) if a <= l.1 => l.1 = l.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let mem = open_mem(s.host, false)?;
    merged
        .into_iter()
        .map(|(a, b)| {
            let mut buf = vec![0u8; (b - a) as usize];
            std::os::unix::fs::FileExt::read_exact_at(&mem, &mut buf, a).map_err(|e| Error::new("EIO", format!("process {}: reading pages at {:#x}: {}", s.pid, a, e)))?;
            Ok((a, buf))
        })
        .collect()
}

/// Write the saved pages over the areas now mapped from their objects
/// (private: the pages become the process's own copies, as on the source).
pub fn put_back_placeholder_pages(s: &Stub, saved: Vec<(u64, Vec<u8>)>) -> Result<()> {
    if saved.is_empty() {
        return Ok(());
    }
    let mem = open_mem(s.host, true)?;
    for (a, buf) in saved {
        std::os::unix::fs::FileExt::write_all_at(&mem, &buf, a).map_err(|e| Error::new("EIO", format!("process {}: writing pages at {:#x}: {}", s.pid, a, e)))?;
    }
    Ok(())
}

pub struct Tree {
    pub stubs: Vec<Stub>,
    /// Host pids of everything created, for discarding on failure.
    pub created: Vec<Pid>,
    pub init: Option<Injector>,
    pub pid_ns: bool,
    /// Fully restored threads kept stopped until `release` (two-phase commit).
    pub held: Vec<Pid>,
    /// (pid, host pid) of every process made, zombies included.
    pub hosts: Vec<(Pid, Pid)>,
}

impl Tree {
    pub fn discard(&mut self) {
        stub::discard(&self.created);
        self.created.clear();
        self.stubs.clear();
        self.init = None;
    }
    pub fn stub_mut(&mut self, pid: Pid) -> Option<&mut Stub> {
        self.stubs.iter_mut().find(|s| s.pid == pid)
    }
    fn in_tree(&self, pid: Pid) -> bool {
        self.stubs.iter().any(|s| s.pid == pid)
    }
    /// Image pid -> host pid, for entries under /proc.
    pub fn host_map(&self) -> std::collections::BTreeMap<Pid, Pid> {
        self.hosts.iter().copied().collect()
    }
}

/// Create an empty stub for every process (tree order, parents first), each
/// forked from its parent's stub. `procs` need pid, ppid, pgid, sid, vmas.
/// `opened`: the restored files when already known (not so when a migration
/// prepares its stubs), so that a session leader takes its controlling
/// terminal before the members of its session are forked from it.
pub fn create_stubs(procs: &[Json], pid_ns: bool, opened: Option<&files::Opened>) -> Result<Tree> {
    let mut tree = Tree { stubs: Vec::new(), created: Vec::new(), init: None, pid_ns, held: Vec::new(), hosts: Vec::new() };
    match create_stubs_inner(procs, &mut tree, opened) {
        Ok(()) => Ok(tree),
        Err(e) => {
            tree.discard();
            Err(e)
        }
    }
}

fn create_stubs_inner(procs: &[Json], tree: &mut Tree, opened: Option<&files::Opened>) -> Result<()> {
    let forks = shares::plan(procs)?;
    if tree.pid_ns && tree.init.is_none() {
        let host = stub::spawn_ns_init()?;
        tree.created.push(host);
        let mut inj = stub::attach_injector(host, &[])?;
        stub::empty(&mut inj, &[], 0)?;
        stub::become_init(&mut inj)?;
        tree.init = Some(inj);
    }
    for (i, p) in procs.iter().enumerate() {
        let pid = pid_of(p)?;
        if tree.hosts.iter().any(|h| h.0 == pid) {
            continue; // made before (reshape)
        }
        let ppid = p.i64_of("ppid").unwrap_or(0) as Pid;
        if is_zombie(p) {
            let parent = tree.stubs.iter_mut().find(|b| b.pid == ppid);
            let parent = parent.ok_or_else(|| Error::new("EIMAGE", format!("zombie {} has no parent in the image", pid)))?;
            let host = stub::fork_child(&mut parent.leader, pid, 0)?;
            tree.created.push(host);
            tree.hosts.push((pid, host));
            stub::become_zombie(host, p.i64_of("exit_code").unwrap_or(0) as i32, p.str_of("comm").unwrap_or(""))?;
            continue;
        }
        let vmas = vmas_of(p)?;
        let (host, flags) = match forks[i] {
            None => match tree.init.as_mut() {
                Some(init) => (stub::fork_child(init, pid, 0)?, 0),
                None => (stub::spawn_detached(pid)?, 0),
            },
            Some(f) => {
                // The parent, or a sibling holding what the process shares.
                let from = tree.stubs.iter_mut().find(|b| b.pid == f.from);
                let from = from.ok_or_else(|| Error::new("EIMAGE", format!("process {} is not a child of any process in the image", pid)))?;
                (stub::fork_child(&mut from.leader, pid, f.flags)?, f.flags)
            }
        };
        tree.created.push(host);
        tree.hosts.push((pid, host));
        let mut inj = stub::attach_injector(host, &vmas)?;
        stub::empty(&mut inj, &vmas, flags)?;
        restore_session(&mut inj, p, pid, tree)?;
        if let Some(o) = opened {
            crate::tty::claim_ctty(&mut inj, p, pid, &o.ptys)?;
        }
        tree.stubs.push(Stub { pid, host, leader: inj, mapped: Vec::new(), shared: flags & !shares::CLONE_PARENT, placeholders: Vec::new(), placeholder_pages: Vec::new() });
    }
    Ok(())
}

/// Make the prepared tree the final one, for a migration whose tree
/// changed during pre-copy (stream::TREE): drop the stubs of the processes
/// in `gone`, children first, each reaped by its parent's stub as its
/// parent reaped it; make stubs for the processes of `procs` not made yet;
/// order the stubs as `procs`.
pub fn reshape(tree: &mut Tree, gone: &[Pid], procs: &[Json]) -> Result<()> {
    let mut doomed: Vec<(Pid, Pid)> = tree.hosts.iter().copied().filter(|(p, _)| gone.contains(p)).collect();
    doomed.reverse();
    for (pid, host) in doomed {
        drop_stub(tree, pid, host).map_err(|e| e.context(format!("dropping the stub of process {}, gone during pre-copy", pid)))?;
    }
    create_stubs_inner(procs, tree, None)?;
    let mut stubs = std::mem::take(&mut tree.stubs);
    for p in procs.iter().filter(|p| !is_zombie(p)) {
        let pid = pid_of(p)?;
        let i = stubs.iter().position(|s| s.pid == pid).ok_or_else(|| Error::new("EPROTO", format!("page stream: no stub for process {} of the final tree", pid)))?;
        tree.stubs.push(stubs.remove(i));
    }
    if let Some(s) = stubs.first() {
        return Err(Error::new("EPROTO", format!("page stream: process {} is neither in the final tree nor gone", s.pid)));
    }
    Ok(())
}

fn drop_stub(tree: &mut Tree, pid: Pid, host: Pid) -> Result<()> {
    let parent = crate::proc::status_field(host, "PPid").ok().and_then(|v| v.trim().parse::<Pid>().ok());
    if tree.stubs.iter().any(|s| s.pid == pid) {
        crate::sys::kill(host, 9)?;
        ptrace::reap(host, 2000);
    }
    tree.stubs.retain(|s| s.pid != pid);
    tree.created.retain(|&h| h != host);
    tree.hosts.retain(|h| h.0 != pid);
    // Its parent reaps it (the process had none to wait for any more), and
    // the SIGCHLD that came with it is taken back.
    if let Some(p) = tree.stubs.iter_mut().find(|s| Some(s.host) == parent) {
        let inj = &mut p.leader;
        for _ in 0..200 {
            match inj.raw(nr::WAIT4, &[pid as u64, 0, 1 | 0x4000_0000, 0])? {
                0 => std::thread::sleep(std::time::Duration::from_millis(1)),
                _ => break,
            }
        }
        let set = inj.put(&(1u64 << 16).to_le_bytes(), 1024)?;
        let zero = inj.put(&[0u8; 16], 1040)?;
        let _ = inj.raw(nr::RT_SIGTIMEDWAIT, &[set, 0, zero, 8])?;
    }
    Ok(())
}

/// Session and process group, set while the stub is empty so that children
/// forked from it afterwards inherit them.
fn restore_session(inj: &mut Injector, p: &Json, pid: Pid, tree: &Tree) -> Result<()> {
    let sid = p.i64_of("sid").unwrap_or(0) as Pid;
    let pgid = p.i64_of("pgid").unwrap_or(0) as Pid;
    let my_sid = inj.call("getsid", nr::GETSID, &[0])? as Pid;
    if sid == pid || (my_sid != sid && !tree.in_tree(sid)) {
        // Its own session, or one whose leader is not here: then a session of
        // its own rather than phaul's (which ends with phaul's terminal).
        inj.call("setsid", nr::SETSID, &[])?;
    }
    if pgid == pid {
        let _ = inj.raw(nr::SETPGID, &[0, 0])?;
    } else if tree.in_tree(pgid) {
        let _ = inj.raw(nr::SETPGID, &[0, pgid as u64])?;
    }
    Ok(())
}

fn anon_class(k: &Kind) -> u8 {
    match k {
        Kind::Anon | Kind::Heap | Kind::Stack => 0,
        Kind::File => 1,
        Kind::Shmem => 2,
        _ => 3,
    }
}

/// Can the contents of `old` serve as part of `new`?
fn compatible(old: &Vma, new: &Vma) -> bool {
    anon_class(&old.kind) == anon_class(&new.kind)
        && anon_class(&new.kind) < 3
        && old.shared == new.shared
        && old.path == new.path
        && (new.kind != Kind::File || old.pgoff.wrapping_add(new.start.wrapping_sub(old.start)) == new.pgoff)
}

/// Bring the stub's mappings to `want`, keeping the contents of every page
/// that stays mapped compatibly (an mprotect split, a grown heap), so a
/// page stream only needs to send the new parts. With `keep`, contents are
/// kept only inside those ranges (the source's tracker vouches for them);
/// elsewhere the area is mapped anew, as the source's was (unmapped and
/// mapped again at the same addresses, say).
pub fn apply_layout(s: &mut Stub, want: &[Vma], keep: Option<&[(u64, u64)]>) -> Result<()> {
    let inj = &mut s.leader;
    let want: Vec<&Vma> = want.iter().filter(|v| !v.kind.is_special()).collect();
    // Every lookup below is a binary search over sorted, disjoint areas:
    // a process with thousands of areas (4000 here took 5 s a round when
    // each area was compared with every other).
    s.mapped.sort_unstable_by_key(|v| v.start);
    let mut kept: Vec<(u64, u64)> = Vec::new();
    let mut fresh: Vec<(Vma, u64, u64)> = Vec::new();
    for w in &want {
        let near = memory::areas_overlapping(&s.mapped, w.start, w.end);
        let mut cover: Vec<(u64, u64)> = near.iter().filter(|o| compatible(o, w)).map(|o| (o.start.max(w.start), o.end.min(w.end))).filter(|(a, b)| a < b).collect();
        // (Areas whose contents are not streamed, shared file mappings, keep their mapping.)
        if let Some(k) = keep.filter(|_| w.stores_pages()) {
            cover = cover.iter().flat_map(|&(a, b)| memory::ranges_overlapping(k, a, b).iter().map(move |&(ks, ke)| (a.max(ks), b.min(ke)))).filter(|(a, b)| a < b).collect();
        }
        for &(a, b) in &cover {
            let old_prot = near.iter().find(|o| o.start <= a && b <= o.end).map(|o| o.prot);
            if old_prot != Some(w.prot) {
                inj.call("mprotect", nr::MPROTECT, &[a, b - a, w.prot as u64])?;
            }
            kept.push((a, b));
        }
        for (a, b) in memory::subtract((w.start, w.end), &cover) {
            fresh.push(((*w).clone(), a, b));
        }
    }
    kept.sort_unstable();
    for o in &s.mapped {
        for (a, b) in memory::subtract((o.start, o.end), memory::ranges_overlapping(&kept, o.start, o.end)) {
            inj.call("munmap", nr::MUNMAP, &[a, b - a])?;
        }
    }
    let mut objects = Vec::new();
    let mut plain = Vec::new();
    for (w, a, b) in fresh {
        // A new piece right after a kept piece of the same anonymous area
        // grows that mapping in place: the area stays one kernel VMA, as on
        // the source (two mappings side by side need not merge, and a later
        // mremap of the whole area would fail with EFAULT).
        if matches!(w.kind, Kind::Anon | Kind::Heap) {
            let i = kept.partition_point(|k| k.1 < a);
            if let Some(k) = kept.get_mut(i).filter(|k| k.1 == a && k.0 >= w.start) {
                if inj.call("mremap (grow in place)", nr::MREMAP, &[k.0, a - k.0, b - k.0, 0]).is_ok() {
                    k.1 = b;
                    continue;
                }
            }
        }
        let mut part = w.clone();
        part.pgoff = w.pgoff + (a - w.start);
        part.start = a;
        part.end = b;
        match crate::anonfd::object_of(&part) {
            // Mapped together below, through one channel.
            Some(fd) => objects.push((part, fd?)),
            None => plain.push(part),
        }
    }
    memory::map_vmas(inj, &plain)?;
    crate::anonfd::map_objects(inj, objects)?;
    s.mapped = want.iter().map(|w| (*w).clone()).collect();
    rejoin_split_areas(s, &want)
}

/// Every private anonymous area must be one kernel VMA, as on the source: a
/// process may mremap or munmap it whole (mremap fails with EFAULT across
/// VMAs). Pieces kept from earlier rounds do not always merge (each has its
/// own anon_vma), so an area found split is rebuilt: a new mapping is made
/// elsewhere, the present pages are copied into it, and it is moved over the
/// pieces (mremap MREMAP_FIXED replaces them at once).
fn rejoin_split_areas(s: &mut Stub, want: &[&Vma]) -> Result<()> {
    const MREMAP_MAYMOVE: u64 = 1;
    const MREMAP_FIXED: u64 = 2;
    let split: Vec<&Vma> = {
        let have = memory::vmas(s.host)?;
        let whole = |w: &Vma| memory::areas_overlapping(&have, w.start, w.end).first().is_some_and(|h| h.start <= w.start && w.end <= h.end);
        want.iter().copied().filter(|w| w.kind == Kind::Anon && !w.shared && !whole(w)).collect()
    };
    if split.is_empty() {
        return Ok(());
    }
    let pagemap = File::open(format!("/proc/{}/pagemap", s.host)).ctx("opening the stub's pagemap")?;
    let mem = open_mem(s.host, true)?;
    let mut buf = vec![0u8; 1 << 20];
    for w in split {
        let len = w.end - w.start;
        // As the area was mapped (its commit flags kept), but anywhere.
        let flags = memory::anon_flags(w) & !memory::MAP_FIXED;
        let (prot, _) = memory::first_prot(w, 0);
        let tmp = s.leader.call("mmap (rejoin)", nr::MMAP, &[0, len, prot, flags, u64::MAX, 0])?;
        for c in memory::first_prot(w, tmp).1 {
            s.leader.call(&c.what, c.nr, &c.args)?;
        }
        let mut pages = Vec::new();
        memory::present_pages(&pagemap, w, &mut pages)?;
        for r in memory::runs_of(&pages) {
            let (mut at, end) = (r.vaddr, r.vaddr + r.nr_pages * PAGE_SIZE);
            while at < end {
                let n = ((end - at) as usize).min(buf.len());
                // /proc/PID/mem reads and writes through the area's protection.
                mem.read_exact_at(&mut buf[..n], at).ctx(format!("reading {:#x} of the stub", at))?;
                mem.write_all_at(&buf[..n], tmp + (at - w.start)).ctx("writing the rejoined area")?;
                at += n as u64;
            }
        }
        s.leader.call("mremap (rejoin)", nr::MREMAP, &[tmp, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, w.start])?;
    }
    Ok(())
}

/// What of one process needs neither its files nor its attributes, once
/// its layout is in place: kernel AIO rings, signal handlers, interval
/// timers, personality, mm fields and exe, advice. A migration's
/// destination settles each process as its entry arrives (migrate/dest.rs)
/// unless its executable is a removed file (restored with the files).
pub fn settle_process(p: &Json, s: &mut Stub) -> Result<()> {
    let inj = &mut s.leader;
    // Every other area is in place: the kernel picks where io_setup maps a
    // ring, which then moves to its old address.
    crate::aio::restore(inj, p)?;
    crate::sys::trace_mark("finish: aio");
    // Handlers, interval timers and personality in one batch.
    crate::batch::reserve(inj, 1)?;
    let d0 = crate::batch::data(inj, 0)?;
    let mut calls = signals::sigaction_calls(inj, p.arr_of("sigactions"), d0)?;
    calls.extend(signals::itimer_calls(inj, p.arr_of("itimers"), d0 + 64 * 32)?);
    calls.extend(crate::creds::personality_calls(p));
    crate::batch::run_checked(&mut [crate::batch::Job { inj: &mut *inj, slot: 0, calls }])?;
    crate::sys::trace_mark("finish: signal handlers");
    // Before the descriptors and limits: a process that uses every
    // descriptor number its RLIMIT_NOFILE allows leaves none free.
    let exe_fd = process::open_exe_in_stub(inj, p)?;
    let r = p.get("mm").map_or(Ok(()), |mm| process::restore_mm(inj, mm, exe_fd));
    if let Some(fd) = exe_fd {
        inj.call("close", nr::CLOSE, &[fd])?;
    }
    r?;
    crate::sys::trace_mark("finish: mm");
    restore_advice(inj, p)?;
    crate::sys::trace_mark("finish: advice");
    Ok(())
}

/// Whether `settle_process` may run before the state's files are opened.
pub fn settles_early(p: &Json) -> bool {
    !p.get("exe").and_then(|e| e.str_of("path")).is_some_and(|x| x.ends_with(" (deleted)"))
}

/// Files, process attributes, signals, mm fields and exe of one process.
/// `settled`: `settle_process` ran for it already.
pub fn finish_process(p: &Json, s: &mut Stub, opened: &files::Opened, settled: bool) -> Result<()> {
    // A migration's stubs were made from its first layout: what the
    // processes share must not have changed since.
    if shares::shared_flags(p) != s.shared {
        return Err(Error::new("EPROTO", format!("process {}: what it shares with other processes changed after its stub was made", s.pid)));
    }
    if !settled {
        settle_process(p, s)?;
    }
    let inj = &mut s.leader;
    // A shared descriptor table is filled once, by its first process.
    let own_table = s.shared & shares::CLONE_FILES == 0;
    if own_table {
        install_fds(inj, p, s.host, opened)?;
    }
    crate::sys::trace_mark("finish: fds installed");
    // Again here for a migration, whose stubs were made before the pairs
    // (then the session's other members do not get the terminal back).
    crate::tty::claim_ctty(inj, p, s.pid, &opened.ptys)?;
    crate::tty::restore_foreground(inj, p, s.pid, &opened.ptys)?;
    if own_table {
        crate::anonfd::after_install(inj, p)?;
        crate::fown::restore(inj, p)?;
    }
    if s.shared & shares::CLONE_FS == 0 {
        process::restore_fs(inj, p, &opened.proc_hosts)?;
    }
    process::restore_attrs(inj, p)?;
    crate::sys::trace_mark("finish: attributes");
    crate::anonfd::userfaultfd::register_areas(inj, p)
}

/// Every descriptor of the process, passed in from phaul.
fn install_fds(inj: &mut Injector, p: &Json, host: Pid, opened: &files::Opened) -> Result<()> {
    let fds = p.arr_of("fds");
    let top = fds.iter().filter_map(|f| f.u64_of("fd")).max().unwrap_or(0);
    let limit = process::make_room_for_fds(inj, top + 64)?;
    // The channel parks above every descriptor of the process, or, when the
    // limit leaves no room there, in the lowest number it does not use.
    let used: std::collections::BTreeSet<u64> = fds.iter().filter_map(|f| f.u64_of("fd")).collect();
    let park = match (top + 1).max(100) {
        p if p < limit => p,
        _ => (3..limit).find(|n| !used.contains(n)).ok_or_else(|| Error::new("EUNSUPPORTED", format!("process {} uses every descriptor its limit allows", p.i64_of("pid").unwrap_or(0))))?,
    };
    let pidfd = crate::sys::pidfd_open(host)?;
    let chan = FdChannel::open(inj, &pidfd, park)?;
    let mut items = Vec::with_capacity(fds.len());
    let mut later = Vec::new();
    for f in fds {
        let id = f.u64_of("file_id").unwrap_or(0);
        let fd = f.i64_of("fd").filter(|&x| (0..1 << 20).contains(&x)).ok_or_else(|| Error::new("EIMAGE", "a descriptor number in the image is not valid"))?;
        if opened.is_deferred(id) {
            later.push((id, fd as i32, f.bool_of("cloexec")));
            continue;
        }
        let obj = opened.by_id.get(&id).ok_or_else(|| Error::new("EIMAGE", format!("fd {} refers to a file missing from the image", fd)))?;
        items.push((obj, fd as i32, f.bool_of("cloexec")));
    }
    chan.install_all(inj, &items).ctx("installing the descriptors")?;
    // /proc/PID/fdinfo/N opens once descriptor N is there.
    if !later.is_empty() {
        let objs = later.iter().map(|(id, _, _)| opened.open_deferred(*id)).collect::<Result<Vec<_>>>()?;
        let items: Vec<_> = objs.iter().zip(&later).map(|(o, (_, fd, cloexec))| (o, *fd, *cloexec)).collect();
        chan.install_all(inj, &items).ctx("installing the descriptors naming descriptors")?;
    }
    chan.close(inj)
}

/// madvise and mlock settings, last but for userfaultfd registrations:
/// every page of the process is written by now (a migration's final round
/// included) and its children are forked.
fn restore_advice(inj: &mut Injector, p: &Json) -> Result<()> {
    crate::batch::reserve(inj, 1)?;
    memory::apply_advice(inj, &vmas_of(p)?)?;
    // mlockall(MCL_FUTURE [| MCL_ONFAULT]): what the process maps from now
    // on is locked (its areas were locked one by one above).
    if let Some(flags) = p.u64_of("mlockall").filter(|&f| f & 2 != 0) {
        inj.call("mlockall", nr::MLOCKALL, &[flags & (2 | 4)])?;
    }
    Ok(())
}

/// A restored thread between its settings and its final registers.
struct Finishing<'a> {
    host: Pid,
    inj: Injector,
    /// Borrowed from the state, not cloned: on a VM where touching memory
    /// not touched for a while is slow, cloning 64 threads' JSON cost
    /// several ms of the frozen window.
    t: &'a Json,
    /// Its batch slot in its process.
    slot: usize,
    creds: Option<&'a Json>,
    /// The identity of its process's threads now (an index into `nows`).
    now: usize,
    /// Leaders: their process, for the process-wide settings.
    process: Option<&'a Json>,
    /// Its settings (threads::settings_calls) go in the credentials' batch
    /// (no thread of its process has seccomp filters to install between
    /// them), with its process's nice value; None once made.
    settings: Option<i64>,
}

/// Threads, per-thread settings and registers; then everything runs, or,
/// with `hold`, stays stopped until `release` (a migration's commit).
pub fn finish_tree(procs: &[&Json], tree: &mut Tree, hold: bool) -> Result<()> {
    let mut all_threads: Vec<Finishing> = Vec::new();
    let mut nows: Vec<Option<Json>> = Vec::new();
    let mut leaders = Vec::new();
    let mut stops = Vec::new();
    let stubs = std::mem::take(&mut tree.stubs);
    for (p, s) in procs.iter().zip(stubs.into_iter()) {
        if p.u64_of("stop_signal").unwrap_or(0) != 0 {
            stops.push(s.host);
        }
        let mut leader = s.leader;
        let ths = p.arr_of("threads");
        let tids: Vec<Pid> = ths[1..].iter().map(|t| t.i64_of("tid").unwrap_or(0) as Pid).collect();
        // New threads start with the leader's nice value.
        let nice = crate::creds::dump_sched(s.host, s.host).i64_of("nice").unwrap_or(0);
        process::restore_loginuid(&mut leader, p)?;
        crate::batch::reserve(&mut leader, ths.len())?;
        let hosts = stub::clone_threads(&mut leader, &tids)?;
        crate::sys::trace_mark("restore: threads made");
        tree.created.extend(&hosts);
        let mut others = Vec::with_capacity(hosts.len());
        for &host in &hosts {
            let regs = ptrace::get_regs(host)?;
            let mut ti = Injector::new(s.host, host, leader.insn(), regs, u64::MAX)?;
            ti.share_scratch(&leader);
            others.push(ti);
        }
        // What names a thread waits for the threads.
        crate::anonfd::posix_timers::restore(&mut leader, p)?;
        if s.shared & shares::CLONE_FILES == 0 {
            crate::anonfd::pidfd::after_install(&mut leader, p, true)?;
        }
        // Settings, then seccomp filters, then credentials: without filters
        // to install, the settings join the credentials' batch (one stop
        // less per thread).
        let filtered = ths.iter().any(|t| t.get("seccomp").and_then(|s| s.u64_of("mode")).unwrap_or(0) != 0);
        if filtered {
            threads::restore_settings(ths, &mut leader, &mut others, nice)?;
        }
        let settings = if filtered { None } else { Some(nice) };
        crate::sys::trace_mark("restore: thread settings");
        let creds = p.get("creds");
        let now = nows.len();
        nows.push(crate::creds::dump_creds_of_thread(s.host, s.host).ok());
        for (k, ((host, inj), t)) in hosts.into_iter().zip(others).zip(&ths[1..]).enumerate() {
            all_threads.push(Finishing { host, inj, t, slot: k + 1, creds: t.get("creds").or(creds), now, process: None, settings });
        }
        // Signals are queued from the leader: the kernel lets a process queue
        // any siginfo only to itself, and checks that against the caller's
        // own id, which for a queue aimed at another thread is the leader's.
        for t in ths {
            let tid = t.i64_of("tid").unwrap_or(0) as Pid;
            signals::requeue(&mut leader, s.pid, Some(tid), t.arr_of("pending"))?;
        }
        signals::requeue(&mut leader, s.pid, None, p.arr_of("shared_pending"))?;
        leaders.push(Finishing { host: s.host, inj: leader, t: &ths[0], slot: 0, creds, now, process: Some(p), settings });
    }
    // Leaders last: they own the scratch areas the others borrowed.
    all_threads.extend(leaders);
    // Before the credentials: installing a filter needs no_new_privs or
    // CAP_SYS_ADMIN, which the stub has until then.
    for f in all_threads.iter_mut() {
        crate::seccomp::restore(f.t, &mut f.inj, f.host, stub::STUB_OPTIONS)?;
    }
    // Then credentials and what comes after them, every thread at once.
    let mut jobs = Vec::with_capacity(all_threads.len());
    for f in all_threads.iter_mut() {
        let data = crate::batch::data(&f.inj, f.slot)?;
        let mut calls = match f.settings {
            Some(nice) => threads::settings_calls(f.t, &f.inj, data, nice)?,
            None => Vec::new(),
        };
        // Past the settings' arguments (threads::SETTINGS_DATA bytes).
        let at = threads::SETTINGS_DATA;
        calls.extend(
            crate::creds::creds_calls(f.creds, nows[f.now].as_ref(), &f.inj, data + at, crate::batch::DATA_LEN - at)
                .map_err(|e| e.context(format!("thread {}: credentials", f.host)))?,
        );
        calls.extend(threads::late_calls(f.t));
        if let Some(p) = f.process {
            calls.extend(process::late_prctl_calls(p));
        }
        jobs.push(crate::batch::Job { inj: &mut f.inj, slot: f.slot, calls });
    }
    crate::batch::run_checked(&mut jobs)?;
    drop(jobs);
    crate::sys::trace_mark("restore: credentials");
    let mut finals = Vec::new();
    for f in all_threads {
        // A thread the leader cloned while pinned (pin.rs) takes the
        // leader's own mask, before the one the image gives it, if any.
        crate::pin::unpin_like(f.host, f.inj.pid);
        f.inj.finish()?;
        threads::restore_placement(f.host, f.t);
        finals.push((f.host, threads::final_state(f.t)?));
    }
    crate::sys::trace_mark("restore: injectors finished");
    for (tid, (regs, xsave, mask)) in &finals {
        threads::apply_final_state(*tid, regs, xsave, *mask)?;
    }
    // Stopped by job control at the dump: a SIGSTOP waits for the threads
    // and stops them as soon as they are let go. (Always SIGSTOP: SIGTSTP
    // and the tty signals may be discarded, in an orphaned process group.)
    for host in stops {
        crate::sys::kill(host, 19)?;
    }
    if let Some(init) = tree.init.take() {
        let host = init.tid;
        init.finish()?;
        tree.held.push(host);
    }
    tree.held.extend(finals.iter().rev().map(|(tid, _)| *tid));
    if hold {
        return Ok(());
    }
    release(tree)
}

/// Let a restored tree run: every thread is detached, the namespace's init first.
pub fn release(tree: &mut Tree) -> Result<()> {
    for tid in std::mem::take(&mut tree.held) {
        ptrace::detach(tid, 0)?;
    }
    tree.created.clear();
    Ok(())
}

pub struct RestoreStats {
    pub pages_bytes: u64,
}

/// Restore from an image directory.
/// Returns (root pid, root pid as this host sees it, stats).
pub fn restore(dir: &str, state: &Json, pid_ns: bool) -> Result<(Pid, Pid, RestoreStats)> {
    preflight(state, pid_ns)?;
    let all = state.arr_of("processes");
    let mut opened = files::open_all(state.arr_of("files"), state.arr_of("pipes"))?;
    let mut tree = create_stubs(all, pid_ns, Some(&opened))?;
    let live = live_procs(all);
    let procs = &live[..];
    let host = tree.stubs.first().map(|s| s.host).unwrap_or(0);
    let r = (|| -> Result<RestoreStats> {
        let helpers = crate::standin::make(&mut tree, state, procs)?;
        let mut hosts = tree.host_map();
        hosts.extend(helpers.entries.iter().copied());
        opened.open_proc_entries(state.arr_of("files"), hosts)?;
        let mut stats = RestoreStats { pages_bytes: 0 };
        for (p, s) in procs.iter().zip(tree.stubs.iter_mut()) {
            let vmas = vmas_of(p)?;
            apply_layout(s, &vmas, None)?;
            stats.pages_bytes += fill_from_images(dir, p, s).map_err(|e| e.context(format!("restoring process {}", s.pid)))?;
            finish_process(p, s, &opened, false).map_err(|e| e.context(format!("restoring process {}", s.pid)))?;
        }
        opened.release_pipes();
        opened.seek_proc_entries(state.arr_of("files"))?;
        crate::standin::end(&mut tree, &helpers)?;
        finish_tree(procs, &mut tree, false)?;
        Ok(stats)
    })();
    match r {
        Ok(stats) => Ok((pid_of(&procs[0])?, host, stats)),
        Err(e) => {
            tree.discard();
            Err(e)
        }
    }
}

fn fill_from_images(dir: &str, p: &Json, s: &Stub) -> Result<u64> {
    let pages = p.get("pages").ok_or_else(|| Error::new("EIMAGE", format!("process {} has no page index", s.pid)))?;
    let runs = memory::runs_from_json(pages)?;
    let name = pages.str_of("file").unwrap_or("");
    if name.contains('/') || name.is_empty() {
        return Err(Error::new("EIMAGE", "the page file name in the image is not valid"));
    }
    let pf = File::open(format!("{}/{}", dir, name)).map_err(|_| Error::new("EIMAGE", format!("page file {} is missing", name)))?;
    let mem = open_mem(s.host, true)?;
    memory::fill_from_file(&mem, &pf, &runs)
}
