//! Destination side of a live migration: stubs are created up front and
//! their address spaces are built and filled while pre-copy runs, so the
//! frozen window holds only the last dirty pages and the non-memory state.

use super::send;
use super::stream;
use crate::ffi::error_json;
use crate::files;
use crate::inject::open_mem;
use crate::json::Json;
use crate::memory::Vma;
use crate::ops::ok;
use crate::restore::{self, Tree};
use crate::standin;
use crate::session::Engine;
use crate::sys::{Error, Pid, Result, PAGE_SIZE};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct DestEngine {
    tree: Option<Tree>,
    sock: Option<BufReader<TcpStream>>,
    mems: HashMap<Pid, File>,
    /// The restored objects, kept until the commit: see Opened::silence_tcp.
    opened: Option<files::Opened>,
    pool: send::Pool,
    rounds: u64,
}

impl DestEngine {
    fn prepare(&mut self, req: &Json) -> Result<Json> {
        let layout = req.get("layout").ok_or_else(|| Error::new("EINVAL", "dest_prepare needs a layout"))?;
        let procs = layout.arr_of("processes");
        if procs.is_empty() {
            return Err(Error::new("EINVAL", "the layout names no process"));
        }
        // Pids taken here (always so when source and destination are one
        // host) are kept inside a new pid namespace, unless told otherwise.
        let pid_ns = match req.get("pid_ns").and_then(Json::as_bool) {
            Some(b) => b,
            None => restore::any_pid_taken(procs).is_some(),
        };
        if !pid_ns {
            if let Some(t) = restore::any_pid_taken(procs) {
                return Err(Error::new("EPIDTAKEN", format!("pid {} is already in use on the destination{}", t, crate::proc::why_taken(t))));
            }
        }
        let mut tree = restore::create_stubs(procs, pid_ns, None)?;
        for (p, s) in restore::live_procs(procs).iter().zip(tree.stubs.iter_mut()) {
            let r = restore::vmas_of(p)
                .map(|v| v.into_iter().filter(|v| !needs_restored_object(v)).collect::<Vec<_>>())
                .and_then(|v| restore::apply_layout(s, &v, None))
                .and_then(|_| open_mem(s.host, true));
            match r {
                Ok(m) => {
                    self.mems.insert(s.pid, m);
                }
                Err(e) => {
                    tree.discard();
                    return Err(e);
                }
            }
        }
        self.tree = Some(tree);
        Ok(ok().with("pid_ns", pid_ns))
    }

    /// The page stream comes with the first request that reads it, claimed
    /// by the agent's page listener (HELLO and token already checked there).
    fn accept(&mut self, timeout: Duration) -> Result<()> {
        if self.sock.is_some() {
            return Ok(());
        }
        let fd = crate::session::take_passed_fd().ok_or_else(|| Error::new("ESESSION", "no page stream was handed to this session"))?;
        let s = unsafe { <TcpStream as std::os::unix::io::FromRawFd>::from_raw_fd(fd.into_raw()) };
        let _ = s.set_read_timeout(Some(timeout));
        // Small: most of a page frame's payload bypasses it, read straight into a pool buffer.
        self.sock = Some(BufReader::with_capacity(64 << 10, s));
        Ok(())
    }

