//! Kernel AIO contexts (io_setup): each is a ring of completion events
//! mapped into the process ("/[aio] (deleted)"), whose address is the
//! context id the process keeps and passes to io_submit / io_getevents.
//!
//! Dump, per ring: its size (nr events), head and tail and the events
//! completed but not yet reaped (between head and tail). A ring mapping
//! that is no context of the process (an injected io_getevents of nothing
//! fails) was inherited over fork: the child shares its parent's ring pages
//! without the context. It is refused: the kernel lets nobody open the
//! ring's file (/proc/PID/map_files answers ENXIO), so a restored child
//! could not share the pages of its parent's new ring.
//!
//! Restore, in the restored process: io_setup with a size that gives a ring
//! of the same number of pages (and so the same nr); the kernel's own copy
//! of the tail moves only as requests complete, so dummy requests that
//! complete at once (reads of 0 bytes from /dev/null) are submitted and
//! reaped up to the old head, then submitted and left unreaped up to the old
//! tail, and those last events are overwritten with the saved ones. The ring
//! is then moved to its old address with mremap, which the kernel supports
//! for AIO rings (it updates the context id).
//!
//! Requests still in flight at the freeze (O_DIRECT I/O not yet done,
//! IOCB_CMD_POLL waiting) cannot be seen from outside the kernel: they are
//! not carried over (docs/limitations.md).

use crate::base64;
use crate::inject::Injector;
use crate::json::Json;
use crate::memory::MAP_FIXED_NOREPLACE;
use crate::proc;
use crate::sys::{nr, Error, Result, PAGE_SIZE};

const IO_SETUP: i64 = 206;
const IO_DESTROY: i64 = 207;
const IO_GETEVENTS: i64 = 208;
const IO_SUBMIT: i64 = 209;

/// struct aio_ring: id, nr, head, tail, magic, compat and incompat
/// features, header_length (u32 each), then the io_events.
const HEADER: u64 = 32;
/// struct io_event: data, obj, res, res2 (u64 each).
const EVENT: u64 = 32;
const MAGIC: u32 = 0xa10a10a1;
/// struct iocb.
const IOCB: usize = 64;
/// Dummy requests submitted per io_submit.
const BATCH: u64 = 128;
/// Where in the injector's scratch area the dummies are built, and how
/// much of it they need (iocbs, their pointers, the reaped events).
const AT: u64 = 16 << 10;
const SCRATCH: u64 = AT + 64 + BATCH * (IOCB as u64 + 8 + EVENT);

