//! The PAGEMAP_SCAN ioctl on /proc/PID/pagemap (Linux 6.7+), and plain
//! pagemap reading. Debian's headers are 6.1, so the ABI is spelled out here
//! (include/uapi/linux/fs.h of 6.7).

use crate::sys::{nr, Context, Error, Result, PAGE_SIZE};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

// Page categories.
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;

// Flags of pm_scan_arg.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// _IOWR('f', 16, struct pm_scan_arg)
pub const PAGEMAP_SCAN: u64 = (3 << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

/// Regions per ioctl call; a full vector makes the kernel stop early and
/// report `walk_end`, from where we go on.
const VEC_LEN: usize = 1024;

/// A reusable output vector for `scan`.
pub struct Scanner {
    vec: Vec<PageRegion>,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner::new()
    }
}

impl Scanner {
    pub fn new() -> Scanner {
        Scanner { vec: vec![PageRegion::default(); VEC_LEN] }
    }

    /// One PAGEMAP_SCAN walk over [start, end), resumed at `walk_end` until
    /// the whole range is done. `each` gets every region returned. With
    /// `want_output == false` no vector is passed (a write-protect-only walk).
    /// Returns the raw errno on failure (EPERM = an area not registered
    /// with an async-wp userfaultfd, when PM_SCAN_CHECK_WPASYNC is given).
    pub fn scan(
        &mut self,
        pagemap: &File,
        start: u64,
        end: u64,
        flags: u64,
        category_mask: u64,
        return_mask: u64,
        want_output: bool,
        each: impl FnMut(&PageRegion),
    ) -> std::result::Result<(), i32> {
        self.walk(pagemap, PmScanArg { start, end, flags, category_mask, return_mask, ..Default::default() }, want_output, each)
    }

    /// `scan` with any PmScanArg (its start, end, flags and masks).
    fn walk(&mut self, pagemap: &File, what: PmScanArg, want_output: bool, mut each: impl FnMut(&PageRegion)) -> std::result::Result<(), i32> {
        let mut at = what.start;
        while at < what.end {
            let mut arg = PmScanArg { size: std::mem::size_of::<PmScanArg>() as u64, start: at, ..what };
            if want_output {
                arg.vec = self.vec.as_mut_ptr() as u64;
                arg.vec_len = self.vec.len() as u64;
            }
            let n = unsafe { crate::sys::raw(nr::IOCTL, &[pagemap.as_raw_fd() as u64, PAGEMAP_SCAN, &mut arg as *mut PmScanArg as u64]) }?;
            for r in &self.vec[..(n as usize).min(self.vec.len())] {
                each(r);
            }
            if arg.walk_end <= at {
                // No progress: never loop forever on a kernel surprise.
                return Err(5);
            }
            at = arg.walk_end;
        }
        Ok(())
    }
}

/// Areas at least this big are walked with PAGEMAP_SCAN before their
/// pagemap entries are read (`present_in`).
const SCAN_ABOVE: u64 = 256 << 20;

/// Every page of [start, end) with contents of its own (`entry_has_contents`),
/// whatever its marks, in address order. A big range is mostly holes (a
/// reservation: MariaDB maps 8 TiB, 16 GiB of pagemap entries): the kernel
/// finds the runs with pages present or swapped out (PTE markers read as
/// swapped), and only their entries are read.
pub fn present_in(pagemap: &File, start: u64, end: u64, private_file: bool, out: &mut Vec<u64>) -> Result<()> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let scanned = end - start >= SCAN_ABOVE
        && supported()
        && Scanner::new()
            .walk(pagemap, PmScanArg { start, end, category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED, return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED, ..Default::default() }, true, |r| match runs.last_mut() {
                Some((_, e)) if *e == r.start => *e = r.end,
                _ => runs.push((r.start, r.end)),
            })
            .is_ok();
    if !scanned {
        runs = vec![(start, end)];
    }
    for (a, b) in runs {
        read_entries(pagemap, a, b, |at, ents| {
            for (i, &en) in ents.iter().enumerate() {
                if entry_has_contents(en, private_file) {
                    out.push(at + i as u64 * PAGE_SIZE);
                }
            }
        })?;
    }
    Ok(())
}

/// Does this kernel know PAGEMAP_SCAN? (An empty walk over our own stack.)
pub fn supported() -> bool {
    static KNOWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KNOWN.get_or_init(probe)
}

fn probe() -> bool {
    let Ok(pm) = File::open("/proc/self/pagemap") else { return false };
    let x = 0u64;
    let a = (&x as *const u64 as u64) & !(PAGE_SIZE - 1);
    let mut s = Scanner::new();
    s.scan(&pm, a, a + PAGE_SIZE, 0, 0, PAGE_IS_PRESENT, true, |_| {}).is_ok()
}

// ---- plain /proc/PID/pagemap entries ----

pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAP: u64 = 1 << 62;
pub const PM_FILE: u64 = 1 << 61;
pub const PM_SOFT_DIRTY: u64 = 1 << 55;

/// Read the raw pagemap entries of [start, end) in large batches, calling
/// `each(first_page_address, entries)` per batch.
pub fn read_entries(pagemap: &File, start: u64, end: u64, mut each: impl FnMut(u64, &[u64])) -> Result<()> {
    const BATCH: u64 = 65536;
    let mut buf = vec![0u64; BATCH.min((end - start) / PAGE_SIZE).max(1) as usize];
    let mut a = start;
    while a < end {
        let cnt = ((end - a) / PAGE_SIZE).min(BATCH) as usize;
        let b = &mut buf[..cnt];
        let bytes = unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut u8, cnt * 8) };
        match pagemap.read_exact_at(bytes, (a / PAGE_SIZE) * 8) {
            Ok(()) => {}
            // The area went away under us: nothing present there.
            Err(e) if e.raw_os_error().is_none() => b.fill(0),
            Err(e) => return Err(Error::from(e)).ctx(format!("reading pagemap at {:#x}", a)),
        }
        for e in b.iter_mut() {
            *e = u64::from_le(*e);
        }
        each(a, b);
        a += cnt as u64 * PAGE_SIZE;
    }
    Ok(())
}

/// Is a pagemap entry a page whose contents we keep? Present or swapped;
/// in a private file mapping only the copy-on-write (anonymous) pages.
pub fn entry_has_contents(e: u64, private_file: bool) -> bool {
    e & (PM_PRESENT | PM_SWAP) != 0 && !is_pte_marker(e) && !(private_file && e & PM_FILE != 0)
}

/// The swap type of the kernel's PTE markers (SWP_PTE_MARKER, the last of
/// the 32 a swap entry can have; swap devices use the first ones).
const SWP_PTE_MARKER: u64 = 31;

/// A PTE marker holds no page, yet pagemap shows it as swapped: uffd-wp
/// tracking (WP_UNPOPULATED) leaves one on every never-touched page it
/// arms, and counting those sent zeros for them and made the destination
/// (and the source, which read them through /proc/PID/mem) fault them in.
/// The swap type sits in bits 0-4, which pagemap shows to root only.
fn is_pte_marker(e: u64) -> bool {
    e & PM_SWAP != 0 && e & PM_PRESENT == 0 && e & 0x1f == SWP_PTE_MARKER
}

#[cfg(test)]
mod marker_tests {
    use super::*;

    #[test]
    fn pte_markers_hold_no_contents() {
        // As read on Linux 6.18 for a never-touched page armed by uffd-wp:
        // swapped, uffd-wp, type 31 (SWP_PTE_MARKER), offset 1 (PTE_MARKER_UFFD_WP).
        assert!(!entry_has_contents(0x4200_0000_0000_003f, false));
        // A page on swap device 1 keeps its contents, armed or not.
        assert!(entry_has_contents(PM_SWAP | (7 << 5) | 1, false));
        assert!(entry_has_contents(PM_SWAP | (1 << 57) | (7 << 5) | 1, false));
        assert!(entry_has_contents(PM_PRESENT | 0x46c338, false));
    }
}

#[cfg(test)]
mod present_tests {
    use super::*;

    /// A 1 GiB reservation of ours with three pages written: the walk
    /// finds them (and only them) without reading 262,144 entries, and
    /// agrees with reading every entry.
    #[test]
    fn present_in_finds_the_written_pages_of_a_big_reservation() {
        let len = 1u64 << 30;
        let a = unsafe { crate::sys::raw(crate::sys::nr::MMAP, &[0, len, 3, 0x22 | 0x4000, u64::MAX, 0]) }.expect("mmap") as u64;
        let want = [a + 4096, a + (300 << 20), a + len - 4096];
        for &p in &want {
            unsafe { std::ptr::write_volatile(p as *mut u64, 7) };
        }
        let pm = File::open("/proc/self/pagemap").expect("pagemap");
        let mut runs = 0;
        let walked = Scanner::new().walk(&pm, PmScanArg { start: a, end: a + len, category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED, return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED, ..Default::default() }, true, |_| runs += 1);
        assert_eq!(walked, Ok(()));
        assert_eq!(runs, 3);
        let mut got = Vec::new();
        present_in(&pm, a, a + len, false, &mut got).expect("present_in");
        assert_eq!(got, want);
        let mut each = Vec::new();
        read_entries(&pm, a, a + len, |at, ents| each.extend(ents.iter().enumerate().filter(|(_, &e)| entry_has_contents(e, false)).map(|(i, _)| at + i as u64 * PAGE_SIZE))).expect("read_entries");
        assert_eq!(each, want);
        unsafe { crate::sys::raw(crate::sys::nr::MUNMAP, &[a, len]) }.expect("munmap");
    }
}