    /// Receive frames up to the next round end; returns (pages, whether it
    /// was the final round). This thread reads and sums the frames and
    /// applies layouts; another writes the pages into the stubs
    /// (process_vm_writev), so the copy off the socket and the copy into
    /// the stubs overlap.
    fn receive_round(&mut self, timeout: Duration) -> Result<(u64, bool)> {
        self.accept(timeout)?;
        let tree = self.tree.as_mut().ok_or_else(|| Error::new("ESESSION", "not prepared"))?;
        let r = self.sock.as_mut().ok_or_else(|| Error::new("ESESSION", "no page stream"))?;
        let _ = r.get_ref().set_read_timeout(Some(timeout));
        let mems = &self.mems;
        let pool = &mut self.pool;
        let (mut bufs, free_tx) = send::Buffers::lend(pool);
        let (tx, rx) = std::sync::mpsc::sync_channel::<PageWrite>(send::DEPTH);
        let t0 = Instant::now();
        let (received, written) = std::thread::scope(|s| {
            let writer = s.spawn(move || -> Result<()> {
                for w in rx {
                    write_pages(w.host, mems.get(&w.pid), w.addr, &w.buf[..w.len])?;
                    let _ = free_tx.send(w.buf);
                }
                Ok(())
            });
            let received = read_round(r, tree, &tx, &mut bufs);
            drop(tx);
            let written = writer.join().unwrap_or_else(|_| Err(Error::new("EPANIC", "the page writer failed")));
            (received, written)
        });
        bufs.restore(pool);
        // A failed write is the cause when both failed (the reader only saw the writer stop).
        written?;
        let (pages, last) = received?;
        if crate::inject::debug() {
            eprintln!("phaul: dest round: {} pages in {:?}", pages, t0.elapsed());
        }
        self.rounds += 1;
        Ok((pages, last))
    }

    fn restore(&mut self, req: &Json, timeout: Duration) -> Result<Json> {
        let t0 = Instant::now();
        crate::sys::trace_mark("dest: restore requested");
        // While the source freezes and collects the final pages: the first
        // call into a stub that has waited a while costs 1-5 ms on this
        // machine (0.1-0.2 ms each next). (A call that maps nothing: the
        // final round may still lay areas anywhere.)
        if let Some(t) = self.tree.as_mut() {
            for s in t.stubs.iter_mut() {
                s.leader.call("getpid", crate::sys::nr::GETPID, &[])?;
            }
        }
        crate::sys::trace_mark("dest: stubs warmed");
        let (pages, last) = self.receive_round(timeout)?;
        crate::sys::trace_mark("dest: final round received");
        if !last {
            return Err(Error::new("EPROTO", "page stream: the final round was not marked final"));
        }
        // The state follows the final round on the page stream; a state given
        // with the request (older sources) is used as is.
        let streamed;
        // Processes whose final layout is in place already (early_layout),
        // and those of them settled too (restore::settle_process), each
        // while no further entry was waiting: the entries' arrival paces
        // the frozen window, and settling takes 0.3-1.9 ms a process.
        let mut laid = std::collections::HashSet::new();
        let mut settled = std::collections::HashSet::new();
        let state = match req.get("state") {
            Some(s) => s,
            None => {
                let r = self.sock.as_mut().ok_or_else(|| Error::new("ESESSION", "no page stream"))?;
                let tree = self.tree.as_mut().ok_or_else(|| Error::new("ESESSION", "not prepared"))?;
                let mut next = 0;
                streamed = read_state(r, &mut |ev, procs| match ev {
                    Arrival::Entry => {
                        let Some(p) = procs.last() else { return Ok(false) };
                        if early_layout(tree, p)? {
                            laid.insert(restore::pid_of(p)?);
                        }
                        Ok(true)
                    }
                    Arrival::Nothing => {
                        while let Some(p) = procs.get(next) {
                            next += 1;
                            let pid = restore::pid_of(p)?;
                            if !laid.contains(&pid) || !restore::settles_early(p) {
                                continue;
                            }
                            if let Some(s) = tree.stub_mut(pid) {
                                restore::settle_process(p, s).map_err(|e| e.context(format!("restoring process {}", pid)))?;
                                settled.insert(pid);
                                return Ok(true);
                            }
                        }
                        Ok(false)
                    }
                })?;
                crate::sys::trace_mark("dest: state received");
                &streamed
            }
        };
        let recv_us = t0.elapsed().as_micros() as u64;
        // The pages are written: from here this thread injects into the
        // stubs, on its own CPU (pin.rs; restore::finish_tree unpins).
        if let Some(t) = self.tree.as_ref() {
            crate::pin::pin(t.stubs.iter().map(|s| s.host));
        }
        let pid_ns = self.tree.as_ref().map(|t| t.pid_ns).unwrap_or(false);
        restore::preflight(state, true)?;
        let _ = pid_ns;
        let live = restore::live_procs(state.arr_of("processes"));
        let procs = &live[..];
        crate::sys::trace_mark("dest: preflight done");
        self.opened = Some(files::open_all(state.arr_of("files"), state.arr_of("pipes"))?);
        crate::sys::trace_mark("dest: files opened");
        let tree = self.tree.as_mut().ok_or_else(|| Error::new("ESESSION", "not prepared"))?;
        let opened = self.opened.as_mut().ok_or_else(|| Error::new("EPANIC", "restored objects lost"))?;
        let helpers = standin::make(tree, state, procs)?;
        let mut hosts = tree.host_map();
        hosts.extend(helpers.entries.iter().copied());
        opened.open_proc_entries(state.arr_of("files"), hosts)?;
        let opened = &*opened;
        if procs.len() != tree.stubs.len() {
            return Err(Error::new("EPROTO", "the final state does not match the prepared processes"));
        }
        for (p, s) in procs.iter().zip(tree.stubs.iter_mut()) {
            if restore::pid_of(p)? != s.pid {
                return Err(Error::new("EPROTO", "the final state does not match the prepared processes"));
            }
            if !laid.contains(&s.pid) {
                lay_out(s, &restore::vmas_of(p)?)?;
            }
            crate::sys::trace_mark("dest: layout applied");
            restore::finish_process(p, s, opened, settled.contains(&s.pid)).map_err(|e| e.context(format!("restoring process {}", s.pid)))?;
        }
        if let Some(o) = self.opened.as_mut() {
            o.release_pipes();
            o.seek_proc_entries(state.arr_of("files"))?;
        }
        standin::end(tree, &helpers)?;
        // Held: the processes run only once the source has let go (commit_on_stream).
        let hold = req.bool_of("hold");
        crate::sys::trace_mark("dest: processes finished");
        restore::finish_tree(procs, tree, hold)?;
        crate::sys::trace_mark("dest: restored (held)");
        if !hold {
            self.tree = None;
        }
        let pid = restore::pid_of(&procs[0])?;
        let report = ok()
            .with("pid", pid)
            .with("pid_ns", pid_ns)
            .with("pages", pages)
            .with("bytes", pages * PAGE_SIZE)
            .with("recv_us", recv_us)
            .with("restore_us", t0.elapsed().as_micros() as u64);
        if hold && req.bool_of("commit") {
            return self.commit_on_stream(report, timeout_of_key(req, "commit_timeout_ms", 30_000));
        }
        Ok(report.with("held", hold).with("session_done", !hold))
    }

