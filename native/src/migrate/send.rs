//! Sending a round on the page stream: one thread reads pages out of the
//! process (process_vm_readv) and sums them while another writes the
//! previous frames to the socket, so the copy out of the process and the
//! copy into the socket overlap instead of taking turns.

use super::stream;
use crate::dirty::{Method, Tracker};
use crate::inject::open_mem;
use crate::json::Json;
use crate::memory::{Kind, Vma};
use crate::shmem::Sent;
use crate::sys::{self, Error, Pid, Result, PAGE_SIZE};
use std::io::{BufWriter, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};

/// Frames in flight between the reader and the writer. Reused round after
/// round: fresh memory costs a page fault per page on first touch.
pub const DEPTH: usize = 8;
/// Pages per frame sent: 256 KiB runs keep the buffers in the CPU cache (1 MiB ones read a fifth slower).
const FRAME_PAGES: usize = 64;
const FRAME: usize = stream::HEADER + stream::MAX_PAGES as usize * PAGE_SIZE as usize;

/// One process's part of a round: its layout, the pages to send, and the
/// ranges where the destination's copy is still valid (Tracker::kept):
/// anywhere else the destination maps the area anew before the pages come.
pub struct ProcessRound {
    pub pid: Pid,
    pub vmas: Vec<Vma>,
    pub pages: Vec<u64>,
    pub keep: Vec<(u64, u64)>,
    /// The destination has this layout already, and keeps its copy of
    /// every area: no LAYOUT frame (a tree of 7 postgres processes of 247
    /// areas each spent milliseconds of its frozen window on them).
    pub same_layout: bool,
}

/// Each process's layout as last sent to the destination.
#[derive(Default)]
pub struct Layouts(std::collections::HashMap<Pid, Vec<Vma>>);

impl Layouts {
    /// Whether `vmas` is the layout last sent for `pid` and `keep` covers
    /// every area whose pages are streamed (the destination then has
    /// nothing to change); records `vmas` as sent either way.
    pub fn unchanged(&mut self, pid: Pid, vmas: &[Vma], keep: &[(u64, u64)]) -> bool {
        let same = self.0.get(&pid).is_some_and(|old| old.as_slice() == vmas) && vmas.iter().filter(|v| v.stores_pages()).all(|v| crate::memory::subtract((v.start, v.end), crate::memory::ranges_overlapping(keep, v.start, v.end)).is_empty());
        self.0.insert(pid, vmas.to_vec());
        same
    }

    /// Give the private anonymous areas of `vmas` their commit flags
    /// (memory::commit_flags): the destination maps them so from the first
    /// round, the only time it maps them (a runtime's PROT_NONE reservation
    /// mapped without MAP_NORESERVE differs in smaps, and merges with a
    /// neighbour it did not merge with on the source). An area of the last layout sent keeps what
    /// was found then; smaps, slow, is read only when there are new ones.
    /// `read`: the flags read before the final freeze (smaps of a frozen
    /// process would be read in the frozen window).
    pub fn mark_commit_flags(&self, pid: Pid, vmas: &mut [Vma], read: Option<&std::collections::HashMap<u64, String>>) {
        let old = self.0.get(&pid).map(Vec::as_slice).unwrap_or(&[]);
        let private_anon = |v: &Vma| matches!(v.kind, Kind::Anon | Kind::Heap | Kind::Stack) && !v.shared;
        let mut unknown = Vec::new();
        for (i, v) in vmas.iter_mut().enumerate().filter(|(_, v)| private_anon(v)) {
            match crate::memory::areas_overlapping(old, v.start, v.end).iter().find(|o| o.start == v.start && o.end == v.end) {
                Some(o) => v.flags = o.flags.clone(),
                None => unknown.push(i),
            }
        }
        if unknown.is_empty() {
            return;
        }
        let now;
        let flags = match read {
            Some(f) => f,
            None => {
                let starts: Vec<u64> = unknown.iter().map(|&i| vmas[i].start).collect();
                let Ok(f) = crate::proc::vm_flags_covering(pid, &starts) else { return };
                now = f;
                &now
            }
        };
        for i in unknown {
            vmas[i].flags = flags.get(&vmas[i].start).map(|f| crate::memory::commit_flags(f)).unwrap_or_default();
        }
    }

