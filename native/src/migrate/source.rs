//! Source side of a live migration: arm dirty tracking, stream memory while
//! the tree runs, then freeze and send the last dirty pages and the state.

use super::handoff::Handoff;
use super::send::{self, ProcessRound};
use super::stream;
use crate::dirty::{self, Method, Tracker};
use crate::dump;
use crate::ffi::error_json;
use crate::freeze::{self, Frozen};
use crate::inject::{find_syscall_insn, Injector};
use crate::json::Json;
use crate::memory::{self, Vma};
use crate::ops::{ok, pid_arg};
use crate::proc;
use crate::shares;
use crate::session::Engine;
use crate::sys::{self, Error, Pid, PollFd, Result, PAGE_SIZE};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::net::TcpStream;
use std::os::unix::io::AsRawFd;
use std::time::Instant;

#[derive(Default)]
pub struct SourceEngine {
    root: Pid,
    frozen: Option<Frozen>,
    trackers: Vec<Tracker>,
    sock: Option<BufWriter<TcpStream>>,
    /// The same connection, read side: what the destination says back at the end.
    back: Option<BufReader<TcpStream>>,
    round: u64,
    pool: send::Pool,
    handoff: Option<Handoff>,
    sender: Option<std::thread::JoinHandle<Sent>>,
    /// When the final freeze began: the downtime runs from there to COMMITTED.
    frozen_at: Option<Instant>,
    frozen_mono_us: u64,
    /// The destination runs on this very host (same boot id): what the two
    /// copies cannot both hold, like a file lease, cannot move.
    same_host: bool,
    /// The destination restores into the tree's own network namespace: the
    /// peers' packets held at the freeze can be handed to its sockets.
    same_stack: bool,
    /// What processes share (shares.rs) when the destination's stubs were
    /// laid out: the final state must say the same.
    shares: std::collections::BTreeMap<Pid, Json>,
    /// The tree as the destination's stubs have it: pid -> (a zombie, start
    /// time). Processes come and go during pre-copy (a shell's children);
    /// the final round reshapes the destination's tree to the frozen one.
    prepared: std::collections::BTreeMap<Pid, (bool, u64)>,
    /// Each process's layout as last sent: an unchanged one is not sent again.
    layouts: send::Layouts,
    /// What of each shared memory object was sent (see shmem.rs).
    shmem: crate::shmem::Sent,
    /// Minor faults of each process's reaped children (cminflt) when
    /// tracking began: a rise means a child lived and ended unseen.
    /// (And whether it was a zombie already.)
    reaped: std::collections::BTreeMap<Pid, (u64, bool)>,
    /// A tracked process ended before the freeze.
    tracked_exited: bool,
}

/// A lease is held by one open of a file: the destination's own open of it,
/// on the same host, would break the source's lease (waiting up to
/// lease-break-time) before the source's copy is gone.
fn refuse_leases(state: &Json) -> Result<()> {
    for p in state.arr_of("processes") {
        if let Some(l) = p.arr_of("file_locks").iter().find(|l| l.str_of("kind") == Some("lease")) {
            return Err(Error::new(
                "EUNSUPPORTED",
                format!("process {} holds a lease on fd {}: a migration to this same host cannot carry file leases", p.i64_of("pid").unwrap_or(0), l.u64_of("fd").unwrap_or(0)),
            ));
        }
    }
    Ok(())
}

/// On one host the handoff frees a socket's name (or port) for the
/// destination by closing the source's descriptors of it, and gives them
/// back on a rollback: a socket held only in flight in a queue has none,
/// and a socket so handed back could not get its queue's descriptors.
fn refuse_named_in_flight(state: &Json) -> Result<()> {
    for f in state.arr_of("files").iter().filter(|f| super::handoff::collides(f)) {
        let name = f
            .get("sock")
            .and_then(|s| s.get("local"))
            .and_then(|l| l.str_of("path"))
            .and_then(crate::base64::decode)
            .map(|p| if p.first() == Some(&0) { format!("@{}", String::from_utf8_lossy(&p[1..])) } else { String::from_utf8_lossy(&p).into_owned() })
            .unwrap_or_default();
        let why = if f.bool_of("in_flight") {
            "is held only in flight in a unix socket queue"
        } else if f.get("sock").map(|s| !s.arr_of("in_flight").is_empty()).unwrap_or(false) {
            "has descriptors in flight in its queue"
        } else {
            continue;
        };
        return Err(Error::new("EUNSUPPORTED", format!("the unix socket bound to {} {}: a migration to this same host cannot carry it", name, why)));
    }
    Ok(())
}

/// The final state but its processes (sent ahead, `streamed` of them).
fn without_processes(state: &Json, streamed: u64) -> Json {
    let mut out = Json::obj();
    if let Json::Obj(m) = state {
        for (k, v) in m.iter().filter(|(k, _)| k.as_str() != "processes") {
            out.set(k, v.clone());
        }
    }
    out.with("processes", Vec::<Json>::new()).with("processes_streamed", streamed)
}

/// What the final-round sender thread gives back.
type Sent = (Vec<Tracker>, BufWriter<TcpStream>, Result<()>);

/// Scheduling weights (nice) of the engine's work: pre-copy yields to the
/// workload, the frozen window preempts everything else.
pub const PRECOPY_NICE: i32 = 19;
pub const FROZEN_NICE: i32 = -10;

const EMFILE: i32 = 24;

const COMMITTED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);


fn zombie_entry(fz: &freeze::FrozenProc, status: i32) -> Json {
    layout_entry(fz, &[]).with("zombie", true).with("exit_code", status as i64)
}

/// When the process started (clock ticks since boot): a pid seen again
/// with another start time is another process.
fn start_time(pid: Pid) -> u64 {
    proc::stat(pid).map(|(_, f)| proc::stat_u64(&f, 22)).unwrap_or(0)
}

