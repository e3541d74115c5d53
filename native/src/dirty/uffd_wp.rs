//! Asynchronous userfaultfd write-protection (Linux 6.7+), read back with
//! PAGEMAP_SCAN.
//!
//! The userfaultfd is created inside the target (an injected syscall, so its
//! context belongs to the target's mm), copied to us with pidfd_getfd and
//! closed in the target. Every later step is an ioctl on our copy: register
//! areas in WP mode, write-protect them, and each round let PAGEMAP_SCAN
//! report the pages written since and write-protect them again in the same
//! walk (nothing can slip between reading and re-arming). With WP_ASYNC the
//! kernel resolves the write faults itself; nobody reads the descriptor.

use super::pagemap_scan::{Scanner, PAGE_IS_FILE, PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING};
use super::{segments, Segment};
use crate::inject::Injector;
use crate::memory::{Kind, Vma};
use crate::sys::{self, nr, Context, Error, Fd, Pid, Result, PAGE_SIZE};
use std::fs::File;

pub const UFFD_USER_MODE_ONLY: u64 = 1;

pub const UFFD_API: u64 = 0xAA;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 2;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
#[repr(C)]
#[derive(Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}
#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

const fn iowr(ty: u64, n: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (ty << 8) | n
}
pub const UFFDIO_API: u64 = iowr(0xAA, 0x3F, std::mem::size_of::<UffdioApi>());
pub const UFFDIO_REGISTER: u64 = iowr(0xAA, 0x00, std::mem::size_of::<UffdioRegister>());

fn ioctl(fd: &Fd, req: u64, arg: u64) -> std::result::Result<i64, i32> {
    unsafe { sys::raw(nr::IOCTL, &[fd.raw() as u64, req, arg]) }
}

/// UFFDIO_API with the async write-protect features.
fn uffd_api(fd: &Fd) -> Result<()> {
    let mut a = UffdioApi { api: UFFD_API, features: UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, ioctls: 0 };
    ioctl(fd, UFFDIO_API, &mut a as *mut _ as u64).map_err(|e| Error::sys("UFFDIO_API (WP_ASYNC | WP_UNPOPULATED)", e))?;
    Ok(())
}

fn register(fd: &Fd, start: u64, end: u64) -> std::result::Result<(), i32> {
    let mut r = UffdioRegister { range: UffdioRange { start, len: end - start }, mode: UFFDIO_REGISTER_MODE_WP, ioctls: 0 };
    ioctl(fd, UFFDIO_REGISTER, &mut r as *mut _ as u64).map(|_| ())
}

/// Can this kernel do it? A userfaultfd of our own on a page of our own.
pub fn supported() -> bool {
    let Ok(f) = sys::call("userfaultfd", nr::USERFAULTFD, &[(sys::O_CLOEXEC | sys::O_NONBLOCK) as u64 | UFFD_USER_MODE_ONLY]) else { return false };
    let fd = Fd(f as i32);
    if uffd_api(&fd).is_err() {
        return false;
    }
    let Ok(m) = sys::call("mmap", nr::MMAP, &[0, PAGE_SIZE, 3, 0x22, u64::MAX, 0]) else { return false };
    let a = m as u64;
    let ok = (|| {
        register(&fd, a, a + PAGE_SIZE).ok()?;
        let pm = File::open("/proc/self/pagemap").ok()?;
        let mut s = Scanner::new();
        let scan = |s: &mut Scanner| -> Option<usize> {
            let mut n = 0;
            s.scan(&pm, a, a + PAGE_SIZE, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN, PAGE_IS_WRITTEN, true, |r| {
                n += ((r.end - r.start) / PAGE_SIZE) as usize
            })
            .ok()?;
            Some(n)
        };
        unsafe { std::ptr::write_volatile(a as *mut u8, 1) };
        scan(&mut s)?; // arms
        if scan(&mut s)? != 0 {
            return None;
        }
        unsafe { std::ptr::write_volatile(a as *mut u8, 2) };
        (scan(&mut s)? == 1).then_some(())
    })()
    .is_some();
    let _ = sys::call("munmap", nr::MUNMAP, &[a, PAGE_SIZE]);
    ok
}