    pub fn remove(&mut self, pid: &Pid) {
        self.0.remove(pid);
    }

    /// The layout last sent for `pid`.
    pub fn last(&self, pid: Pid) -> Option<&[Vma]> {
        self.0.get(&pid).map(Vec::as_slice)
    }
}

/// Frame buffers kept by a session between rounds.
#[derive(Default)]
pub struct Pool(Vec<Vec<u8>>);

/// A round's frame buffers, shared by the thread that fills them and the
/// one that empties them: those at hand, and those coming back once used.
/// Both ends of the page stream run a round this way.
pub struct Buffers {
    spare: Vec<Vec<u8>>,
    back: Receiver<Vec<u8>>,
}

impl Buffers {
    /// Every buffer of the pool (DEPTH of a frame each, header included),
    /// and where the other thread gives them back.
    pub fn lend(pool: &mut Pool) -> (Buffers, Sender<Vec<u8>>) {
        while pool.0.len() < DEPTH {
            pool.0.push(vec![0u8; FRAME]);
        }
        let (tx, rx) = channel();
        (Buffers { spare: std::mem::take(&mut pool.0), back: rx }, tx)
    }

    /// A buffer at hand, else the next one given back; None once the other
    /// thread has stopped.
    pub fn get(&mut self) -> Option<Vec<u8>> {
        self.spare.pop().or_else(|| self.back.recv().ok())
    }

    /// Wait until every buffer is back (all frames handed over are done);
    /// false if the other thread stopped first.
    pub fn drain(&mut self) -> bool {
        while self.spare.len() < DEPTH {
            match self.back.recv() {
                Ok(b) => self.spare.push(b),
                Err(_) => return false,
            }
        }
        true
    }

    /// Back into the pool, once the other thread is joined.
    pub fn restore(mut self, pool: &mut Pool) {
        self.spare.extend(self.back.try_iter());
        pool.0.extend(self.spare);
    }
}

/// What the writer thread is handed, in stream order.
enum Out {
    /// Small frames (layouts, the round end), written as they are.
    Bytes(Vec<u8>),
    /// A pool buffer holding `len` bytes of a page frame; it goes back after the write.
    Frame(Vec<u8>, usize),
}

/// Where the reader puts a frame. Fails when the writer has stopped (its error is reported by the join).
struct Sink {
    tx: SyncSender<Out>,
    bufs: Buffers,
}

impl Sink {
    fn buffer(&mut self) -> Result<Vec<u8>> {
        self.bufs.get().ok_or_else(stopped)
    }
    fn put(&self, o: Out) -> Result<()> {
        self.tx.send(o).map_err(|_| stopped())
    }
}

fn stopped() -> Error {
    Error::new("ECONNRESET", "page stream to the destination broke")
}

fn broke(e: std::io::Error) -> Error {
    Error::new("ECONNRESET", format!("page stream to the destination broke: {}", e))
}

/// Send one round: the final tree when it changed (`tree`, a TREE frame),
/// for each process its layout and pages, then the round end (which
/// carries the sum of everything before it). Returns the pages sent.
pub fn write_round(w: &mut BufWriter<TcpStream>, pool: &mut Pool, tree: Option<&Json>, work: &[ProcessRound], trackers: &mut [Tracker], shmem: &mut Sent, round: u64, last: bool) -> Result<u64> {
    write_round_after(w, pool, tree, work, trackers, shmem, round, last, stream::RoundSum::new())
}

/// `write_round` of a round whose first pages went ahead (`write_ahead`),
/// summed into `sum`.
#[allow(clippy::too_many_arguments)]
pub fn write_round_after(w: &mut BufWriter<TcpStream>, pool: &mut Pool, tree: Option<&Json>, work: &[ProcessRound], trackers: &mut [Tracker], shmem: &mut Sent, round: u64, last: bool, mut sum: stream::RoundSum) -> Result<u64> {
    write_frames(w, pool, tree, work, trackers, shmem, &mut sum, Some((round, last)))
}