fn layout_entry(fz: &freeze::FrozenProc, vmas: &[Vma]) -> Json {
    let (_, st) = proc::stat(fz.pid).unwrap_or_default();
    Json::obj()
        .with("pid", fz.pid)
        .with("ppid", fz.ppid)
        .with("pgid", proc::stat_u64(&st, 5))
        .with("sid", proc::stat_u64(&st, 6))
        .with("tids", fz.threads.iter().map(|t| Json::from(t.tid)).collect::<Vec<_>>())
        .with("vmas", vmas.iter().map(Vma::to_json).collect::<Vec<_>>())
}

impl SourceEngine {
    fn start(&mut self, req: &Json) -> Result<Json> {
        let pid = pid_arg(req)?;
        dump::validate_target(pid)?;
        self.same_host = req.bool_of("same_host");
        self.same_stack = self.same_host && req.str_of("dest_net_ns").is_some_and(|n| !n.is_empty() && n == proc::net_ns_id(Some(pid)));
        let auto = req.str_of("track").unwrap_or("auto") == "auto";
        let method = match req.str_of("track").unwrap_or("auto") {
            "auto" => dirty::best_method(),
            m => {
                let m = Method::parse(m).ok_or_else(|| Error::new("EINVAL", format!("unknown tracking method {:?} (auto, uffd-wp, soft-dirty, hash)", m)))?;
                if !m.available() {
                    return Err(Error::new("EFEATURE", format!("dirty tracking with {} is not available on this kernel", m.name())));
                }
                m
            }
        };
        let addr = req.str_of("page_addr").ok_or_else(|| Error::new("EINVAL", "source_start needs page_addr"))?.to_string();
        // Connect first: an unreachable destination must not cost a freeze.
        let sock = TcpStream::connect(&addr).map_err(|e| Error::new("ECONNREFUSED", format!("cannot reach the page server at {}: {}", addr, e)))?;
        let _ = sock.set_nodelay(true);
        let back = sock.try_clone().map_err(|e| Error::from(e).context("page stream"))?;
        // Small: page frames (send.rs, 256 KiB) bypass it and go to the socket in one write.
        let mut w = BufWriter::with_capacity(64 << 10, sock);
        let hello = Json::obj().with("migration", req.str_of("migration").unwrap_or("")).with("token", req.str_of("token").unwrap_or(""));
        stream::write_json(&mut w, stream::HELLO, 0, &hello)?;
        // Sent now, not with round 0: a refused HELLO is then known (the
        // stream closed) before the first round ends, see check_stream.
        w.flush().map_err(|e| Error::from(e).context("page stream"))?;
        self.root = pid;
        let mut frozen = freeze::freeze_tree(pid)?;
        let mut layout = Vec::new();
        let mut hashed = Vec::new();
        let r = (|| -> Result<()> {
            // The destination forks its stubs sharing what these share.
            self.shares = shares::dump(&frozen)?;
            // Tree order (parents first), zombies included: the destination forks them in this order.
            for fz in &frozen.procs {
                self.prepared.insert(fz.pid, (fz.zombie.is_some(), start_time(fz.pid)));
                self.reaped.insert(fz.pid, (reaped_faults(fz.pid), fz.zombie.is_some()));
                if let Some(status) = fz.zombie {
                    layout.push(zombie_entry(fz, status));
                    continue;
                }
                crate::files::refuse_unsupported_early(fz.pid)?;
                let vmas = memory::vmas(fz.pid)?;
                let leader = &fz.threads[0];
                let mut inj = Injector::new(fz.pid, leader.tid, find_syscall_insn(fz.pid)?, leader.regs.rewound(true), leader.sigmask)?;
                // A process with a userfaultfd of its own gets EBUSY registering
                // an area phaul's uffd-wp tracking holds: unless told
                // otherwise, such a process is tracked by hashing.
                let m = if auto && method == Method::UffdWp && crate::anonfd::userfaultfd::held_by(fz.pid).is_some() {
                    hashed.push((fz.pid, "a userfaultfd of its own"));
                    Method::Hash
                } else {
                    method
                };
                // Arming (write-protecting every page) happens in round 0,
                // while the tree runs: only the userfaultfd is made now.
                let t = match Tracker::start_lazy(m, fz.pid, &mut inj) {
                    // A process using every descriptor its limit allows has
                    // no room for phaul's userfaultfd: hashing needs none.
                    Err(e) if auto && m == Method::UffdWp && e.errno == EMFILE => {
                        hashed.push((fz.pid, "no descriptor free under its limit"));
                        Tracker::start_lazy(Method::Hash, fz.pid, &mut inj)
                    }
                    t => t,
                };
                inj.finish()?;
                self.trackers.push(t?);
                let mut entry = layout_entry(fz, &vmas);
                if let Some(sh) = self.shares.get(&fz.pid) {
                    entry.set("shares", sh.clone());
                }
                layout.push(entry);
            }
            Ok(())
        })();
        if let Err(e) = r {
            for t in self.trackers.drain(..) {
                t.stop();
            }
            frozen.resume();
            return Err(e);
        }
        frozen.resume();
        self.sock = Some(w);
        self.back = Some(BufReader::new(back));
        let live = frozen.live().count();
        let named = match hashed.len() {
            0 => method.name().to_string(),
            n if n == live => Method::Hash.name().to_string(),
            _ => format!("{} (hash for {})", method.name(), hashed.iter().map(|(p, why)| format!("process {}: {}", p, why)).collect::<Vec<_>>().join(", ")),
        };
        Ok(ok().with("method", named).with("layout", Json::obj().with("processes", layout)))
    }

    /// The destination's stubs share what the processes shared at the
    /// start; a clone or unshare since then cannot be followed.
    fn refuse_new_sharing(&self, state: &Json) -> Result<()> {
        for p in state.arr_of("processes") {
            let pid = p.i64_of("pid").unwrap_or(0) as Pid;
            if p.get("shares") != self.shares.get(&pid) {
                return Err(Error::new(
                    "EUNSUPPORTED",
                    format!("process {} changed what it shares with other processes of the tree (descriptor table, working directory) during pre-copy; migrate again", pid),
                ));
            }
        }
        Ok(())
    }

