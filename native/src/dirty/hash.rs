//! Content hashing: the tracker that works everywhere. Every present page is
//! read out of the target (process_vm_readv in large batches, /proc/PID/mem
//! for what that refuses) and hashed; a page is dirty when its hash changes.
//!
//! The hash is XXH3's long-input loop (8 lanes, 32x32->64 multiply per lane,
//! a scramble every 1 KiB block, a 128-bit folding merge and the XXH3
//! avalanche) specialised to 4 KiB pages, with its own secret. It is not
//! bit-compatible with XXH3 and needs not be: hashes never leave the process.

use super::pagemap_scan::{entry_has_contents, read_entries};
use super::{segments, Segment};
use crate::inject::open_mem;
use crate::memory::{Kind, Vma};
use crate::sys::{nr, Pid, Result, PAGE_SIZE};
use std::fs::File;
use std::os::unix::fs::FileExt;

const P32_1: u64 = 0x9E3779B1;
const P32_2: u64 = 0x85EBCA77;
const P32_3: u64 = 0xC2B2AE3D;
const P64_1: u64 = 0x9E3779B185EBCA87;
const P64_2: u64 = 0xC2B2AE3D27D4EB4F;
const P64_3: u64 = 0x165667B19E3779F9;
const P64_4: u64 = 0x85EBCA77C2B2AE63;
const P64_5: u64 = 0x27D4EB2F165667C5;

const SECRET_WORDS: usize = 24; // 192 bytes, as XXH3's default secret
const STRIPES_PER_BLOCK: usize = SECRET_WORDS - 8; // the key slides one word per stripe: 16 stripes, 1 KiB
const PAGE_WORDS: usize = 512;

const fn make_secret() -> [u64; SECRET_WORDS] {
    // splitmix64 from a fixed seed.
    let mut s = [0u64; SECRET_WORDS];
    let mut x: u64 = 0x7068_6175_6c2d_6469; // "phaul-di"
    let mut i = 0;
    while i < SECRET_WORDS {
        x = x.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        s[i] = z ^ (z >> 31);
        i += 1;
    }
    s
}
static SECRET: [u64; SECRET_WORDS] = make_secret();

