//! Dirty-page tracking for live migration pre-copy.
//!
//! Three methods, best first:
//! - `UffdWp`: asynchronous userfaultfd write-protection read back with the
//!   PAGEMAP_SCAN ioctl (Linux 6.7+). Exact, cheap to collect; the first write
//!   to each page per round takes a fault in the target.
//! - `SoftDirty`: clear_refs "4" + pagemap bit 55 (CONFIG_MEM_SOFT_DIRTY).
//! - `Hash`: read and hash every present page each round. Works everywhere,
//!   costs a full read of the memory per round, no target slowdown.
//!
//! Contract shared by all: `start` arms tracking while the tree is frozen,
//! before round 0 copies every present page; each `collect` returns the pages
//! (of areas with `stores_pages()`) written since the previous call, sorted.
//! Areas not seen before are reported whole (their pages with contents) and
//! tracked from then on; areas gone are forgotten. Pages that were present
//! and are not any more (MADV_DONTNEED) are reported once: their contents
//! are now zero and the caller sends that.
//!
//! See docs/dirty-tracking.md for costs measured on the development host.

pub mod hash;
pub mod pagemap_scan;
pub mod soft_dirty;
pub mod uffd_wp;

#[cfg(test)]
mod tests;

use crate::inject::Injector;
use crate::memory::Vma;
use crate::sys::{Error, Pid, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    SoftDirty,
    UffdWp,
    Hash,
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::SoftDirty => "soft-dirty",
            Method::UffdWp => "uffd-wp",
            Method::Hash => "hash",
        }
    }
    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "soft-dirty" => Some(Method::SoftDirty),
            "uffd-wp" => Some(Method::UffdWp),
            "hash" => Some(Method::Hash),
            _ => None,
        }
    }
    /// Does this kernel offer the method? (A real probe on our own memory.)
    pub fn available(&self) -> bool {
        match self {
            Method::UffdWp => pagemap_scan::supported() && uffd_wp::supported(),
            Method::SoftDirty => soft_dirty::supported(),
            Method::Hash => true,
        }
    }
}

/// Best method this kernel offers for tracking another process, probed once:
/// uffd-wp, else soft-dirty, else hash.
pub fn best_method() -> Method {
    static BEST: std::sync::OnceLock<Method> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| [Method::UffdWp, Method::SoftDirty].into_iter().find(|m| m.available()).unwrap_or(Method::Hash))
}

enum Inner {
    SoftDirty(soft_dirty::SoftDirtyTracker),
    UffdWp(uffd_wp::UffdTracker),
    Hash(hash::HashTracker),
}

pub struct Tracker {
    pid: Pid,
    inner: Inner,
    /// Ranges tracked since the previous round (sorted, merged).
    known: Vec<(u64, u64)>,
    /// What the last collect() found still tracked from the round before:
    /// a copy taken of those ranges then is still the same memory, and the
    /// pages reported are all that changed in it. Outside them (new areas,
    /// areas unmapped and mapped again) a copy must start from nothing.
    kept: Vec<(u64, u64)>,
    /// Set by last_round(): the caller froze the target for good. Told,
    /// not guessed from /proc: the final round runs beside the dump, whose
    /// injected calls let threads run for moments.
    frozen: bool,
}

impl Tracker {
    /// Start tracking process `pid`. Called while the whole tree is frozen;
    /// `inj` is an Injector on the process's leader thread (only uffd-wp uses
    /// it: two injected syscalls, no scratch memory). `vmas`: the process's
    /// areas minus the injector's scratch.
    pub fn start(method: Method, pid: Pid, inj: &mut Injector, vmas: &[Vma]) -> Result<Tracker> {
        let ctx = |e: Error| e.context(format!("starting {} dirty tracking of process {}", method.name(), pid));
        let (inner, known) = match method {
            Method::UffdWp => {
                let (t, armed) = uffd_wp::UffdTracker::start(pid, inj, vmas).map_err(ctx)?;
                (Inner::UffdWp(t), merge(armed))
            }
            Method::SoftDirty => (Inner::SoftDirty(soft_dirty::SoftDirtyTracker::start(pid, vmas).map_err(ctx)?), ranges_of(vmas)),
            Method::Hash => (Inner::Hash(hash::HashTracker::start(pid, vmas).map_err(ctx)?), ranges_of(vmas)),
        };
        Ok(Tracker { pid, inner, known, kept: Vec::new(), frozen: false })
    }

    /// Like `start`, but arms nothing yet: only what needs the frozen target
    /// (injecting userfaultfd) happens now. The first `collect`, which may
    /// run while the target runs, registers and write-protects (or hashes)
    /// every area as new and reports all its pages. Write-protecting 4 GiB
    /// takes ~200 ms: done here it would be felt by the process as a freeze.
    pub fn start_lazy(method: Method, pid: Pid, inj: &mut Injector) -> Result<Tracker> {
        match method {
            Method::SoftDirty => Tracker::start(method, pid, inj, &[]),
            _ => {
                let mut t = Tracker::start(method, pid, inj, &[])?;
                t.known.clear();
                Ok(t)
            }
        }
    }