    /// One round: layout and pages of every process, then a round-end mark.
    fn round(&mut self, last: bool) -> Result<(u64, u64)> {
        // Pre-copy runs beside the workload (on one host, beside the
        // destination's engine too): it yields the CPU to the workload, whose
        // stalls would be downtime it feels, and takes what is left.
        crate::sys::set_thread_nice(PRECOPY_NICE);
        self.check_stream()?;
        let work = self.collect_round()?;
        let w = self.sock.as_mut().ok_or_else(|| Error::new("ESESSION", "no page stream"))?;
        let total = match send::write_round(w, &mut self.pool, None, &work, &mut self.trackers, &mut self.shmem, self.round, last) {
            Ok(t) => t,
            Err(e) => return Err(self.destination_reason(e)),
        };
        self.round += 1;
        // A round small enough to fit the socket buffers is written even to
        // a destination that already dropped the stream (a refused HELLO):
        // notice that now rather than wait for its round report.
        self.check_stream()?;
        Ok((total, total * PAGE_SIZE))
    }

    /// A page stream that broke under our writes was most often closed by
    /// the destination giving up: its ABORT, sent before it closed, names
    /// the real cause.
    fn destination_reason(&mut self, e: Error) -> Error {
        if e.code != "ECONNRESET" {
            return e;
        }
        match self.back.as_mut().map(|b| read_frame(b, std::time::Duration::from_millis(200), false)) {
            Some(Ok((h, body))) if h.kind == stream::ABORT => abort_error(body),
            _ => e,
        }
    }

    /// The destination never talks during pre-copy: anything readable (its
    /// ABORT, or the end of the connection) means the stream is over.
    fn check_stream(&mut self) -> Result<()> {
        let b = match self.back.as_mut() {
            Some(b) => b,
            None => return Ok(()),
        };
        if !stream::waiting(b) {
            return Ok(());
        }
        let mut one = [0u8; 1];
        let peeked = if b.buffer().is_empty() { b.get_ref().peek(&mut one) } else { Ok(1) };
        match peeked {
            Ok(0) | Err(_) => Err(Error::new("ECONNRESET", "the destination closed the page stream (it refused or lost it)")),
            Ok(_) => match read_frame(b, std::time::Duration::from_secs(5), false) {
                Ok((h, body)) if h.kind == stream::ABORT => Err(abort_error(body)),
                Ok((h, _)) => Err(Error::new("EPROTO", format!("page stream: the destination sent frame kind {} during pre-copy", h.kind))),
                Err(e) => Err(e),
            },
        }
    }

    /// What a round sends: each process's layout and its pages to send.
    /// A process that exited meanwhile is no longer tracked (the final
    /// round drops it at the destination).
    fn collect_round(&mut self) -> Result<Vec<ProcessRound>> {
        self.drop_exited_trackers();
        let first = self.round == 0;
        collect(&mut self.trackers, first, &[], &mut self.layouts, first.then_some(&mut self.shmem), None)
    }

    /// Just before the freeze: when a process ended during pre-copy (it may
    /// have written shared memory unseen), shared memory is compared with
    /// what was sent now, while the tree runs, instead of in the frozen
    /// window; the pages that differ go ahead of the final round
    /// (`send_ahead`). The frozen window then compares it again only if
    /// another process ends after this point. PostgreSQL under short sessions (128 MiB of shared
    /// buffers) spent about 28 ms of its frozen window on this.
    fn compare_shared_before_freeze(&mut self) -> std::collections::HashMap<Pid, Vec<u64>> {
        let mut pending = std::collections::HashMap::new();
        self.drop_exited_trackers();
        if self.round == 0 || !self.shmem.any() {
            return pending;
        }
        let tree = self.running_tree();
        if !self.unseen_in(&tree) {
            return pending;
        }
        crate::sys::trace_mark("source: shared memory compared before the freeze");
        // First: whatever ends from here on counts at the freeze.
        self.unseen_baseline(&tree);
        self.shmem.forget();
        for t in &self.trackers {
            let pid = t.pid();
            if let Ok(vmas) = memory::vmas(pid) {
                let pages = self.shmem.unsent(pid, &vmas);
                if !pages.is_empty() {
                    pending.insert(pid, pages);
                }
            }
        }
        crate::sys::trace_mark("source: shared memory compared");
        pending
    }

    /// The pages `compare_shared_before_freeze` found changed go now, while
    /// the tree runs, as the first frames of the final round: the frozen
    /// window would send them behind its dump (PostgreSQL: about 1,600
    /// pages, up to 45 ms there). Writes to them from here on are those of
    /// tracked processes (in the final round) or of processes that end
    /// before the freeze (compared again in the frozen window). What is
    /// left to the final round: pages of areas the destination does not
    /// have yet. Returns it, and the round's sum so far.
    fn send_ahead(&mut self, pending: std::collections::HashMap<Pid, Vec<u64>>) -> Result<(std::collections::HashMap<Pid, Vec<u64>>, stream::RoundSum)> {
        let mut sum = stream::RoundSum::new();
        let mut work = Vec::new();
        let mut left = std::collections::HashMap::new();
        for (pid, pages) in pending {
            let vmas = self.layouts.last(pid).unwrap_or(&[]).to_vec();
            let (now, later): (Vec<u64>, Vec<u64>) = pages.into_iter().partition(|&a| crate::shmem::in_object(&vmas, a));
            if !later.is_empty() {
                left.insert(pid, later);
            }
            if !now.is_empty() {
                work.push(ProcessRound { pid, vmas, pages: now, keep: Vec::new(), same_layout: true });
            }
        }
        if work.is_empty() {
            return Ok((left, sum));
        }
        let w = self.sock.as_mut().ok_or_else(|| Error::new("ESESSION", "no page stream"))?;
        if let Err(e) = send::write_ahead(w, &mut self.pool, &work, &mut self.trackers, &mut self.shmem, &mut sum) {
            return Err(self.destination_reason(e));
        }
        crate::sys::trace_mark("source: changed shared memory sent ahead");
        Ok((left, sum))
    }