#[inline(always)]
fn mul128_fold64(a: u64, b: u64) -> u64 {
    let p = (a as u128) * (b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

#[inline(always)]
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 37;
    h = h.wrapping_mul(0x165667919E3779F9);
    h ^ (h >> 32)
}

#[inline(always)]
fn page_hash_body(page: &[u8; 4096]) -> u64 {
    let mut acc: [u64; 8] = [P32_3, P64_1, P64_2, P64_3, P64_4, P32_2, P64_5, P32_1];
    let mut w = [0u64; PAGE_WORDS];
    for (i, c) in page.chunks_exact(8).enumerate() {
        w[i] = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    }
    let blocks = PAGE_WORDS / (STRIPES_PER_BLOCK * 8); // 4 blocks of 1 KiB
    for b in 0..blocks {
        for s in 0..STRIPES_PER_BLOCK {
            let base = (b * STRIPES_PER_BLOCK + s) * 8;
            for l in 0..8 {
                let dv = w[base + l];
                let dk = dv ^ SECRET[s + l];
                acc[l ^ 1] = acc[l ^ 1].wrapping_add(dv);
                acc[l] = acc[l].wrapping_add((dk & 0xffff_ffff).wrapping_mul(dk >> 32));
            }
        }
        // Scramble with the last 64 bytes of the secret.
        for l in 0..8 {
            let mut a = acc[l];
            a ^= a >> 47;
            a ^= SECRET[SECRET_WORDS - 8 + l];
            acc[l] = a.wrapping_mul(P32_1);
        }
    }
    let mut h = (4096u64).wrapping_mul(P64_1);
    for i in 0..4 {
        h = h.wrapping_add(mul128_fold64(acc[2 * i] ^ SECRET[1 + 2 * i], acc[2 * i + 1] ^ SECRET[2 + 2 * i]));
    }
    avalanche(h)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn page_hash_avx2(page: &[u8; 4096]) -> u64 {
    page_hash_body(page)
}

fn page_hash_generic(page: &[u8; 4096]) -> u64 {
    page_hash_body(page)
}

/// The 64-bit hash of one 4 KiB page.
pub fn page_hash(page: &[u8; 4096]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *AVX2.get_or_init(|| std::is_x86_feature_detected!("avx2")) {
            return unsafe { page_hash_avx2(page) };
        }
    }
    page_hash_generic(page)
}

/// Hash many consecutive pages of `buf` into `out`, on two threads when it pays.
pub fn hash_pages(buf: &[u8], out: &mut [u64]) {
    let n = out.len();
    let one = |b: &[u8], o: &mut [u64]| {
        for (i, h) in o.iter_mut().enumerate() {
            let p: &[u8; 4096] = b[i * 4096..(i + 1) * 4096].try_into().unwrap();
            *h = page_hash(p);
        }
    };
    if n < 256 {
        one(buf, out);
        return;
    }
    let half = n / 2;
    let (b1, b2) = buf.split_at(half * 4096);
    let (o1, o2) = out.split_at_mut(half);
    std::thread::scope(|s| {
        s.spawn(|| one(b2, o2));
        one(b1, o1);
    });
}

// ---- reading another process's pages ----

#[repr(C)]
struct Iovec {
    base: u64,
    len: u64,
}

/// Reads page runs of one process: process_vm_readv with many remote iovecs
/// per call; /proc/PID/mem for areas it refuses (PROT_NONE) and pages that
/// vanish (those read as zeros).
pub struct Reader {
    pid: Pid,
    mem: File,
    buf: Vec<u8>,
}

pub const BATCH_PAGES: usize = 2048; // 8 MiB per batch

impl Reader {
    pub fn new(pid: Pid) -> Result<Reader> {
        Reader::with_pages(pid, BATCH_PAGES)
    }

    /// A reader of at most `pages` pages a read (`BATCH_PAGES` at most).
    pub fn with_pages(pid: Pid, pages: usize) -> Result<Reader> {
        Ok(Reader { pid, mem: open_mem(pid, false)?, buf: vec![0u8; pages.min(BATCH_PAGES) * 4096] })
    }

    /// Read `pages` (ascending page addresses, at most BATCH_PAGES) into the
    /// internal buffer and return it.
    pub fn read(&mut self, pages: &[u64], readable: bool) -> &[u8] {
        let n = pages.len().min(self.buf.len() / 4096);
        let total = n * 4096;
        let mut done = 0usize;
        if readable {
            let mut remote: Vec<Iovec> = Vec::with_capacity(64);
            let mut i = 0;
            while i < n {
                let mut j = i + 1;
                while j < n && pages[j] == pages[j - 1] + PAGE_SIZE {
                    j += 1;
                }
                remote.push(Iovec { base: pages[i], len: ((j - i) * 4096) as u64 });
                i = j;
            }
            // IOV_MAX is 1024 remote iovecs per call.
            let mut k = 0;
            while k < remote.len() {
                let chunk = &remote[k..(k + 1024).min(remote.len())];
                let want: u64 = chunk.iter().map(|v| v.len).sum();
                let local = Iovec { base: self.buf[done..].as_mut_ptr() as u64, len: want };
                let r = unsafe {
                    crate::sys::raw(nr::PROCESS_VM_READV, &[self.pid as u64, &local as *const Iovec as u64, 1, chunk.as_ptr() as u64, chunk.len() as u64, 0])
                };
                match r {
                    Ok(got) if got as u64 == want => {
                        done += want as usize;
                        k += chunk.len();
                    }
                    Ok(got) => {
                        // Partial: keep whole pages read, the rest by /proc/PID/mem.
                        done += (got as usize) & !4095;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        // Whatever is left: /proc/PID/mem (reads through protections), page
        // runs at once, page by page when a run fails.
        let mut p = done / 4096;
        while p < n {
            let mut q = p + 1;
            while q < n && pages[q] == pages[q - 1] + PAGE_SIZE && q - p < 256 {
                q += 1;
            }
            let dst = &mut self.buf[p * 4096..q * 4096];
            if self.mem.read_exact_at(dst, pages[p]).is_err() {
                for (i, a) in (p..q).enumerate() {
                    let d = &mut self.buf[(p + i) * 4096..(p + i + 1) * 4096];
                    if self.mem.read_exact_at(d, pages[a]).is_err() {
                        d.fill(0);
                    }
                }
            }
            p = q;
        }
        &self.buf[..total]
    }
}

// ---- the tracker ----

/// Read and hash `pages` (at most 2 * BATCH_PAGES) into `out`: two readers
/// on two threads, each reading and hashing its half.
fn read_and_hash(readers: &mut [Reader; 2], pages: &[u64], readable: bool, out: &mut [u64]) {
    let work = |r: &mut Reader, p: &[u64], o: &mut [u64]| {
        let data = r.read(p, readable);
        for (i, h) in o.iter_mut().enumerate() {
            *h = page_hash(data[i * 4096..(i + 1) * 4096].try_into().unwrap());
        }
    };
    let [r1, r2] = readers;
    if pages.len() < 256 {
        work(r1, pages, out);
        return;
    }
    let half = pages.len() / 2;
    let (p1, p2) = pages.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    std::thread::scope(|s| {
        s.spawn(|| work(r2, p2, o2));
        work(r1, p1, o1);
    });
}

pub struct HashTracker {
    pid: Pid,
    pagemap: File,
    readers: [Reader; 2],
    /// (page address, hash) of every page with contents, ascending.
    hashes: Vec<(u64, u64)>,
    /// Pages reported while the target ran: what the caller copied after our
    /// read is unknown to us (a write and a write-back in between would look
    /// clean), so they are reported again in the frozen round unless the
    /// caller told us what it sent (`note_sent`).
    unverified: Vec<u64>,
}

/// Pages with contents in [s, e) of `v`, ascending.
fn pages_with_contents(pagemap: &File, v: &Vma, s: u64, e: u64, out: &mut Vec<u64>) -> Result<()> {
    let pf = v.kind == Kind::File && !v.shared;
    read_entries(pagemap, s, e, |base, ents| {
        for (i, &en) in ents.iter().enumerate() {
            if entry_has_contents(en, pf) {
                out.push(base + i as u64 * PAGE_SIZE);
            }
        }
    })
}

impl HashTracker {
    pub fn start(pid: Pid, vmas: &[Vma]) -> Result<HashTracker> {
        let pagemap = File::open(format!("/proc/{}/pagemap", pid)).map_err(|e| crate::sys::Error::from(e).context(format!("opening /proc/{}/pagemap", pid)))?;
        let mut t = HashTracker { pid, pagemap, readers: [Reader::new(pid)?, Reader::new(pid)?], hashes: Vec::new(), unverified: Vec::new() };
        let mut dirty = Vec::new();
        t.collect(&[], vmas, &mut dirty, false)?;
        t.unverified.clear();
        Ok(t)
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// `known`: ranges seen in the previous round (sorted, merged).
    pub fn collect(&mut self, known: &[(u64, u64)], vmas: &[Vma], out: &mut Vec<u64>, frozen: bool) -> Result<()> {
        let old = std::mem::take(&mut self.hashes);
        let mut new: Vec<(u64, u64)> = Vec::with_capacity(old.len() + 1024);
        let mut pages = Vec::new();
        let mut hs = vec![0u64; 2 * BATCH_PAGES];
        for v in vmas.iter().filter(|v| v.stores_pages()) {
            for Segment { start, end, known: seen } in segments(known, v.start, v.end) {
                pages.clear();
                pages_with_contents(&self.pagemap, v, start, end, &mut pages)?;
                let lo = old.partition_point(|x| x.0 < start);
                let hi = old.partition_point(|x| x.0 < end);
                let prev = &old[lo..hi];
                let mut pi = 0usize; // cursor in prev
                for chunk in pages.chunks(2 * BATCH_PAGES) {
                    let h = &mut hs[..chunk.len()];
                    read_and_hash(&mut self.readers, chunk, v.prot & 1 != 0, h);
                    for (k, &a) in chunk.iter().enumerate() {
                        // Pages that were there before and are gone now: their
                        // contents became zero (MADV_DONTNEED) or will refault.
                        while pi < prev.len() && prev[pi].0 < a {
                            if seen {
                                out.push(prev[pi].0);
                            }
                            pi += 1;
                        }
                        let changed = if pi < prev.len() && prev[pi].0 == a {
                            pi += 1;
                            prev[pi - 1].1 != h[k]
                        } else {
                            true
                        };
                        if changed {
                            out.push(a);
                        }
                        new.push((a, h[k]));
                    }
                }
                if seen {
                    out.extend(prev[pi..].iter().map(|x| x.0));
                }
            }
        }
        self.hashes = new;
        if frozen {
            // Only those still in an area: one unmapped since the last round
            // (a process that maps and unmaps all the time) has no page to
            // send, and the destination has no area to write it to.
            let hs = &self.hashes;
            out.extend(self.unverified.iter().filter(|a| hs.binary_search_by_key(*a, |x| x.0).is_ok()));
            self.unverified.clear();
        } else {
            // Remember what we just reported (deduplicated, sorted later).
            self.unverified.extend_from_slice(out);
            self.unverified.sort_unstable();
            self.unverified.dedup();
            // Forget pages whose area is gone.
            let hs = &self.hashes;
            self.unverified.retain(|a| hs.binary_search_by_key(a, |x| x.0).is_ok());
        }
        Ok(())
    }

    /// The caller sent `data` as the contents of page `addr`: compare later
    /// rounds against exactly that.
    pub fn note_sent(&mut self, addr: u64, data: &[u8; 4096]) {
        if let Ok(i) = self.hashes.binary_search_by_key(&addr, |x| x.0) {
            self.hashes[i].1 = page_hash(data);
        }
        if let Ok(i) = self.unverified.binary_search(&addr) {
            self.unverified.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sensitive_to_every_bit() {
        let mut p = [0u8; 4096];
        let base = page_hash(&p);
        let mut seen = std::collections::HashSet::new();
        seen.insert(base);
        for byte in (0..4096).step_by(7) {
            for bit in [0u8, 3, 7] {
                p[byte] ^= 1 << bit;
                let h = page_hash(&p);
                assert!(seen.insert(h), "collision at byte {} bit {}", byte, bit);
                p[byte] ^= 1 << bit;
            }
        }
        assert_eq!(page_hash(&p), base);
        assert_eq!(page_hash_generic(&p), base);
        // Swapping two words must change the hash (lanes are not symmetric).
        p[0] = 1;
        let a = page_hash(&p);
        p[0] = 0;
        p[8] = 1;
        assert_ne!(a, page_hash(&p));
    }

    #[test]
    fn hash_pages_matches_single() {
        let mut buf = vec![0u8; 300 * 4096];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i * 31 % 251) as u8;
        }
        let mut out = vec![0u64; 300];
        hash_pages(&buf, &mut out);
        for i in 0..300 {
            assert_eq!(out[i], page_hash(buf[i * 4096..(i + 1) * 4096].try_into().unwrap()));
        }
    }
}

#[cfg(test)]
mod bench {
    #[test]
    #[ignore]
    fn bench_hash_speed() {
        let buf = vec![7u8; 256 << 20];
        let mut out = vec![0u64; buf.len() / 4096];
        for _ in 0..3 {
            let t = std::time::Instant::now();
            for (i, h) in out.iter_mut().enumerate() {
                *h = super::page_hash(buf[i * 4096..(i + 1) * 4096].try_into().unwrap());
            }
            let one = t.elapsed();
            let t = std::time::Instant::now();
            for c in 0..32 {
                let n = out.len() / 32;
                super::hash_pages(&buf[c * n * 4096..(c + 1) * n * 4096], &mut out[c * n..(c + 1) * n]);
            }
            let two = t.elapsed();
            let gb = buf.len() as f64 / 1e9;
            println!("hash: 1 thread {:.1} GB/s, hash_pages {:.1} GB/s", gb / one.as_secs_f64(), gb / two.as_secs_f64());
        }
    }
}