    /// The end agreed engine to engine (stream::RESTORED): report the held
    /// copy, let it run on the source's COMMIT and answer COMMITTED. Silence
    /// or a closed stream means the source resumed its copy: ours is killed.
    /// This runs to its end even if our agent dies meanwhile, so that a
    /// source that committed never faces a copy discarded behind its back.
    fn commit_on_stream(&mut self, report: Json, wait: Duration) -> Result<Json> {
        let r = self.sock.as_mut().ok_or_else(|| Error::new("ESESSION", "no page stream"))?;
        stream::write_json_checked(r.get_mut(), stream::RESTORED, 0, &report)
            .and_then(|_| r.get_mut().flush().map_err(|e| Error::from(e).context("page stream")))?;
        crate::sys::trace_mark("dest: restored reported");
        let _ = r.get_ref().set_read_timeout(Some(wait));
        let h = stream::read_header(r).map_err(|e| match e.code {
            "ETIMEDOUT" => Error::new("ETIMEDOUT", format!("the source did not commit within {} s; its copy runs there", wait.as_secs())),
            _ => Error::new("ECONNRESET", format!("the source closed the page stream instead of committing ({}); its copy runs there", e.message)),
        })?;
        if h.kind != stream::COMMIT {
            return Err(Error::new("EPROTO", format!("page stream: frame kind {} where the commit was expected", h.kind)));
        }
        crate::sys::trace_mark("dest: commit received");
        let t0 = Instant::now();
        let tree = self.tree.as_mut().ok_or_else(|| Error::new("ESESSION", "nothing restored to commit"))?;
        restore::release(tree)?;
        self.tree = None;
        self.opened = None;
        crate::sys::trace_mark("dest: committed");
        // The copy runs now, whatever happens to this answer.
        let answered = self.sock.as_mut().map(|r| stream::write_signal(r.get_mut(), stream::COMMITTED));
        self.sock = None;
        Ok(report
            .with("committed", true)
            .with("answered", matches!(answered, Some(Ok(()))))
            .with("commit_us", t0.elapsed().as_micros() as u64)
            .with("session_done", true))
    }
}