    fn drop_exited_trackers(&mut self) {
        let (exited, kept): (Vec<Tracker>, Vec<Tracker>) = std::mem::take(&mut self.trackers).into_iter().partition(|t| t.pid() != self.root && proc::exited(t.pid()));
        self.trackers = kept;
        for t in exited {
            self.tracked_exited = true;
            t.stop();
        }
    }

    /// The tree as it runs: each process and whether it is a zombie.
    fn running_tree(&self) -> Vec<(Pid, bool)> {
        let mut out = Vec::new();
        let mut todo = vec![self.root];
        while let Some(p) = todo.pop() {
            if out.iter().any(|&(q, _)| q == p) {
                continue;
            }
            let zombie = proc::exited(p);
            out.push((p, zombie));
            if !zombie {
                todo.extend(proc::children(p));
            }
        }
        out
    }

    /// From now on only processes of `tree` that end (or reap children)
    /// after this point count as unseen writers.
    fn unseen_baseline(&mut self, tree: &[(Pid, bool)]) {
        self.tracked_exited = false;
        self.reaped = tree.iter().map(|&(p, z)| (p, (reaped_faults(p), z))).collect();
    }

    /// How the frozen tree differs from the one the destination's stubs
    /// were made for: the live processes new since (their memory goes whole
    /// in the final round), and the TREE frame that tells the destination
    /// the final tree and which stubs to drop (None when nothing changed).
    /// Trackers of processes that are gone are stopped.
    fn tree_changes(&mut self, frozen: &Frozen) -> Result<(Vec<(Pid, Vec<Vma>)>, Option<Json>)> {
        let now: std::collections::BTreeMap<Pid, (bool, u64)> = frozen.procs.iter().map(|fz| (fz.pid, (fz.zombie.is_some(), start_time(fz.pid)))).collect();
        let gone: Vec<Pid> = self.prepared.iter().filter(|(p, v)| now.get(p) != Some(v)).map(|(p, _)| *p).collect();
        let is_new = |pid: &Pid| self.prepared.get(pid) != now.get(pid);
        if gone.is_empty() && !now.keys().any(is_new) {
            return Ok((Vec::new(), None));
        }
        let mut fresh = Vec::new();
        let mut entries = Vec::new();
        for fz in &frozen.procs {
            let new = is_new(&fz.pid);
            let mut e = match fz.zombie {
                Some(status) => zombie_entry(fz, status),
                None if new => {
                    let vmas = memory::vmas(fz.pid)?;
                    let e = layout_entry(fz, &vmas);
                    fresh.push((fz.pid, vmas));
                    e
                }
                None => layout_entry(fz, &[]),
            };
            if let Some(sh) = self.shares.get(&fz.pid) {
                e.set("shares", sh.clone());
            }
            entries.push(e);
        }
        let (dropped, kept): (Vec<Tracker>, Vec<Tracker>) = std::mem::take(&mut self.trackers).into_iter().partition(|t| gone.contains(&t.pid()));
        self.trackers = kept;
        for t in dropped {
            t.stop();
        }
        self.prepared = now;
        let frame = Json::obj().with("gone", gone.iter().map(|&p| Json::from(p)).collect::<Vec<_>>()).with("processes", entries);
        Ok((fresh, Some(frame)))
    }

    /// Whether a process of the tree may have written shared memory
    /// without being tracked: one that ended during pre-copy (tracked, its
    /// writes since its last round; or never tracked), seen as a tracked
    /// process gone or as its parent's count of reaped children's faults
    /// rising (a process that ran at all faulted).
    fn unseen_writers(&self, frozen: &Frozen) -> bool {
        self.unseen_in(&frozen.procs.iter().map(|fz| (fz.pid, fz.zombie.is_some())).collect::<Vec<_>>())
    }

    /// `unseen_writers` of `tree` (each process and whether it is a zombie).
    fn unseen_in(&self, tree: &[(Pid, bool)]) -> bool {
        let live = |p: Pid| tree.iter().any(|&(q, z)| q == p && !z);
        self.tracked_exited
            || self.reaped.iter().any(|(&p, &(before, zombie))| !zombie && (!live(p) || reaped_faults(p) > before))
            || tree.iter().filter(|(p, _)| !self.reaped.contains_key(p)).any(|&(p, z)| z || reaped_faults(p) > 0)
    }

