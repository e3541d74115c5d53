//! Shared memory as an object, not as mappings.
//!
//! Dirty tracking and round 0 see a process's page tables: a page of a
//! shared memory object (MAP_SHARED anonymous memory, System V segments)
//! that only some other process touched is not in them. When that process
//! is tracked too, its own round sends the page; when it is not (it exited
//! before the migration began, or started during pre-copy), nobody did.
//! PostgreSQL's shared buffers are filled by backends that come and go: a
//! migrated postgres lost index pages a finished backend had read in
//! ("index ... contains unexpected zero page"). So round 0 also sends the
//! pages the object holds (SEEK_DATA), whoever put them there. After that,
//! the trackers see every write of the processes they watch; a process
//! that lived and ended during pre-copy wrote unseen (postgres forks a
//! backend per connection: 6 of 400 rows committed through short sessions
//! were lost), and then the final round sends every page again
//! (source.rs, unseen_writers). A dump to image files saves what the
//! object holds for the same reason (dump.rs).

use crate::dirty::merge;
use crate::memory::{ranges_overlapping, subtract, Kind, Vma};
use crate::sys::{self, nr, Pid, PAGE_SIZE};
use std::collections::HashMap;

const SEEK_DATA: u64 = 3;
const SEEK_HOLE: u64 = 4;
const ENXIO: i32 = 6;

/// Per object (device, inode): the byte ranges of it sent so far (sorted, merged).
#[derive(Default)]
pub struct Sent(HashMap<(u64, u64), Vec<(u64, u64)>>);

impl Sent {
    /// Everything counts as never sent: the next sweep sends every page
    /// the objects hold (after writes that no tracker can have seen).
    pub fn forget(&mut self) {
        self.0.clear();
    }

    /// Addresses of the pages of `pid`'s shared memory areas whose object
    /// holds them and that were never sent (for any process mapping it).
    pub fn unsent(&mut self, pid: Pid, vmas: &[Vma]) -> Vec<u64> {
        let mut out = Vec::new();
        for v in vmas.iter().filter(|v| is_object(v)) {
            let have = held(pid, v);
            let sent = self.0.entry((v.dev, v.ino)).or_default();
            let new: Vec<(u64, u64)> = have.iter().flat_map(|&(a, b)| subtract((a, b), ranges_overlapping(sent, a, b))).collect();
            pages_of(v, &new, &mut out);
            *sent = merge(sent.iter().copied().chain(have.iter().copied()).collect());
        }
        out
    }
}

/// Addresses of the pages that the object behind shared memory area `v`
/// of `pid` holds, mapped here or not (a dump's share of what others, maybe
/// gone, put there).
pub fn held_pages(pid: Pid, v: &Vma) -> Vec<u64> {
    let mut out = Vec::new();
    if is_object(v) {
        pages_of(v, &held(pid, v), &mut out);
    }
    out
}

fn is_object(v: &Vma) -> bool {
    v.kind == Kind::Shmem && v.stores_pages()
}

/// The byte ranges of the object behind `v` (within the area) that hold pages.
fn held(pid: Pid, v: &Vma) -> Vec<(u64, u64)> {
    let (from, to) = (v.pgoff, v.pgoff + (v.end - v.start));
    // No SEEK_DATA here (or the area went away): all of it.
    populated(pid, v, from, to).unwrap_or_else(|| vec![(from, to)])
}

/// The addresses in `v` of the pages of object ranges `r`.
fn pages_of(v: &Vma, r: &[(u64, u64)], out: &mut Vec<u64>) {
    for &(a, b) in r {
        let mut off = a & !(PAGE_SIZE - 1);
        while off < b {
            out.push(v.start + (off - v.pgoff));
            off += PAGE_SIZE;
        }
    }
}

/// The parts of [from, to) of the object behind area `v` that hold pages.
fn populated(pid: Pid, v: &Vma, from: u64, to: u64) -> Option<Vec<(u64, u64)>> {
    let path = std::ffi::CString::new(format!("/proc/{}/map_files/{:x}-{:x}", pid, v.start, v.end)).ok()?;
    let fd = sys::Fd(sys::call("open map_files", nr::OPEN, &[path.as_ptr() as u64, 0o2000000 /* O_RDONLY|O_CLOEXEC */, 0]).ok()? as i32);
    let seek = |at: u64, whence: u64| -> std::result::Result<u64, i32> {
        unsafe { sys::raw(nr::LSEEK, &[fd.raw() as u64, at, whence]) }.map(|r| r as u64)
    };
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let data = match seek(at, SEEK_DATA) {
            Ok(d) => d,
            Err(ENXIO) => break,
            Err(_) => return None,
        };
        if data >= to {
            break;
        }
        let hole = seek(data, SEEK_HOLE).ok()?.min(to);
        if hole <= data {
            return None;
        }
        out.push((data, hole));
        at = hole;
    }
    Some(out)
}