fn timeout_of(req: &Json) -> Duration {
    timeout_of_key(req, "timeout_ms", 30_000)
}

fn timeout_of_key(req: &Json, key: &str, default_ms: u64) -> Duration {
    Duration::from_millis(req.u64_of(key).unwrap_or(default_ms).clamp(10, 3_600_000))
}

impl Engine for DestEngine {
    fn handle(&mut self, req: &Json, done: &mut bool) -> Json {
        let op = req.str_of("op").unwrap_or("");
        let r = match op {
            "dest_prepare" => self.prepare(req),
            "dest_round" => {
                crate::sys::set_thread_nice(super::source::PRECOPY_NICE);
                let t0 = Instant::now();
                let round = self.rounds;
                self.receive_round(timeout_of(req))
                    .map(|(pages, _)| ok().with("round", round).with("pages", pages).with("bytes", pages * PAGE_SIZE).with("ms", t0.elapsed().as_secs_f64() * 1000.0))
            }
            "dest_restore" => {
                crate::sys::set_thread_nice(super::source::FROZEN_NICE);
                crate::sys::set_thread_realtime(true);
                let r = self.restore(req, timeout_of(req));
                crate::pin::unpin_all();
                r
            }
            "dest_abort" => {
                self.abandon();
                Ok(ok().with("session_done", true))
            }
            op => Err(Error::new("EREQUEST", format!("{} is not a destination operation", op))),
        };
        match r {
            Ok(j) => {
                if j.bool_of("session_done") {
                    *done = true;
                }
                j
            }
            Err(e) => {
                // Any failure ends the migration here: nothing half-built
                // survives, and a source waiting for our report hears why.
                if let Some(r) = self.sock.as_mut() {
                    let _ = stream::write_json_checked(r.get_mut(), stream::ABORT, 0, &error_json(&e)).and_then(|_| r.get_mut().flush().map_err(Error::from));
                }
                self.abandon();
                *done = true;
                error_json(&e).with("session_done", true)
            }
        }
    }

    fn abandon(&mut self) {
        if let Some(o) = self.opened.take() {
            o.silence_tcp();
        }
        if let Some(mut t) = self.tree.take() {
            t.discard();
        }
        self.sock = None;
    }
}

/// Pages for the writer thread: the first `len` bytes of a pool buffer,
/// which comes back once written.
struct PageWrite {
    pid: Pid,
    host: Pid,
    addr: u64,
    buf: Vec<u8>,
    len: usize,
}