/// Written pages of [s, e) of the process behind `pagemap`, re-arming them
/// unless `rearm` is false (the last round: nobody reads the marks again,
/// and a walk that changes no page table entry is cheaper frozen time).
fn scan_written(scanner: &mut Scanner, pagemap: &File, s: u64, e: u64, private_file: bool, rearm: bool, out: &mut Vec<u64>) -> std::result::Result<(), i32> {
    let mask = PAGE_IS_WRITTEN;
    // Asking for PAGE_IS_WRITTEN alone takes the kernel's fast path (no
    // per-page category lookup): several times cheaper per page table entry.
    // Only private file mappings need PAGE_IS_FILE.
    let ret = if private_file { PAGE_IS_WRITTEN | PAGE_IS_FILE } else { PAGE_IS_WRITTEN };
    let flags = if rearm { PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC } else { PM_SCAN_CHECK_WPASYNC };
    scanner.scan(pagemap, s, e, flags, mask, ret, true, |r| {
        // Pages of a private file mapping still shared with the file were
        // only read (faulted in): no contents of their own.
        if private_file && r.categories & PAGE_IS_FILE != 0 {
            return;
        }
        let mut a = r.start;
        while a < r.end {
            out.push(a);
            a += PAGE_SIZE;
        }
    })
}

/// PROT_NONE areas this big are never armed (see collect).
const NONE_NEVER_ARMED: u64 = 64 << 30;
/// A smaller PROT_NONE area is armed once it is seen holding more than this.
const NONE_DATA_MAX: usize = 256;

/// Below this much tracked memory one thread scans it all.
const PARALLEL_SCAN_MIN: u64 = 512 << 20;
const SCAN_CHUNK: u64 = 256 << 20;

/// Scan the tracked segments `jobs` (start, end, private file) on a few
/// threads. What a large process's round costs is the walk over every page
/// table entry of its tracked memory (4 GiB, nothing written: ~7 ms on the
/// two CPUs of the test VM), and in the final round that is frozen time; the walks only share the target's mmap
/// lock for reading, so they run side by side. Results come back per job,
/// pages in address order.
fn scan_parallel(pagemap: &File, jobs: &[(u64, u64, bool)], rearm: bool) -> Vec<std::result::Result<Vec<u64>, i32>> {
    let total: u64 = jobs.iter().map(|j| j.1 - j.0).sum();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4);
    if total < PARALLEL_SCAN_MIN || threads < 2 {
        let mut sc = Scanner::new();
        return jobs
            .iter()
            .map(|&(s, e, pf)| {
                let mut v = Vec::new();
                scan_written(&mut sc, pagemap, s, e, pf, rearm, &mut v).map(|_| v)
            })
            .collect();
    }
    // Chunks (job index, start, end), dealt to the threads by size.
    let mut chunks: Vec<(usize, u64, u64, bool)> = Vec::new();
    for (i, &(s, e, pf)) in jobs.iter().enumerate() {
        let mut a = s;
        while a < e {
            let b = (a + SCAN_CHUNK).min(e);
            chunks.push((i, a, b, pf));
            a = b;
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut found: Vec<Option<std::result::Result<Vec<u64>, i32>>> = (0..chunks.len()).map(|_| None).collect();
    let parts: Vec<Vec<(usize, std::result::Result<Vec<u64>, i32>)>> = std::thread::scope(|sc| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                sc.spawn(|| {
                    let mut scanner = Scanner::new();
                    let mut done = Vec::new();
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(_, a, b, pf)) = chunks.get(k) else { break };
                        let mut v = Vec::new();
                        done.push((k, scan_written(&mut scanner, pagemap, a, b, pf, rearm, &mut v).map(|_| v)));
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_default()).collect()
    });
    for (k, r) in parts.into_iter().flatten() {
        found[k] = Some(r);
    }
    let mut out: Vec<std::result::Result<Vec<u64>, i32>> = jobs.iter().map(|_| Ok(Vec::new())).collect();
    for (k, r) in found.into_iter().enumerate() {
        let job = chunks[k].0;
        let r = r.unwrap_or(Err(5)); // a worker that died: report an I/O error for its chunks
        match (&mut out[job], r) {
            (Ok(all), Ok(v)) => all.extend(v),
            (slot @ Ok(_), Err(e)) => *slot = Err(e),
            (Err(_), _) => {}
        }
    }
    out
}

/// The userfaultfd of each live tracker, by process, and the areas it
/// registered at its last collect: a dump at the final freeze must tell the
/// areas phaul registered from the process's own (anonfd::userfaultfd),
/// while the tracker itself is busy elsewhere.
struct Own {
    pid: Pid,
    fd: i32,
    armed: Vec<(u64, u64)>,
}

static OWN: std::sync::Mutex<Vec<Own>> = std::sync::Mutex::new(Vec::new());