    /// Freeze, start sending the last dirty pages at once (on a thread of its
    /// own), and dump the rest of the state meanwhile: the page transfer and
    /// the state dump overlap, and the destination can read the final round
    /// before it has the state, so nothing waits on a full socket buffer.
    fn freeze(&mut self) -> Result<Json> {
        crate::sys::trace_mark("source: freeze requested");
        // Sockets change hands at this freeze (see handoff.rs): new
        // connections are held back first, queued ones get accepted.
        let known: Vec<Pid> = self.trackers.iter().map(|t| t.pid()).collect();
        // madvise/mlock settings, read while the tree still runs (a change
        // in the next few milliseconds is not seen; see dump::VmFlags).
        let vm_flags: dump::VmFlags = known.iter().map(|&p| (p, crate::proc::vm_flags(p).unwrap_or_default())).collect();
        let mut handoff = Handoff::default();
        handoff.before_freeze(self.root, &known, std::time::Duration::from_millis(200), self.same_stack);
        self.handoff = Some(handoff);
        let shared_pending = self.compare_shared_before_freeze();
        let (shared_pending, ahead) = self.send_ahead(shared_pending)?;
        // The frozen window is all downtime: it goes first (the page sender
        // thread inherits this).
        crate::sys::set_thread_nice(FROZEN_NICE);
        crate::sys::set_thread_realtime(true);
        crate::sys::trace_mark("source: freezing");
        let t0 = Instant::now();
        self.frozen_at = Some(t0);
        self.frozen_mono_us = crate::sys::mono_us();
        let frozen = freeze::freeze_tree(self.root)?;
        let cpu = crate::pin::here();
        if let Some(c) = cpu {
            crate::pin::pin_to(c, frozen.live().flat_map(|p| p.threads.iter().map(|t| t.tid)));
        }
        crate::sys::trace_mark("source: tree frozen");
        // A process that started or ended during pre-copy (a shell's
        // children) is made or dropped on the destination in the final round.
        let (fresh, tree_frame) = match self.tree_changes(&frozen) {
            Ok(c) => c,
            Err(e) => {
                self.frozen = Some(frozen);
                return Err(e);
            }
        };
        let mut vm_flags = vm_flags;
        for &(pid, _) in &fresh {
            vm_flags.insert(pid, crate::proc::vm_flags(pid).unwrap_or_default());
        }
        // Shared with the sender thread, which lays out the final round.
        let vm_flags = std::sync::Arc::new(vm_flags);
        let freeze_us = t0.elapsed().as_micros() as u64;
        crate::sys::trace_mark("source: frozen");
        if let Some(h) = self.handoff.as_mut() {
            h.after_freeze(&frozen);
        }
        // The last dirty pages are collected and sent by a thread while this
        // one dumps the state: neither changes the memory the other reads
        // (injected calls write only their own scratch area).
        let sock = match self.sock.take() {
            Some(s) => s,
            None => {
                self.frozen = Some(frozen);
                return Err(Error::new("ESESSION", "no page stream"));
            }
        };
        let (count_tx, count_rx) = std::sync::mpsc::channel::<Result<u64>>();
        let (proc_tx, proc_rx) = std::sync::mpsc::channel::<(u32, String)>();
        let (state_tx, state_rx) = std::sync::mpsc::channel::<Json>();
        let mut trackers = std::mem::take(&mut self.trackers);
        let mut pool = std::mem::take(&mut self.pool);
        let mut layouts = std::mem::take(&mut self.layouts);
        let mut shmem = std::mem::take(&mut self.shmem);
        let unseen = self.unseen_writers(&frozen);
        if unseen {
            // Shared memory may hold writes no tracker saw: every page of
            // it is compared with what was sent (shmem.rs).
            crate::sys::trace_mark("source: shared memory compared again");
            shmem.forget();
        }
        let mut sock = sock;
        let round = self.round;
        let final_flags = vm_flags.clone();
        self.round += 1;
        self.sender = Some(std::thread::spawn(move || {
            // Not real-time: this thread computes for milliseconds (the
            // last scan, the layouts), and a frozen thread that the dump
            // lets run an injected call, queued behind it on the same CPU,
            // would wait until it blocks (postgres: 12-25 ms).
            crate::sys::set_thread_realtime(false);
            // Nor on the engine's CPU (pin.rs), where the dump's injected calls run.
            if let Some(c) = cpu {
                crate::pin::avoid_self(c);
            }
            for t in trackers.iter_mut() {
                t.last_round();
            }
            // Stop-and-copy: the final round is the first, and sends everything.
            let work = match collect(&mut trackers, round == 0, &fresh, &mut layouts, unseen.then_some(&mut shmem), Some(&final_flags)) {
                Ok(mut w) => {
                    for p in w.iter_mut() {
                        if let Some(pages) = shared_pending.get(&p.pid) {
                            // (only where the object is still mapped)
                            memory::add_pages(&mut p.pages, pages.iter().copied().filter(|&a| crate::shmem::in_object(&p.vmas, a)).collect());
                        }
                    }
                    w
                }
                Err(e) => {
                    let _ = count_tx.send(Err(e.clone()));
                    return (trackers, sock, Err(e));
                }
            };
            crate::sys::trace_mark("source: final pages collected");
            let _ = count_tx.send(Ok(work.iter().map(|w| w.pages.len() as u64).sum()));
            let r = send::write_round_after(&mut sock, &mut pool, tree_frame.as_ref(), &work, &mut trackers, &mut shmem, round, true, ahead).map(|_| ());
            if r.is_err() {
                return (trackers, sock, r);
            }
            // Each process's entry as the dump finishes it, then the rest of
            // the state once the sockets have changed hands (a dropped
            // sender means the dump failed: nothing more to send).
            for (pid, text) in proc_rx {
                if let Err(e) = stream::write_text_checked(&mut sock, stream::STATE_PROCESS, pid, text) {
                    return (trackers, sock, Err(e));
                }
            }
            let r = match state_rx.recv() {
                Ok(state) => stream::write_json_checked(&mut sock, stream::STATE, 0, &state).and_then(|_| {
                    let r = std::io::Write::flush(&mut sock).map_err(|e| Error::new("ECONNRESET", format!("page stream to the destination broke: {}", e)));
                    crate::sys::trace_mark("source: state sent");
                    r
                }),
                Err(_) => Ok(()),
            };
            (trackers, sock, r)
        }));
        if let Some(c) = cpu {
            crate::pin::pin_to(c, [sys::gettid()]);
        }
        let mut streamed = 0u64;
        let dumped = dump::dump_frozen_each(&frozen, None, Some(&vm_flags), &mut |p| {
            // Written out here (cheaper than a copy of the entry to write
            // out elsewhere); the sender thread only sends it.
            streamed += 1;
            let _ = proc_tx.send((p.i64_of("pid").unwrap_or(0) as u32, p.to_string()));
        });
        drop(proc_tx);
        crate::sys::trace_mark("source: state dumped");
        self.frozen = Some(frozen);
        let pages = count_rx.recv().map_err(|_| Error::new("EPANIC", "the page sender failed"))??;
        let (mut state, _) = dumped?;
        if self.same_host {
            refuse_leases(&state)?;
            refuse_named_in_flight(&state)?;
        }
        self.refuse_new_sharing(&state)?;
        state.set("freeze_us", freeze_us);
        // The dump's warnings (what the restore cannot give back as it was)
        // reach the summary; the state itself goes only to the destination.
        let dump_warnings = state.get("warnings").cloned().unwrap_or(Json::Arr(Vec::new()));
        let mut handoff_json = Json::obj();
        if let (Some(h), Some(f)) = (self.handoff.as_mut(), self.frozen.as_ref()) {
            if self.same_host {
                h.release_locks(f, &state)?;
            }
            h.detach(f, &state)?;
            handoff_json = h.stats.clone().with("warnings", h.warnings.iter().map(|w| Json::from(w.as_str())).collect::<Vec<_>>());
        }
        crate::sys::trace_mark("source: sockets detached");
        // The state goes to the destination on the page stream only: the
        // agent has no use for it, and carrying it up costs frozen time.
        // Its processes went ahead, one frame each.
        let _ = state_tx.send(without_processes(&state, streamed));
        Ok(ok()
            .with("warnings", dump_warnings)
            .with("handoff", handoff_json)
            .with("pages", pages)
            .with("bytes", pages * PAGE_SIZE)
            .with("freeze_us", freeze_us)
            .with("dump_us", t0.elapsed().as_micros() as u64))
    }