/// Pages of a round sent before the rest of it, without its end: the
/// final round's shared memory found changed just before the freeze goes
/// while the tree still runs. `sum` goes on into the round's other frames.
pub fn write_ahead(w: &mut BufWriter<TcpStream>, pool: &mut Pool, work: &[ProcessRound], trackers: &mut [Tracker], shmem: &mut Sent, sum: &mut stream::RoundSum) -> Result<u64> {
    write_frames(w, pool, None, work, trackers, shmem, sum, None)
}

#[allow(clippy::too_many_arguments)]
fn write_frames(w: &mut BufWriter<TcpStream>, pool: &mut Pool, tree: Option<&Json>, work: &[ProcessRound], trackers: &mut [Tracker], shmem: &mut Sent, sum: &mut stream::RoundSum, end: Option<(u64, bool)>) -> Result<u64> {
    let (bufs, free_tx) = Buffers::lend(pool);
    let (tx, rx) = sync_channel::<Out>(DEPTH);
    let (produced, written) = std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<()> {
            for o in rx {
                match o {
                    Out::Bytes(b) => w.write_all(&b).map_err(broke)?,
                    Out::Frame(b, len) => {
                        w.write_all(&b[..len]).map_err(broke)?;
                        let _ = free_tx.send(b);
                    }
                }
            }
            w.flush().map_err(broke)
        });
        let mut sink = Sink { tx, bufs };
        let produced = crate::memory::identities_memoized(|| produce(&mut sink, tree, work, trackers, shmem, sum, end));
        let Sink { tx, bufs } = sink;
        drop(tx);
        let written = writer.join().unwrap_or_else(|_| Err(Error::new("EPANIC", "the page writer failed")));
        bufs.restore(pool);
        (produced, written)
    });
    // The writer's failure is the cause when both failed (the reader only saw it stop).
    written?;
    produced
}

/// The frames of `work`, then the round's end when `end` (round, last) is given.
fn produce(sink: &mut Sink, tree: Option<&Json>, work: &[ProcessRound], trackers: &mut [Tracker], shmem: &mut Sent, sum: &mut stream::RoundSum, end: Option<(u64, bool)>) -> Result<u64> {
    let mut total = 0;
    if let Some(t) = tree {
        // First: the destination makes and drops stubs before their layouts come.
        let mut b = Vec::new();
        stream::write_json_summed(&mut b, stream::TREE, 0, t, sum)?;
        sink.put(Out::Bytes(b))?;
    }
    for w in work {
        if !w.same_layout {
            let mut layout = Vec::new();
            stream::write_json_summed(&mut layout, stream::LAYOUT, w.pid as u32, &layout_json(&w.vmas, &w.keep), sum)?;
            sink.put(Out::Bytes(layout))?;
        }
        let tracker = trackers.iter_mut().find(|t| t.pid() == w.pid);
        total += send_pages(sink, w, sum, tracker, shmem)?;
    }
    if let Some((round, last)) = end {
        let mut b = Vec::new();
        stream::write_round_end_summed(&mut b, round, last, sum)?;
        sink.put(Out::Bytes(b))?;
    }
    Ok(total)
}

/// A LAYOUT frame's body: the areas, each with `keep`, the parts of it
/// (start, end pairs) the destination's copy stays valid in.
fn layout_json(vmas: &[Vma], keep: &[(u64, u64)]) -> Json {
    Json::Arr(
        vmas.iter()
            .map(|v| {
                let mine = crate::memory::ranges_overlapping(keep, v.start, v.end).iter().map(|k| Json::Arr(vec![Json::from(k.0.max(v.start)), Json::from(k.1.min(v.end))]));
                v.to_json().with("keep", mine.collect::<Vec<_>>())
            })
            .collect(),
    )
}

