//! Soft-dirty bits: write "4" to /proc/PID/clear_refs, later read bit 55 of
//! /proc/PID/pagemap. The classic path where CONFIG_MEM_SOFT_DIRTY is on
//! (not on the 6.18 development kernel: only the decoding is tested there).
//!
//! Reading the bits and clearing them are two steps; a write between them
//! would be lost, so a running target is paused (ptrace, threads of the
//! whole tree of `pid`, for well under a millisecond plus the pagemap read)
//! around each read+clear. Pages that were present and are gone
//! (MADV_DONTNEED) carry no soft-dirty bit: they are reported from the
//! difference with the previous round's present pages.

use super::pagemap_scan::{entry_has_contents, read_entries, PM_SOFT_DIRTY};
use super::{segments, Segment};
use crate::freeze;
use crate::memory::{Kind, Vma};
use crate::sys::{Context, Error, Pid, Result, PAGE_SIZE};
use std::fs::File;
use std::io::Write;

/// Decode one batch of raw pagemap entries starting at page address `base`:
/// pages with contents go to `present`; those with the soft-dirty bit set
/// also go to `dirty`. In a private file mapping, pages still backed by the
/// file (PM_FILE) have no contents of their own and are skipped.
pub fn decode_entries(base: u64, entries: &[u64], private_file: bool, dirty: &mut Vec<u64>, present: &mut Vec<u64>) {
    for (i, &e) in entries.iter().enumerate() {
        if !entry_has_contents(e, private_file) {
            continue;
        }
        let a = base + i as u64 * PAGE_SIZE;
        present.push(a);
        if e & PM_SOFT_DIRTY != 0 {
            dirty.push(a);
        }
    }
}

/// Pages in `prev` but not in `now` (both ascending).
pub fn vanished(prev: &[u64], now: &[u64], out: &mut Vec<u64>) {
    let mut j = 0;
    for &p in prev {
        while j < now.len() && now[j] < p {
            j += 1;
        }
        if j >= now.len() || now[j] != p {
            out.push(p);
        }
    }
}

pub fn clear_refs(pid: Pid) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/clear_refs", pid))
        .ctx(format!("opening /proc/{}/clear_refs", pid))?;
    f.write_all(b"4").ctx(format!("clearing soft-dirty bits of {}", pid))
}

/// Does the kernel keep soft-dirty bits? Probe on a page of our own.
pub fn supported() -> bool {
    if std::fs::metadata("/proc/self/clear_refs").is_err() {
        return false;
    }
    let Ok(pm) = File::open("/proc/self/pagemap") else { return false };
    let page = vec![0u8; 3 * 4096];
    let a = (page.as_ptr() as u64 + 4095) & !4095;
    let entry = |pm: &File| -> u64 {
        let mut v = 0u64;
        read_entries(pm, a, a + PAGE_SIZE, |_, e| v = e[0]).ok();
        v
    };
    unsafe { std::ptr::write_volatile(a as *mut u8, 1) };
    if clear_refs(crate::sys::getpid()).is_err() {
        return false;
    }
    if entry(&pm) & PM_SOFT_DIRTY != 0 {
        return false; // clearing does nothing
    }
    unsafe { std::ptr::write_volatile(a as *mut u8, 2) };
    entry(&pm) & PM_SOFT_DIRTY != 0
}

pub struct SoftDirtyTracker {
    pid: Pid,
    pagemap: File,
    /// Pages with contents at the previous round, ascending.
    present: Vec<u64>,
}

impl SoftDirtyTracker {
    pub fn start(pid: Pid, vmas: &[Vma]) -> Result<SoftDirtyTracker> {
        let pagemap = File::open(format!("/proc/{}/pagemap", pid)).ctx(format!("opening /proc/{}/pagemap", pid))?;
        let mut t = SoftDirtyTracker { pid, pagemap, present: Vec::new() };
        let mut ignored = Vec::new();
        // The tree is frozen here: read the present pages, then clear.
        t.round(&[], vmas, &mut ignored)?;
        Ok(t)
    }