    /// The tree stays here: give it back the sockets detached at the freeze.
    fn rollback_sockets(&mut self, f: &Frozen, res: Json) -> Json {
        match self.handoff.as_mut().map(|h| h.reattach(f)) {
            Some(Err(e)) => {
                eprintln!("phaul: rollback: {}", e.message);
                res.with("rollback_error", e.message.as_str())
            }
            _ => res,
        }
    }

    /// Wait for the final round to be on its way (its socket written); the
    /// trackers come back for stopping.
    fn join_sender(&mut self) -> Result<()> {
        match self.sender.take() {
            Some(h) => {
                let (trackers, sock, r) = h.join().map_err(|_| Error::new("EPANIC", "the page sender failed"))?;
                self.trackers = trackers;
                self.sock = Some(sock);
                r
            }
            None => Ok(()),
        }
    }

    /// The migration ends here: resume the tree with its sockets.
    fn give_back(&mut self) -> Json {
        self.stop_tracking();
        let mut res = ok();
        if let Some(mut f) = self.frozen.take() {
            res = self.rollback_sockets(&f, res);
            crate::pin::unpin_all();
            f.resume();
        }
        if let Some(mut h) = self.handoff.take() {
            let (us, passed) = h.release();
            res.set("release_us", us).set("held_packets", passed);
        }
        self.back = None;
        res
    }