/// A copy of the userfaultfd phaul tracks `pid` with, if it does, and the
/// areas (sorted) it registered at its last collect.
pub fn own_uffd(pid: Pid) -> Option<(Fd, Vec<(u64, u64)>)> {
    let own = OWN.lock().unwrap_or_else(|e| e.into_inner());
    let o = own.iter().find(|o| o.pid == pid)?;
    let fd = sys::call("dup(tracking userfaultfd)", nr::FCNTL, &[o.fd as u64, 1030 /* F_DUPFD_CLOEXEC */, 0]).ok().map(|f| Fd(f as i32))?;
    Some((fd, o.armed.clone()))
}

fn note_armed(pid: Pid, fd: i32, armed: &[(u64, u64)]) {
    let mut own = OWN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(o) = own.iter_mut().find(|o| o.pid == pid && o.fd == fd) {
        o.armed = armed.to_vec();
    }
}

pub struct UffdTracker {
    pid: Pid,
    uffd: Fd,
    pagemap: File,
    scanner: Scanner,
    /// Areas that refused registration (start, end, errno), reported wholly each round.
    pub refused: Vec<(u64, u64, i32)>,
    /// False for the last round (see scan_written).
    rearm: bool,
    /// The caller holds the target frozen (at start, and in the last round):
    /// arm_new need not pause it.
    frozen: bool,
    /// Set by collect(): the known segments still registered (Tracker::kept).
    pub kept: Vec<(u64, u64)>,
    /// The areas armed by the previous collect(), one entry per area.
    prev: Vec<(u64, u64)>,
    /// PROT_NONE areas (never armed) the previous collect found empty.
    none_empty: Vec<(u64, u64)>,
    /// PROT_NONE areas found holding more than NONE_DATA_MAX pages: armed
    /// as any other area (sorted).
    none_full: Vec<(u64, u64)>,
}