    fn round(&mut self, known: &[(u64, u64)], vmas: &[Vma], out: &mut Vec<u64>) -> Result<()> {
        let mut present = Vec::with_capacity(self.present.len() + 1024);
        for v in vmas.iter().filter(|v| v.stores_pages()) {
            let pf = v.kind == Kind::File && !v.shared;
            for Segment { start, end, known: seen } in segments(known, v.start, v.end) {
                let first = present.len();
                let mut dirty = Vec::new();
                read_entries(&self.pagemap, start, end, |b, e| decode_entries(b, e, pf, &mut dirty, &mut present))?;
                if seen {
                    out.extend_from_slice(&dirty);
                    let lo = self.present.partition_point(|&x| x < start);
                    let hi = self.present.partition_point(|&x| x < end);
                    vanished(&self.present[lo..hi], &present[first..], out);
                } else {
                    out.extend_from_slice(&present[first..]);
                }
            }
        }
        clear_refs(self.pid)?;
        self.present = present;
        Ok(())
    }

    /// `frozen`: the target is frozen already (the last round).
    pub fn collect(&mut self, known: &[(u64, u64)], vmas: &[Vma], out: &mut Vec<u64>, frozen: bool) -> Result<()> {
        if frozen {
            return self.round(known, vmas, out);
        }
        let mut fz = freeze::freeze_tree(self.pid).map_err(|e| Error::new(e.code, format!("pausing {} for a soft-dirty round: {}", self.pid, e.message)))?;
        let r = self.round(known, vmas, out);
        fz.resume();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dirty::pagemap_scan::{PM_FILE, PM_PRESENT, PM_SWAP};

    #[test]
    fn decodes_synthetic_pagemap() {
        let base = 0x7f00_0000_0000u64;
        let pfn = 0x1234u64;
        let entries = [
            0,                                         // not present
            PM_PRESENT | pfn,                          // present, clean
            PM_PRESENT | PM_SOFT_DIRTY | pfn,          // present, dirty
            PM_SWAP | PM_SOFT_DIRTY | 0x55,            // swapped, dirty
            PM_SWAP | 0x56,                            // swapped, clean
            PM_SOFT_DIRTY,                             // soft-dirty but not present: nothing to send
            PM_PRESENT | PM_FILE | PM_SOFT_DIRTY | pfn, // file page
        ];
        let (mut d, mut p) = (Vec::new(), Vec::new());
        decode_entries(base, &entries, false, &mut d, &mut p);
        let pg = |i: u64| base + i * 4096;
        assert_eq!(p, vec![pg(1), pg(2), pg(3), pg(4), pg(6)]);
        assert_eq!(d, vec![pg(2), pg(3), pg(6)]);
        // In a private file mapping the file-backed page has no contents of its own.
        let (mut d, mut p) = (Vec::new(), Vec::new());
        decode_entries(base, &entries, true, &mut d, &mut p);
        assert_eq!(p, vec![pg(1), pg(2), pg(3), pg(4)]);
        assert_eq!(d, vec![pg(2), pg(3)]);
    }

    #[test]
    fn decodes_little_endian_bytes() {
        // pagemap is read as bytes: entry 1 << 55 | 1 << 63 little-endian.
        let raw: [u8; 16] = [0, 0, 0, 0, 0, 0, 0x80, 0x80, 1, 0, 0, 0, 0, 0, 0, 0x80];
        let e: Vec<u64> = raw.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        let (mut d, mut p) = (Vec::new(), Vec::new());
        decode_entries(0x1000, &e, false, &mut d, &mut p);
        assert_eq!(p, vec![0x1000, 0x2000]);
        assert_eq!(d, vec![0x1000]);
    }

    #[test]
    fn vanished_pages() {
        let mut out = Vec::new();
        vanished(&[1, 2, 3, 5, 8], &[2, 3, 4, 8, 9], &mut out);
        assert_eq!(out, vec![1, 5]);
        out.clear();
        vanished(&[], &[1], &mut out);
        vanished(&[7], &[], &mut out);
        assert_eq!(out, vec![7]);
    }
}