    /// Page addresses written since start() or the previous collect(), for
    /// areas with stores_pages(). `out` is cleared first, then filled sorted
    /// ascending without duplicates. Runs on a running or a frozen target.
    pub fn collect(&mut self, vmas: &[Vma], out: &mut Vec<u64>) -> Result<()> {
        out.clear();
        let pid = self.pid;
        let r = match &mut self.inner {
            Inner::UffdWp(t) => t.collect(&self.known, vmas, out).map(merge),
            Inner::SoftDirty(t) => t.collect(&self.known, vmas, out, self.frozen).map(|_| ranges_of(vmas)),
            Inner::Hash(t) => t.collect(&self.known, vmas, out, self.frozen).map(|_| ranges_of(vmas)),
        };
        let known = r.map_err(|e| e.context(format!("collecting dirty pages of process {}", pid)))?;
        // uffd-wp knows an area replaced at the same addresses (it is no
        // longer registered); the others can only go by the ranges.
        self.kept = match &mut self.inner {
            Inner::UffdWp(t) => merge(std::mem::take(&mut t.kept)),
            _ => std::mem::take(&mut self.known),
        };
        self.known = known;
        out.sort_unstable();
        out.dedup();
        Ok(())
    }

    /// See `kept` (the field): sorted, merged.
    pub fn kept(&self) -> &[(u64, u64)] {
        &self.kept
    }

    /// The next collect() is the last one, on the frozen target: trackers
    /// that re-arm their marks as they read them may skip that.
    pub fn last_round(&mut self) {
        self.frozen = true;
        if let Inner::UffdWp(t) = &mut self.inner {
            t.last_round();
        }
    }

    pub fn method(&self) -> Method {
        match self.inner {
            Inner::SoftDirty(_) => Method::SoftDirty,
            Inner::UffdWp(_) => Method::UffdWp,
            Inner::Hash(_) => Method::Hash,
        }
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Optional, Hash only: the caller sent `data` as page `addr`. Later
    /// rounds then compare against exactly what was sent; without it, pages
    /// reported while the target ran are reported again in the frozen round
    /// (their copy might have caught a value written and written back).
    pub fn note_sent(&mut self, addr: u64, data: &[u8; 4096]) {
        if let Inner::Hash(t) = &mut self.inner {
            t.note_sent(addr, data);
        }
    }

    /// uffd-wp only: areas that refused write-protection, (start, end, errno);
    /// they are reported whole every round.
    pub fn refused(&self) -> Vec<(u64, u64, i32)> {
        match &self.inner {
            Inner::UffdWp(t) => t.refused.clone(),
            _ => Vec::new(),
        }
    }

    /// Stop tracking and unregister cleanly (the target keeps running unharmed).
    pub fn stop(self) {
        match self.inner {
            Inner::UffdWp(t) => t.stop(),
            Inner::SoftDirty(_) | Inner::Hash(_) => {}
        }
    }
}

// ---- helpers shared by the methods ----

/// Sorted, merged ranges of the areas whose pages we track.
pub fn ranges_of(vmas: &[Vma]) -> Vec<(u64, u64)> {
    merge(vmas.iter().filter(|v| v.stores_pages()).map(|v| (v.start, v.end)).collect())
}

pub fn merge(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (s, e) in r {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    /// Inside a range tracked since the previous round.
    pub known: bool,
}

/// Cut [s, e) into pieces inside and outside `known` (sorted, merged).
pub fn segments(known: &[(u64, u64)], s: u64, e: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut at = s;
    let mut i = known.partition_point(|r| r.1 <= s);
    while at < e {
        match known.get(i) {
            Some(&(ks, ke)) if ks < e => {
                if ks > at {
                    out.push(Segment { start: at, end: ks, known: false });
                    at = ks;
                }
                let end = ke.min(e);
                out.push(Segment { start: at, end, known: true });
                at = end;
                i += 1;
            }
            _ => {
                out.push(Segment { start: at, end: e, known: false });
                at = e;
            }
        }
    }
    out
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn method_names() {
        for m in [Method::SoftDirty, Method::UffdWp, Method::Hash] {
            assert_eq!(Method::parse(m.name()), Some(m));
        }
        assert_eq!(Method::parse("bogus"), None);
    }

    #[test]
    fn segment_cutting() {
        let k = merge(vec![(0x3000, 0x5000), (0x1000, 0x2000), (0x5000, 0x6000)]);
        assert_eq!(k, vec![(0x1000, 0x2000), (0x3000, 0x6000)]);
        let s = segments(&k, 0x0, 0x8000);
        let want = [(0x0, 0x1000, false), (0x1000, 0x2000, true), (0x2000, 0x3000, false), (0x3000, 0x6000, true), (0x6000, 0x8000, false)];
        assert_eq!(s.len(), want.len());
        for (g, w) in s.iter().zip(want) {
            assert_eq!((g.start, g.end, g.known), w);
        }
        assert_eq!(segments(&k, 0x3000, 0x4000), vec![Segment { start: 0x3000, end: 0x4000, known: true }]);
        assert_eq!(segments(&k, 0x6000, 0x7000), vec![Segment { start: 0x6000, end: 0x7000, known: false }]);
        assert_eq!(segments(&k, 0x1800, 0x3800).len(), 3);
    }
}