impl UffdTracker {
    /// Returns the tracker and the ranges armed.
    pub fn start(pid: Pid, inj: &mut Injector, vmas: &[Vma]) -> Result<(UffdTracker, Vec<(u64, u64)>)> {
        let tfd = inj.call("userfaultfd(O_CLOEXEC|O_NONBLOCK|UFFD_USER_MODE_ONLY)", nr::USERFAULTFD, &[(sys::O_CLOEXEC | sys::O_NONBLOCK) as u64 | UFFD_USER_MODE_ONLY])?;
        let taken = sys::pidfd_open(pid).and_then(|p| sys::pidfd_getfd(&p, tfd as i32));
        let closed = inj.call("close(userfaultfd)", nr::CLOSE, &[tfd]);
        let uffd = taken.ctx(format!("taking the userfaultfd of process {}", pid))?;
        closed?;
        uffd_api(&uffd)?;
        let pagemap = File::open(format!("/proc/{}/pagemap", pid)).ctx(format!("opening /proc/{}/pagemap", pid))?;
        let mut t = UffdTracker { pid, uffd, pagemap, scanner: Scanner::new(), refused: Vec::new(), rearm: true, frozen: true, kept: Vec::new(), prev: Vec::new(), none_empty: Vec::new(), none_full: Vec::new() };
        OWN.lock().unwrap_or_else(|e| e.into_inner()).push(Own { pid, fd: t.uffd.raw(), armed: Vec::new() });
        let mut ignored = Vec::new();
        let armed = t.collect(&[], vmas, &mut ignored)?;
        t.frozen = false;
        Ok((t, armed))
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Written pages of [s, e) (re-arming them). Err(errno) if the range is
    /// not (or no longer) registered with our userfaultfd.
    fn scan_written(&mut self, s: u64, e: u64, private_file: bool, out: &mut Vec<u64>) -> std::result::Result<(), i32> {
        scan_written(&mut self.scanner, &self.pagemap, s, e, private_file, self.rearm, out)
    }

    /// The next collect is the last (the target is frozen for good): it
    /// reports written pages without write-protecting them again.
    pub fn last_round(&mut self) {
        self.rearm = false;
        self.frozen = true;
    }

    /// New areas (or new parts of areas): register each whole area, with
    /// the process paused, then write-protect the new parts and report every
    /// page with contents in them. Returns, per entry of `arms`, whether its
    /// area is now tracked.
    ///
    /// Registration splits a kernel VMA wherever the range does not end on
    /// its bounds. The layout read before may be stale by now (an area
    /// unmapped, another mapped and merged with a neighbour): registering
    /// stale bounds while the process runs would cut its areas in two, and
    /// its next mremap of one of them fails with EFAULT. So the bounds are
    /// checked against a layout read while no thread of the process runs,
    /// and only areas that still match exactly are registered. The rest are
    /// sent whole and come up as new again next round.
    fn arm_new(&mut self, vmas: &[Vma], arms: &[(usize, u64, u64)], out: &mut Vec<u64>) -> Result<Vec<bool>> {
        let mut areas: Vec<usize> = arms.iter().map(|a| a.0).collect();
        areas.dedup();
        let paused = if self.frozen { None } else { Some(crate::freeze::freeze_process(self.pid)?) };
        let now = crate::memory::vmas(self.pid);
        let mut registered: Vec<(usize, std::result::Result<(), i32>)> = Vec::new();
        if let Ok(now) = &now {
            for &i in &areas {
                let v = &vmas[i];
                let same = now.iter().any(|n| n.start == v.start && n.end == v.end && n.kind == v.kind && n.shared == v.shared);
                registered.push((i, if same { register(&self.uffd, v.start, v.end) } else { Err(0) }));
            }
        }
        drop(paused); // resumes
        now?;
        let mut res = Vec::with_capacity(arms.len());
        for &(i, s, e) in arms {
            let v = &vmas[i];
            let pf = v.kind == Kind::File && !v.shared;
            let reg = registered.iter().find(|r| r.0 == i).map(|r| r.1).unwrap_or(Err(0));
            let armed = match reg {
                Ok(()) => {
                    let mut scratch = Vec::new();
                    match self.scan_written(s, e, pf, &mut scratch) {
                        Ok(()) => true,
                        Err(er) => {
                            self.note_refused(v, er);
                            false
                        }
                    }
                }
                Err(0) => false, // changed since read: new again next round
                Err(er) => {
                    self.note_refused(v, er);
                    false
                }
            };
            self.report_present(s, e, pf, out)?;
            res.push(armed);
        }
        Ok(res)
    }

    /// Every page of [s, e) with contents of its own, whatever its marks.
    fn report_present(&self, s: u64, e: u64, pf: bool, out: &mut Vec<u64>) -> Result<()> {
        super::pagemap_scan::present_in(&self.pagemap, s, e, pf, out)
    }

    /// The area of the previous round that `v` continues (same memory, maybe
    /// grown, shrunk or split): the only one it overlaps, or, when it spans
    /// several (it grew over the place of an area since unmapped, or merged
    /// with a neighbour), the one it starts with. Registered memory of any
    /// other previous area inside `v` now belongs to another mapping.
    fn continued(&self, v: &Vma) -> Option<(u64, u64)> {
        // prev is sorted and disjoint: the areas overlapping v are one run
        // of it (a search per area, not a walk: thousands of areas).
        let over = crate::memory::ranges_overlapping(&self.prev, v.start, v.end);
        match over {
            [p] => Some(*p),
            _ => over.iter().find(|p| p.0 == v.start).copied(),
        }
    }

    fn note_refused(&mut self, v: &Vma, errno: i32) {
        if !self.refused.iter().any(|r| r.0 == v.start && r.1 == v.end) {
            if crate::inject::debug() {
                eprintln!("phaul: uffd-wp: area {:#x}-{:#x} {} refuses write-protection ({}); it is reported whole every round", v.start, v.end, v.path, sys::strerror(errno));
            }
            self.refused.push((v.start, v.end, errno));
        }
    }

    /// Returns the ranges now armed (sorted), to be `known` next round.
    pub fn collect(&mut self, known: &[(u64, u64)], vmas: &[Vma], out: &mut Vec<u64>) -> Result<Vec<(u64, u64)>> {
        self.kept.clear();
        self.refused.retain(|r| vmas.iter().any(|v| v.start == r.0 && v.end == r.1));
        self.none_full.retain(|a| vmas.binary_search_by_key(&a.0, |v| v.start).is_ok_and(|i| vmas[i].end == a.1));
        // The walks over areas tracked since last round go first, in parallel.
        let mut jobs = Vec::new();
        for v in vmas.iter().filter(|v| v.stores_pages()) {
            let pf = v.kind == Kind::File && !v.shared;
            for g in segments(known, v.start, v.end).iter().filter(|g| g.known) {
                jobs.push((g.start, g.end, pf));
            }
        }
        let mut scanned: std::collections::HashMap<(u64, u64), std::result::Result<Vec<u64>, i32>> =
            jobs.iter().map(|j| (j.0, j.1)).zip(scan_parallel(&self.pagemap, &jobs, self.rearm)).collect();
        // Per area: still tracked (every part of it armed); parts new to arm.
        let mut ok = vec![false; vmas.len()];
        let mut arms: Vec<(usize, u64, u64)> = Vec::new();
        let mut none_empty = Vec::new();
        for (i, v) in vmas.iter().enumerate().filter(|(_, v)| v.stores_pages()) {
            let pf = v.kind == Kind::File && !v.shared;
            let huge = v.end - v.start >= NONE_NEVER_ARMED;
            if v.prot == 0 && (huge || self.none_full.binary_search(&(v.start, v.end)).is_err()) {
                // A PROT_NONE area (a runtime's reservation: MariaDB maps
                // 8 TiB, a JVM 8 GiB) takes no write while it stays so, and
                // arming it fills its page tables with markers that every
                // round then walks (8 TiB took minutes; a JVM's final scan
                // was 3-5 ms longer). Whatever it holds goes whole each
                // round: it is mostly nothing. One seen holding more is
                // armed from then on, unless it is huge.
                // Empty now and at the last round: the destination's copy
                // (empty too) stands.
                let mark = out.len();
                self.report_present(v.start, v.end, pf, out)?;
                if out.len() == mark {
                    if self.none_empty.binary_search(&(v.start, v.end)).is_ok() {
                        self.kept.push((v.start, v.end));
                    }
                    none_empty.push((v.start, v.end));
                } else if out.len() - mark > NONE_DATA_MAX && !huge {
                    let at = self.none_full.partition_point(|a| *a < (v.start, v.end));
                    self.none_full.insert(at, (v.start, v.end));
                }
                continue;
            }
            let segs = segments(known, v.start, v.end);
            let (mark, kmark, amark) = (out.len(), self.kept.len(), arms.len());
            if self.refused.iter().any(|r| r.0 == v.start && r.1 == v.end) {
                self.report_present(v.start, v.end, pf, out)?; // and no pause to try again
                continue;
            }
            let same = self.continued(v).unwrap_or((0, 0));
            ok[i] = true;
            for Segment { start, end, known: seen } in &segs {
                if *seen {
                    let r = match scanned.remove(&(*start, *end)) {
                        Some(r) => r.map(|pages| out.extend(pages)),
                        None => self.scan_written(*start, *end, pf, out),
                    };
                    if let Err(e) = r {
                        if e != 1 {
                            return Err(Error::sys(format!("PAGEMAP_SCAN of process {} at {:#x}-{:#x}", self.pid, start, end), e));
                        }
                        // EPERM: not ours any more (replaced or moved): a new area.
                        out.truncate(mark);
                        self.kept.truncate(kmark);
                        arms.truncate(amark);
                        arms.push((i, v.start, v.end));
                        break;
                    }
                    // Kept where it continues the same area; elsewhere the pages
                    // written are not all that differ: all of them go.
                    let (a, b) = ((*start).max(same.0), (*end).min(same.1));
                    if a < b {
                        self.kept.push((a, b));
                        self.report_present(*start, a, pf, out)?;
                        self.report_present(b, *end, pf, out)?;
                    } else {
                        self.report_present(*start, *end, pf, out)?;
                    }
                } else {
                    arms.push((i, *start, *end));
                }
            }
        }
        if !arms.is_empty() {
            for (k, armed) in self.arm_new(vmas, &arms, out)?.into_iter().enumerate() {
                ok[arms[k].0] &= armed;
            }
        }
        let armed: Vec<(u64, u64)> = vmas.iter().zip(&ok).filter(|(_, &o)| o).map(|(v, _)| (v.start, v.end)).collect();
        note_armed(self.pid, self.uffd.raw(), &armed);
        self.none_empty = none_empty;
        self.prev = armed.clone();
        Ok(armed)
    }

    /// Let go of the target's memory. Closing the last copy of the
    /// descriptor unregisters every area the context still holds, each as
    /// a whole (and lets the kernel merge them with their neighbours again).
    /// UFFDIO_UNREGISTER of the ranges armed is not used: the process runs
    /// on, and a range whose bounds are stale would split its areas.
    pub fn stop(self) {}
}

impl Drop for UffdTracker {
    fn drop(&mut self) {
        // Forgotten before the descriptor closes (the fields drop after this).
        OWN.lock().unwrap_or_else(|e| e.into_inner()).retain(|o| (o.pid, o.fd) != (self.pid, self.uffd.raw()));
    }
}