/// The ranges a LAYOUT lets us keep our copy of (send::layout_json),
/// sorted; None from a source that does not say (then every compatible
/// mapping is kept).
fn keep_of(items: &[Json], vmas: &[Vma]) -> Result<Option<Vec<(u64, u64)>>> {
    if items.is_empty() || items.iter().any(|i| i.get("keep").is_none()) {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (i, v) in items.iter().zip(vmas) {
        for k in i.arr_of("keep") {
            let r = k.as_arr();
            match (r.first().and_then(Json::as_u64), r.get(1).and_then(Json::as_u64)) {
                (Some(s), Some(e)) if r.len() == 2 && v.start <= s && s < e && e <= v.end && s % PAGE_SIZE == 0 && e % PAGE_SIZE == 0 => out.push((s, e)),
                _ => return Err(Error::new("EPROTO", format!("page stream: bad kept range in the layout of area {:#x}-{:#x}", v.start, v.end))),
            }
        }
    }
    out.sort_unstable();
    Ok(Some(out))
}

fn writer_stopped() -> Error {
    Error::new("EPROTO", "page stream: the pages could not be written")
}

/// Read one round's frames off the stream, checking its sum at the round
/// end. Layouts are applied here, by the thread that traces the stubs
/// (ptrace answers only the thread that attached), once the pages before
/// them are written: an area they unmap or replace has its pages first.
fn read_round(r: &mut BufReader<TcpStream>, tree: &mut Tree, tx: &std::sync::mpsc::SyncSender<PageWrite>, bufs: &mut send::Buffers) -> Result<(u64, bool)> {
    let mut pages = 0;
    // Every frame of the round, headers and payloads, is summed; the round
    // end carries the source's sum: a damaged stream fails the round.
    let mut sum = stream::RoundSum::new();
    loop {
        let h = stream::read_header(r)?;
        if h.kind != stream::ROUND_END {
            sum.add_header(&h);
        }
        match h.kind {
            stream::LAYOUT => {
                let j = stream::read_json_summed(r, &h, &mut sum)?;
                let vmas = j.as_arr().iter().map(Vma::from_json).collect::<Result<Vec<_>>>()?;
                let keep = keep_of(j.as_arr(), &vmas)?;
                // Areas backed by a memfd or an unlinked file are mapped from
                // the restored object, which exists only at the final restore;
                // their contents live in that object, not in the page stream.
                // A private mapping of a removed file (an upgraded program or
                // library) has pages of its own that are: they land in an
                // anonymous placeholder until the object exists (restore.rs).
                let mut placeholders = Vec::new();
                let vmas: Vec<Vma> = vmas
                    .into_iter()
                    .filter_map(|v| match needs_restored_object(&v) {
                        false => Some(v),
                        true if !v.shared && !v.path.starts_with("/memfd:") => {
                            placeholders.push((v.start, v.end));
                            Some(Vma { kind: crate::memory::Kind::Anon, path: String::new(), pgoff: 0, dev: 0, ino: 0, ..v })
                        }
                        true => None,
                    })
                    .collect();
                let st = tree.stub_mut(h.pid as Pid).ok_or_else(|| Error::new("EPROTO", format!("page stream: layout for unknown process {}", h.pid)))?;
                if !bufs.drain() {
                    return Err(writer_stopped());
                }
                restore::apply_layout(st, &vmas, keep.as_deref())?;
                st.placeholders = placeholders;
            }
            stream::TREE => {
                let j = stream::read_json_summed(r, &h, &mut sum)?;
                let gone: Vec<Pid> = j.arr_of("gone").iter().filter_map(Json::as_i64).map(|p| p as Pid).collect();
                if !bufs.drain() {
                    return Err(writer_stopped());
                }
                restore::reshape(tree, &gone, j.arr_of("processes"))?;
                crate::sys::trace_mark("dest: reshaped");
            }
            stream::PAGES => {
                let len = h.payload_len();
                let st = tree.stub_mut(h.pid as Pid).ok_or_else(|| Error::new("EPROTO", format!("page stream: pages for unknown process {}", h.pid)))?;
                st.note_placeholder_pages(h.addr, h.count as u64 * crate::sys::PAGE_SIZE);
                let (pid, host) = (st.pid, st.host);
                let mut buf = bufs.get().ok_or_else(writer_stopped)?;
                r.read_exact(&mut buf[..len]).map_err(|e| Error::new("ECONNRESET", format!("page stream broke mid-frame: {}", e)))?;
                sum.add(&buf[..len]);
                tx.send(PageWrite { pid, host, addr: h.addr, buf, len }).map_err(|_| writer_stopped())?;
                pages += h.count as u64;
            }
            stream::ROUND_END => {
                if h.pid != sum.finish() {
                    return Err(Error::new("EPROTO", format!("page stream: round {} arrived damaged (checksum mismatch)", h.addr)));
                }
                return Ok((pages, h.count != 0));
            }
            _ => return Err(Error::new("EPROTO", "page stream: unexpected frame")),
        }
    }
}

/// Write a frame's pages into the stub. process_vm_writev pins pages in
/// batches (fast on fresh memory, where /proc/PID/mem faults one page per
/// call); it refuses read-only areas, which /proc/PID/mem writes through.
fn write_pages(host: Pid, mem: Option<&File>, addr: u64, data: &[u8]) -> Result<()> {
    let local = [data.as_ptr() as u64, data.len() as u64];
    let remote = [addr, data.len() as u64];
    let r = unsafe { crate::sys::raw(crate::sys::nr::PROCESS_VM_WRITEV, &[host as u64, local.as_ptr() as u64, 1, remote.as_ptr() as u64, 1, 0]) };
    if let Ok(n) = r {
        if n as usize == data.len() {
            return Ok(());
        }
    }
    // A stub made in the final round (stream::TREE) has no file opened yet.
    let opened;
    let mem = match mem {
        Some(m) => m,
        None => {
            opened = open_mem(host, true)?;
            &opened
        }
    };
    mem.write_all_at(data, addr).map_err(|e| Error::new("EPROTO", format!("page stream: pages at {:#x} outside the process's memory: {}", addr, e)))
}

/// A process's final layout, applied as soon as its entry of the state
/// arrives, while the source dumps the next (0.6-0.9 ms a PostgreSQL
/// process). Not where an area is mapped from an object the files of the
/// state restore (those are opened once the whole state is here).
/// Returns whether it was applied.
fn early_layout(tree: &mut Tree, p: &Json) -> Result<bool> {
    if restore::is_zombie(p) {
        return Ok(false);
    }
    let vmas = restore::vmas_of(p)?;
    if vmas.iter().any(needs_restored_object) {
        return Ok(false);
    }
    let Some(s) = tree.stub_mut(restore::pid_of(p)?) else { return Ok(false) };
    lay_out(s, &vmas)?;
    crate::sys::trace_mark("dest: layout applied early");
    Ok(true)
}

/// A process's final layout, keeping what its placeholder areas hold.
fn lay_out(s: &mut restore::Stub, vmas: &[Vma]) -> Result<()> {
    let saved = restore::save_placeholder_pages(s)?;
    restore::apply_layout(s, vmas, None)?;
    restore::put_back_placeholder_pages(s, saved)
}

fn needs_restored_object(v: &Vma) -> bool {
    v.kind == crate::memory::Kind::File && (v.path.starts_with("/memfd:") || v.path.ends_with(" (deleted)"))
}

/// What `read_state` tells its caller: an entry came (the last of those
/// given), or nothing is waiting on the stream (the caller may work on
/// what came; it returns whether it did anything).
enum Arrival {
    Entry,
    Nothing,
}

/// The final state from the page stream: the processes' entries, each in a
/// frame of its own as the source dumped them (read and parsed while it
/// dumps the next), then the rest.
fn read_state(r: &mut BufReader<TcpStream>, on: &mut dyn FnMut(Arrival, &[Json]) -> Result<bool>) -> Result<Json> {
    let mut procs = Vec::new();
    loop {
        while !stream::waiting(r) && on(Arrival::Nothing, &procs)? {}
        let h = stream::read_header(r)?;
        match h.kind {
            stream::STATE_PROCESS => {
                procs.push(stream::read_json_checked(r, &h)?);
                on(Arrival::Entry, &procs)?;
            }
            stream::STATE => {
                let mut state = stream::read_json_checked(r, &h)?;
                if let Some(n) = state.u64_of("processes_streamed") {
                    if n != procs.len() as u64 {
                        return Err(Error::new("EPROTO", format!("page stream: the final state announces {} processes and {} came", n, procs.len())));
                    }
                    state.set("processes", procs);
                } else if !procs.is_empty() {
                    return Err(Error::new("EPROTO", "page stream: process entries came with a final state that does not expect them"));
                }
                return Ok(state);
            }
            _ => return Err(Error::new("EPROTO", "page stream: expected the final state after the final round")),
        }
    }
}
