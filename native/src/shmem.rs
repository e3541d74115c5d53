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
//! were lost), and then the final round looks at every page again
//! (source.rs, unseen_writers): it reads what the object holds and sends
//! the pages whose contents differ from what was last sent (each page sent
//! is hashed as it goes out, `note_sent`). Sending them all again cost
//! postgres 20-30 ms of frozen time for 12 MB; reading and hashing them
//! costs a few. A dump to image files saves what the object holds for the
//! same reason (dump.rs).

use crate::dirty::hash::{page_hash, Reader};
use crate::dirty::merge;
use crate::memory::{ranges_overlapping, subtract, Kind, Vma};
use crate::sys::{self, nr, Pid, PAGE_SIZE};
use std::collections::HashMap;

const SEEK_DATA: u64 = 3;
/// Pages read at a time by the comparison (256 KiB).
const READ_PAGES: usize = 64;
const SEEK_HOLE: u64 = 4;
const ENXIO: i32 = 6;

/// Per object (device, inode): the byte ranges of it swept so far (sorted,
/// merged), and the hash of each page (by offset in the object) as last sent.
#[derive(Default)]
pub struct Sent {
    swept: HashMap<(u64, u64), Vec<(u64, u64)>>,
    hashes: HashMap<(u64, u64), HashMap<u64, u64>>,
}

impl Sent {
    /// Every page the objects hold is looked at again by the next sweep
    /// (after writes that no tracker can have seen); those whose contents
    /// are as last sent stay out of it.
    pub fn forget(&mut self) {
        self.swept.clear();
    }

    /// Has any shared memory object been swept (the tree has some)?
    pub fn any(&self) -> bool {
        !self.swept.is_empty() || !self.hashes.is_empty()
    }

    /// Addresses of the pages of `pid`'s shared memory areas whose object
    /// holds them, not yet swept (for any process mapping it), and not
    /// known to the destination as they are now.
    pub fn unsent(&mut self, pid: Pid, vmas: &[Vma]) -> Vec<u64> {
        let mut out = Vec::new();
        for v in vmas.iter().filter(|v| is_object(v)) {
            let have = held(pid, v);
            let swept = self.swept.entry((v.dev, v.ino)).or_default();
            let new: Vec<(u64, u64)> = have.iter().flat_map(|&(a, b)| subtract((a, b), ranges_overlapping(swept, a, b))).collect();
            *swept = merge(swept.iter().copied().chain(have.iter().copied()).collect());
            let mut pages = Vec::new();
            pages_of(v, &new, &mut pages);
            out.extend(self.changed(pid, v, pages));
        }
        out
    }

    /// Of `pages` (ascending addresses in `v`), those whose contents differ
    /// from what was last sent of them, or that were never sent.
    fn changed(&self, pid: Pid, v: &Vma, pages: Vec<u64>) -> Vec<u64> {
        let known = match self.hashes.get(&(v.dev, v.ino)) {
            Some(k) if !k.is_empty() => k,
            _ => return pages,
        };
        let hashes = match hash_read(pid, &pages) {
            Some(h) => h,
            None => return pages,
        };
        pages.into_iter().zip(hashes).filter(|&(addr, h)| known.get(&(v.pgoff + (addr - v.start))) != Some(&h)).map(|(addr, _)| addr).collect()
    }

    /// `page` went to the destination as the contents of `addr` in `v`.
    pub fn note_sent(&mut self, v: &Vma, addr: u64, page: &[u8; 4096]) {
        if is_object(v) {
            self.hashes.entry((v.dev, v.ino)).or_default().insert(v.pgoff + (addr - v.start), page_hash(page));
        }
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

/// Does page `addr` lie in a shared memory object's area of `vmas`?
pub fn in_object(vmas: &[Vma], addr: u64) -> bool {
    crate::memory::areas_overlapping(vmas, addr, addr + crate::sys::PAGE_SIZE).iter().any(is_object)
}

pub fn is_object(v: &Vma) -> bool {
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

/// Hashes of `pages` of `pid`, read out of it (a small buffer, reused:
/// fresh memory costs a fault per page on first touch, slow on some hosts,
/// and this runs while the tree is frozen). Mapping the object here and
/// hashing it in place copies nothing but costs more: on this host, 64 MiB
/// took 35-40 ms to map and touch and 8 ms to unmap, against 17 ms to read.
fn hash_read(pid: Pid, pages: &[u64]) -> Option<Vec<u64>> {
    let mut reader = Reader::with_pages(pid, READ_PAGES).ok()?;
    let mut out = Vec::with_capacity(pages.len());
    for chunk in pages.chunks(READ_PAGES) {
        let data = reader.read(chunk, true);
        out.extend(data.chunks_exact(PAGE_SIZE as usize).filter_map(|p| <&[u8; 4096]>::try_from(p).ok()).map(page_hash));
    }
    Some(out)
}

fn open_object(pid: Pid, v: &Vma) -> Option<sys::Fd> {
    let path = std::ffi::CString::new(format!("/proc/{}/map_files/{:x}-{:x}", pid, v.start, v.end)).ok()?;
    Some(sys::Fd(sys::call("open map_files", nr::OPEN, &[path.as_ptr() as u64, 0o2000000 /* O_RDONLY|O_CLOEXEC */, 0]).ok()? as i32))
}

/// The parts of [from, to) of the object behind area `v` that hold pages.
fn populated(pid: Pid, v: &Vma, from: u64, to: u64) -> Option<Vec<(u64, u64)>> {
    let fd = open_object(pid, v)?;
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