    /// Wait for the final-round sender; an interrupt cuts the page stream
    /// so that a sender blocked on a full socket gives up too.
    fn join_sender_interruptible(&mut self) -> Result<()> {
        let mut cut = false;
        while self.sender.as_ref().is_some_and(|h| !h.is_finished()) {
            if !cut && crate::session::interrupted() {
                if let Some(b) = self.back.as_ref() {
                    let _ = b.get_ref().shutdown(std::net::Shutdown::Both);
                }
                cut = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let r = self.join_sender();
        if cut {
            return Err(Error::new("ECANCELED", "cancelled while the final pages were sent"));
        }
        r
    }

    /// The end of the migration, agreed with the destination's engine on
    /// the page stream (stream::RESTORED): wait for RESTORED, answer COMMIT,
    /// and kill the tree here only on COMMITTED. Before COMMIT is written,
    /// any failure, an ABORT or an interrupt resumes the tree here. After it,
    /// ABORT resumes it, and silence (the stream broke, the destination died)
    /// leaves it parked: stopped, untraced, not killed, because the
    /// destination may or may not be running its copy.
    fn commit(&mut self, req: &Json) -> Result<Json> {
        let wait = std::time::Duration::from_millis(req.u64_of("timeout_ms").unwrap_or(600_000).clamp(10, 3_600_000));
        if let Err(e) = self.join_sender_interruptible() {
            let e = self.destination_reason(e);
            let _ = self.give_back();
            return Err(e.context("the final pages did not reach the destination"));
        }
        crate::sys::trace_mark("source: final round sent, waiting for restored");
        let restored = match self.expect_restored(wait) {
            Ok(j) => j,
            Err(e) => {
                let _ = self.give_back();
                return Err(e);
            }
        };
        crate::sys::trace_mark("source: restored received");
        // A COMMIT that cannot be written did not reach the destination, whose
        // copy then stays held and is killed when the stream closes.
        let wrote = match self.sock.as_mut() {
            Some(w) => stream::write_signal(w, stream::COMMIT),
            None => Err(Error::new("ESESSION", "no page stream")),
        };
        if let Err(e) = wrote {
            let _ = self.give_back();
            return Err(e.context("the commit could not be sent"));
        }
        crate::sys::trace_mark("source: commit sent");
        let answer = self.back.as_mut().ok_or_else(|| Error::new("ESESSION", "no page stream")).and_then(|b| read_frame(b, COMMITTED_TIMEOUT, false));
        match answer {
            Ok((h, _)) if h.kind == stream::COMMITTED => {
                crate::sys::trace_mark("source: committed received");
                let frozen_us = self.frozen_at.map(|t| t.elapsed().as_micros() as u64).unwrap_or(0);
                let mut res = ok()
                    .with("restored", restored)
                    .with("frozen_us", frozen_us)
                    .with("frozen_mono_us", self.frozen_mono_us)
                    .with("committed_mono_us", crate::sys::mono_us());
                // The destination's sockets exist: the peers' packets held
                // since the freeze go to them now, not after the kill below
                // (freeing a big tree takes a while); the source's copies of
                // those sockets were closed at the freeze.
                if let Some(mut h) = self.handoff.take() {
                    let (us, passed) = h.release();
                    res.set("release_us", us).set("held_packets", passed);
                    crate::sys::trace_mark("source: held packets released");
                }
                // From here nothing is downtime: the copy that runs is the
                // destination's, and on one host it must not feel us freeing
                // this one (its own threads do the unmapping, so they yield too).
                crate::sys::set_thread_realtime(false);
                crate::sys::set_thread_nice(PRECOPY_NICE);
                crate::pin::unpin_all();
                if let Some(mut f) = self.frozen.take() {
                    for t in f.live().flat_map(|p| p.threads.iter()) {
                        crate::sys::set_nice(t.tid, PRECOPY_NICE);
                    }
                    release_memory_gently(&f);
                    f.kill();
                }
                // Tracking needs no unregistering on a dead process: closing is enough.
                self.trackers.clear();
                self.sock = None;
                self.back = None;
                crate::sys::trace_mark("source: frozen copy killed");
                Ok(res)
            }
            Ok((h, body)) if h.kind == stream::ABORT => {
                let _ = self.give_back();
                Err(abort_error(body))
            }
            other => {
                let why = match other {
                    Ok(_) => "it answered the commit with an unexpected frame".to_string(),
                    Err(e) => e.message,
                };
                let pids: Vec<String> = self.frozen.as_ref().map(|f| f.live().map(|p| p.pid.to_string()).collect()).unwrap_or_default();
                self.stop_tracking();
                if let Some(mut f) = self.frozen.take() {
                    // Whoever lets it go on lets it go on its own CPUs.
                    crate::pin::unpin_all();
                    f.park();
                }
                if let Some(mut h) = self.handoff.take() {
                    h.release();
                }
                self.back = None;
                Err(Error::new(
                    "EUNCERTAIN",
                    format!(
                        "the commit was sent but the destination did not confirm it ({}): it may be running its copy. \
                         The copy here is stopped, not killed (pids {}): check the destination, then `kill -KILL` these pids \
                         if it runs there, or `kill -CONT` them if it does not",
                        why,
                        pids.join(" ")
                    ),
                ))
            }
        }
    }

    /// The destination's RESTORED report (its copy held stopped), or why not.
    fn expect_restored(&mut self, wait: std::time::Duration) -> Result<Json> {
        let b = self.back.as_mut().ok_or_else(|| Error::new("ESESSION", "no page stream"))?;
        let (h, body) = read_frame(b, wait, true).map_err(|e| match e.code {
            "ECANCELED" | "ETIMEDOUT" => e,
            _ => Error::new("ECONNRESET", format!("the destination closed the page stream before it restored the process ({})", e.message)),
        })?;
        match h.kind {
            stream::RESTORED => body.ok_or_else(|| Error::new("EPROTO", "page stream: empty restored report")),
            stream::ABORT => Err(abort_error(body)),
            k => Err(Error::new("EPROTO", format!("page stream: the destination sent frame kind {} instead of its restored report", k))),
        }
    }

    fn stop_tracking(&mut self) {
        for t in self.trackers.drain(..) {
            t.stop();
        }
        self.sock = None;
    }
}

impl Engine for SourceEngine {
    fn handle(&mut self, req: &Json, done: &mut bool) -> Json {
        let r = match req.str_of("op").unwrap_or("") {
            "source_start" => self.start(req),
            "source_round" => {
                let t0 = Instant::now();
                let round = self.round;
                self.round(false).map(|(pages, bytes)| ok().with("round", round).with("pages", pages).with("bytes", bytes).with("ms", t0.elapsed().as_secs_f64() * 1000.0))
            }
            "source_freeze" => self.freeze(),
            "source_commit" => {
                *done = true;
                self.commit(req).map(|j| j.with("session_done", true))
            }
            "source_finish" => {
                // Rollback only: the tree is killed through source_commit alone.
                *done = true;
                let _ = self.join_sender();
                Ok(self.give_back().with("session_done", true))
            }
            op => Err(Error::new("EREQUEST", format!("{} is not a source operation", op))),
        };
        match r {
            Ok(j) => j,
            Err(e) => {
                if req.str_of("op") == Some("source_start") {
                    *done = true;
                }
                error_json(&e)
            }
        }
    }

    fn abandon(&mut self) {
        let _ = self.join_sender();
        let _ = self.give_back();
    }
}

/// Read one frame the destination sends back (restored, committed or
/// abort), polling so that an interrupt is seen while waiting.
fn read_frame(b: &mut BufReader<TcpStream>, wait: std::time::Duration, interruptible: bool) -> Result<(stream::Header, Option<Json>)> {
    let t0 = Instant::now();
    while b.buffer().is_empty() {
        if interruptible && crate::session::interrupted() {
            return Err(Error::new("ECANCELED", "cancelled before the destination restored the process"));
        }
        if t0.elapsed() > wait {
            return Err(Error::new("ETIMEDOUT", format!("the destination did not answer within {} s", wait.as_secs())));
        }
        if sys::poll(&mut [PollFd::new(b.get_ref().as_raw_fd(), sys::POLLIN)], 20) > 0 {
            break;
        }
    }
    let _ = b.get_ref().set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let h = stream::read_header(b)?;
    let body = match h.kind {
        stream::RESTORED | stream::ABORT => Some(stream::read_json_checked(b, &h)?),
        _ => None,
    };
    Ok((h, body))
}

/// The destination's reason for giving up, as an error here.
fn abort_error(body: Option<Json>) -> Error {
    let body = body.unwrap_or_else(Json::obj);
    let code = body.str_of("code").filter(|c| c.len() <= 16 && c.starts_with('E') && c[1..].bytes().all(|b| b.is_ascii_uppercase()));
    // Codes are &'static; the engine process is short-lived, so one leaked string is fine.
    let code: &'static str = code.map(|c| &*Box::leak(c.to_string().into_boxed_str())).unwrap_or("ERESTORE");
    Error::new(code, format!("the destination gave up: {}", body.str_of("message").unwrap_or("no reason given")))
}

/// Unmap the big anonymous areas of a frozen copy that is about to be
/// killed, a slice at a time. Freeing a large address space at once (as
/// exit does) stalls the whole machine for tens of milliseconds on some
/// hosts, which a process just restored on the same host would feel as
/// downtime; spread out, the same work goes unnoticed.
fn release_memory_gently(f: &Frozen) {
    const SLICE: u64 = 16 << 20;
    for p in f.live() {
        // An unmap of an area registered with UFFD_FEATURE_EVENT_UNMAP waits
        // until the process's handler reads the event: it never will.
        if crate::anonfd::userfaultfd::held_by(p.pid).is_some() {
            continue;
        }
        let leader = match p.threads.first() {
            Some(t) => t,
            None => continue,
        };
        let insn = match find_syscall_insn(p.pid) {
            Ok(i) => i,
            Err(_) => continue,
        };
        let vmas = memory::vmas(p.pid).unwrap_or_default();
        let mut inj = match Injector::new(p.pid, leader.tid, insn, leader.regs.rewound(true), leader.sigmask) {
            Ok(i) => i,
            Err(_) => continue,
        };
        // Only what frees memory is spread out: a slice that freed nothing
        // (a sparse reservation, 64 GiB of which 64 MiB were touched) doubles
        // the next one, instead of 4096 slices and sleeps (14 s).
        let mut rss = resident_bytes(p.pid);
        for v in vmas.iter().filter(|v| matches!(v.kind, memory::Kind::Anon | memory::Kind::Heap) && !v.shared && v.end - v.start > SLICE) {
            let mut a = v.start;
            let mut slice = SLICE;
            while a < v.end {
                let len = (v.end - a).min(slice);
                if inj.raw(crate::sys::nr::MUNMAP, &[a, len]).is_err() {
                    break;
                }
                a += len;
                let now = resident_bytes(p.pid);
                if rss.saturating_sub(now) >= SLICE / 4 {
                    slice = SLICE;
                    std::thread::sleep(std::time::Duration::from_micros(1500));
                } else {
                    slice = (slice * 2).min(1 << 30);
                }
                rss = now;
            }
        }
        let _ = inj.finish();
    }
}

/// Resident memory of `pid` in bytes (/proc/PID/statm), 0 if unknown.
fn resident_bytes(pid: Pid) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/statm", pid)).ok().and_then(|s| s.split_whitespace().nth(1).and_then(|x| x.parse::<u64>().ok())).unwrap_or(0) * PAGE_SIZE
}

/// Each tracked process's current layout and the pages a round must send:
/// everything present in round 0, the pages written since the last round
/// after; everything present for the `fresh` processes (not tracked: new
/// since the stubs were made; their areas read at the freeze).
/// `shmem`: given in round 0 and after unseen writers, for the sweep of
/// shared memory objects (shmem.rs); otherwise what trackers saw is all
/// that changed.
/// `vm_flags`: in the final round, the areas' flags read before the freeze.
fn collect(trackers: &mut [Tracker], first: bool, fresh: &[(Pid, Vec<Vma>)], layouts: &mut send::Layouts, mut shmem: Option<&mut crate::shmem::Sent>, vm_flags: Option<&dump::VmFlags>) -> Result<Vec<ProcessRound>> {
    let mut work = Vec::new();
    for (pid, vmas) in fresh {
        let mut pages = present_pages(*pid, vmas)?;
        if let Some(sh) = shmem.as_deref_mut() {
            memory::add_pages(&mut pages, sh.unsent(*pid, vmas));
        }
        layouts.remove(pid);
        let mut vmas = vmas.clone();
        layouts.mark_commit_flags(*pid, &mut vmas, vm_flags.and_then(|f| f.get(pid)));
        work.push(ProcessRound { pid: *pid, vmas, pages, keep: Vec::new(), same_layout: false });
    }
    for t in trackers.iter_mut() {
        let pid = t.pid();
        match collect_one(t, first, layouts, shmem.as_deref_mut(), vm_flags.and_then(|f| f.get(&pid))) {
            Ok(w) => work.push(w),
            // Exited meanwhile: nothing to send; its tracker goes in the
            // next round, its stub at the final one.
            Err(_) if proc::exited(pid) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(work)
}

fn collect_one(t: &mut Tracker, first: bool, layouts: &mut send::Layouts, shmem: Option<&mut crate::shmem::Sent>, vm_flags: Option<&std::collections::HashMap<u64, String>>) -> Result<ProcessRound> {
    let pid = t.pid();
    let mut vmas = memory::vmas(pid)?;
    layouts.mark_commit_flags(pid, &mut vmas, vm_flags);
    let mut pages = Vec::new();
    t.collect(&vmas, &mut pages)?;
    if first {
        // Round 0 sends everything present; tracking was armed before, so
        // writes during this copy show up in the next round.
        pages = present_pages(pid, &vmas)?;
    }
    if let Some(sh) = shmem {
        memory::add_pages(&mut pages, sh.unsent(pid, &vmas));
    }
    // What the destination may keep of its copy: nothing in round 0.
    let keep = if first { Vec::new() } else { t.kept().to_vec() };
    let same_layout = !first && layouts.unchanged(pid, &vmas, &keep);
    Ok(ProcessRound { pid, vmas, pages, keep, same_layout })
}

/// cminflt of /proc/PID/stat: minor faults of its children it has reaped.
fn reaped_faults(pid: Pid) -> u64 {
    proc::stat(pid).map(|(_, f)| proc::stat_u64(&f, 11)).unwrap_or(0)
}

fn present_pages(pid: Pid, vmas: &[Vma]) -> Result<Vec<u64>> {
    let mut pages = Vec::new();
    let pm = File::open(format!("/proc/{}/pagemap", pid)).map_err(|e| Error::from(e).context("pagemap"))?;
    for v in vmas.iter().filter(|v| v.stores_pages()) {
        memory::present_pages(&pm, v, &mut pages)?;
    }
    Ok(pages)
}