/// The pages of `w` (sorted addresses), in runs of up to a frame each. The
/// hash tracker is told what was sent, so that the final round resends only
/// pages changed since (not every page seen while running); so is `shmem`,
/// of the pages of shared memory objects.
fn send_pages(sink: &mut Sink, w: &ProcessRound, sum: &mut stream::RoundSum, mut tracker: Option<&mut Tracker>, shmem: &mut Sent) -> Result<u64> {
    let (pid, pages) = (w.pid, &w.pages[..]);
    let hashing = tracker.as_ref().map(|t| t.method() == Method::Hash).unwrap_or(false);
    let objects: Vec<&Vma> = w.vmas.iter().filter(|v| crate::shmem::is_object(v)).collect();
    let mut mem = None;
    let max = FRAME_PAGES;
    let mut sent = 0;
    let mut i = 0;
    while i < pages.len() {
        let mut n = 1;
        while i + n < pages.len() && n < max && pages[i + n] == pages[i] + n as u64 * PAGE_SIZE {
            n += 1;
        }
        let len = n * PAGE_SIZE as usize;
        let mut buf = sink.buffer()?;
        let body = &mut buf[stream::HEADER..stream::HEADER + len];
        if !read_remote(pid, pages[i], body) {
            // Not readable as a whole (unmapped meanwhile, a hole inside the
            // run, an area without read permission): page by page through
            // /proc/PID/mem, which reads through protections; zeros for what is gone.
            if mem.is_none() {
                mem = match open_mem(pid, false) {
                    Ok(m) => Some(m),
                    // Exited during pre-copy: the final round drops it.
                    Err(_) if crate::proc::exited(pid) => None,
                    Err(e) => return Err(e),
                };
            }
            match mem.as_ref() {
                Some(m) => {
                    for k in 0..n {
                        let pg = &mut body[k * PAGE_SIZE as usize..(k + 1) * PAGE_SIZE as usize];
                        if m.read_exact_at(pg, pages[i] + (k as u64) * PAGE_SIZE).is_err() {
                            pg.fill(0);
                        }
                    }
                }
                None => body.fill(0),
            }
        }
        if hashing {
            if let Some(t) = tracker.as_deref_mut() {
                for (k, page) in body.chunks_exact(PAGE_SIZE as usize).enumerate() {
                    if let Ok(page) = <&[u8; 4096]>::try_from(page) {
                        t.note_sent(pages[i] + (k as u64) * PAGE_SIZE, page);
                    }
                }
            }
        }
        if !objects.is_empty() {
            note_shared(shmem, &objects, pages[i], body);
        }
        stream::Header { kind: stream::PAGES, pid: pid as u32, count: n as u32, addr: pages[i] }.encode(&mut buf[..stream::HEADER]);
        sum.add(&buf[..stream::HEADER + len]);
        sink.put(Out::Frame(buf, stream::HEADER + len))?;
        sent += n as u64;
        i += n;
    }
    Ok(sent)
}

/// Tell `shmem` the contents sent of the pages of a run (at `addr`) that
/// are in shared memory objects (`objects`, ascending).
fn note_shared(shmem: &mut Sent, objects: &[&Vma], addr: u64, body: &[u8]) {
    for (k, page) in body.chunks_exact(PAGE_SIZE as usize).enumerate() {
        let a = addr + k as u64 * PAGE_SIZE;
        let i = objects.partition_point(|v| v.end <= a);
        if let (Some(v), Ok(page)) = (objects.get(i).filter(|v| v.start <= a), <&[u8; 4096]>::try_from(page)) {
            shmem.note_sent(v, a, page);
        }
    }
}

/// Copy `out.len()` bytes at `addr` of `pid` in one process_vm_readv (pages
/// pinned in batches: about twice as fast as reading /proc/PID/mem).
fn read_remote(pid: Pid, addr: u64, out: &mut [u8]) -> bool {
    let local = [out.as_mut_ptr() as u64, out.len() as u64];
    let remote = [addr, out.len() as u64];
    matches!(unsafe { sys::raw(sys::nr::PROCESS_VM_READV, &[pid as u64, local.as_ptr() as u64, 1, remote.as_ptr() as u64, 1, 0]) }, Ok(n) if n as usize == out.len())
}