pub fn is_ring(path: &str) -> bool {
    path == "/[aio] (deleted)" || path == "/[aio]"
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// The ring size in events of a ring of `pages` pages.
fn events_in(pages: u64) -> u64 {
    (pages * PAGE_SIZE - HEADER) / EVENT
}

/// The io_setup argument that gives a ring of `pages` pages. The kernel
/// makes room for 2 * max(n, 4 * possible CPUs) + 2 events after the
/// header, rounded up to whole pages: this is the largest n that fits (a
/// host with more CPUs than n / 4 makes a larger ring).
fn setup_size(pages: u64) -> u64 {
    (events_in(pages) - 2) / 2
}

/// The process's AIO rings ("aio_rings" of the process document).
/// `maps`: the process's maps, read already.
pub fn dump(inj: &mut Injector, maps: &[proc::MapLine]) -> Result<Vec<Json>> {
    let mut out = Vec::new();
    for m in maps.iter().filter(|m| is_ring(&m.path)) {
        let what = format!("AIO ring at {:#x}", m.start);
        // An io_getevents of nothing fails (EINVAL) unless the address is a context of this process.
        if inj.raw(IO_GETEVENTS, &[m.start, 0, 0, 0, 0])? != 0 {
            return Err(Error::new(
                "EUNSUPPORTED",
                format!("{}: a mapping inherited over fork (its parent's ring, no context of this process) is not supported", what),
            ));
        }
        let h = inj.read_mem(m.start, HEADER as usize)?;
        let (nr_events, head, tail) = (u32_at(&h, 4) as u64, u32_at(&h, 8) as u64, u32_at(&h, 12) as u64);
        let pages = (m.end - m.start) / PAGE_SIZE;
        if u32_at(&h, 16) != MAGIC || u32_at(&h, 28) as u64 != HEADER || nr_events != events_in(pages) || tail >= nr_events {
            return Err(Error::new("EUNSUPPORTED", format!("{}: a ring layout this phaul does not know (magic {:#x}, {} events in {} pages)", what, u32_at(&h, 16), nr_events, pages)));
        }
        // The kernel takes the head modulo the size; the process may write it.
        let head = head % nr_events;
        let unreaped = (tail + nr_events - head) % nr_events;
        let mut events = Vec::with_capacity((unreaped * EVENT) as usize);
        for i in 0..unreaped {
            let slot = (head + i) % nr_events;
            events.extend_from_slice(&inj.read_mem(m.start + HEADER + slot * EVENT, EVENT as usize)?);
        }
        let mut ring = Json::obj().with("start", m.start).with("end", m.end).with("prot", m.prot).with("nr", nr_events).with("head", head).with("tail", tail);
        if !events.is_empty() {
            ring.set("events", base64::encode(&events));
        }
        out.push(ring);
    }
    Ok(out)
}

/// Rebuild the rings of process `p` in the stub (its other areas in place).
pub fn restore(inj: &mut Injector, p: &Json) -> Result<()> {
    for r in p.arr_of("aio_rings") {
        let start = r.u64_of("start").unwrap_or(0);
        let end = r.u64_of("end").unwrap_or(0);
        if start == 0 || end <= start || start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 {
            return Err(Error::new("EIMAGE", "an AIO ring in the image has no valid address"));
        }
        rebuild(inj, r, start, end).map_err(|e| e.context(format!("AIO ring at {:#x}", start)))?;
    }
    Ok(())
}

fn rebuild(inj: &mut Injector, r: &Json, start: u64, end: u64) -> Result<()> {
    let pages = (end - start) / PAGE_SIZE;
    let size = r.u64_of("nr").unwrap_or(0);
    let head = r.u64_of("head").unwrap_or(0);
    let tail = r.u64_of("tail").unwrap_or(0);
    let events = match r.str_of("events") {
        Some(e) => base64::decode(e).ok_or_else(|| Error::new("EIMAGE", "its events in the image are malformed"))?,
        None => Vec::new(),
    };
    let unreaped = (tail + size - head) % size.max(1);
    if size != events_in(pages) || head >= size || tail >= size || events.len() as u64 != unreaped * EVENT {
        return Err(Error::new("EIMAGE", "its size, head, tail or events in the image do not fit together"));
    }
    let n = setup_size(pages);
    inj.scratch(SCRATCH)?;
    // A placeholder keeps io_setup from putting the ring on (part of) its
    // own final place, from where mremap could not move it; the move
    // replaces the placeholder.
    let len = end - start;
    inj.call("mmap (placeholder)", nr::MMAP, &[start, len, 0, 0x22 | MAP_FIXED_NOREPLACE, u64::MAX, 0])?;
    let id_at = inj.put(&[0u8; 8], AT)?;
    if let Err(e) = inj.call(&format!("io_setup({})", n), IO_SETUP, &[n, id_at]) {
        let _ = inj.raw(nr::MUNMAP, &[start, len]);
        return Err(e);
    }
    let tmp = u64::from_le_bytes(inj.read_mem(id_at, 8)?.try_into().unwrap_or([0; 8]));
    let r = (|| -> Result<()> {
        let got = u32_at(&inj.read_mem(tmp, HEADER as usize)?, 4) as u64;
        if got != size {
            return Err(Error::new(
                "EUNSUPPORTED",
                format!("this host makes a ring of {} events for it, the process had {} (a host with more CPUs makes larger rings): not supported", got, size),
            ));
        }
        advance(inj, tmp, size, head, unreaped)?;
        for i in 0..unreaped {
            let slot = (head + i) % size;
            let e = &events[(i * EVENT) as usize..((i + 1) * EVENT) as usize];
            inj.write_mem(tmp + HEADER + slot * EVENT, e)?;
        }
        const MREMAP_MAYMOVE: u64 = 1;
        const MREMAP_FIXED: u64 = 2;
        inj.call("mremap", nr::MREMAP, &[tmp, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, start])?;
        let prot = r.u64_of("prot").unwrap_or(3);
        if prot != 3 {
            inj.call("mprotect", nr::MPROTECT, &[start, end - start, prot])?;
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = inj.raw(IO_DESTROY, &[tmp]);
        let _ = inj.raw(nr::MUNMAP, &[start, len]);
    }
    r
}

/// Move the kernel's tail of the new (empty) ring at `ctx` to head +
/// `unreaped` with head at `head`: dummy requests are completed and reaped
/// up to `head`, then completed and left in the ring for `unreaped` more.
fn advance(inj: &mut Injector, ctx: u64, size: u64, head: u64, unreaped: u64) -> Result<()> {
    if head == 0 && unreaped == 0 {
        return Ok(());
    }
    let path = inj.put_str("/dev/null", AT + 8)?;
    let fd = inj.call("open /dev/null", nr::OPEN, &[path, 0o2000000 /* O_RDONLY | O_CLOEXEC */, 0])?;
    let r = (|| -> Result<()> {
        let iocbs = inj.scratch(SCRATCH)? + AT + 64;
        let ptrs = iocbs + BATCH * IOCB as u64;
        let reaped = ptrs + BATCH * 8;
        let mut block = vec![0u8; BATCH as usize * (IOCB + 8)];
        for i in 0..BATCH as usize {
            // aio_lio_opcode 0 (IOCB_CMD_PREAD), aio_fildes, aio_buf, aio_nbytes 0
            let c = &mut block[i * IOCB..(i + 1) * IOCB];
            c[20..24].copy_from_slice(&(fd as u32).to_le_bytes());
            c[24..32].copy_from_slice(&reaped.to_le_bytes());
            let p = BATCH as usize * IOCB + i * 8;
            block[p..p + 8].copy_from_slice(&(iocbs + (i * IOCB) as u64).to_le_bytes());
        }
        inj.write_mem(iocbs, &block)?;
        // At most half the ring per submission: the kernel keeps part of the
        // free slots in per-CPU counts, so not all of them may be at hand.
        let mut todo = head;
        while todo > 0 {
            let n = inj.call("io_submit (dummies)", IO_SUBMIT, &[ctx, todo.min(BATCH).min(size / 2), ptrs])?;
            inj.call("io_getevents (dummies)", IO_GETEVENTS, &[ctx, n, n, reaped, 0])?;
            todo -= n.min(todo);
        }
        let mut todo = unreaped;
        while todo > 0 {
            let n = inj.call("io_submit (unreaped events)", IO_SUBMIT, &[ctx, todo.min(BATCH), ptrs])?;
            todo -= n.min(todo);
        }
        let h = inj.read_mem(ctx, HEADER as usize)?;
        if u32_at(&h, 8) as u64 != head || u32_at(&h, 12) as u64 != (head + unreaped) % size {
            return Err(Error::new("EAIO", format!("its head and tail came to {} and {}, not {} and {}", u32_at(&h, 8), u32_at(&h, 12), head, (head + unreaped) % size)));
        }
        Ok(())
    })();
    inj.call("close", nr::CLOSE, &[fd])?;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of the ring io_setup(n) makes (fs/aio.c: ioctx_alloc, aio_setup_ring).
    fn kernel_pages(n: u64, cpus: u64) -> u64 {
        let events = 2 * n.max(4 * cpus) + 2;
        (HEADER + events * EVENT).div_ceil(PAGE_SIZE)
    }

    #[test]
    fn ring_sizes_as_the_kernel_makes_them() {
        // Seen on Linux 6.18 with 2 CPUs: io_setup(16) 127 events, (63) 255, (127) 383, (255) 639.
        for (n, nr) in [(16, 127), (63, 255), (127, 383), (255, 639)] {
            assert_eq!(events_in(kernel_pages(n, 2)), nr);
        }
        for pages in 1..200 {
            assert_eq!(kernel_pages(setup_size(pages), 2), pages, "{} pages", pages);
            assert_eq!(kernel_pages(setup_size(pages), 8), pages, "{} pages, 8 CPUs", pages);
        }
        // 64 CPUs make at least a 5-page ring: a 1-page ring cannot be made there.
        assert!(kernel_pages(setup_size(1), 64) > 1);
    }

    #[test]
    fn ring_paths() {
        assert!(is_ring("/[aio] (deleted)"));
        assert!(!is_ring("/tmp/[aio] (deleted)") && !is_ring("[anon:aio]"));
    }
}
