//! The page stream: a TCP connection of its own from the source engine to
//! the destination engine. Frames are a 24-byte header and a payload:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic "PHPG" |
//! | 4..8 | kind: 1 hello (JSON), 2 layout (JSON list of areas of `pid`), 3 pages, 4 round end, 5 final state (JSON); back from the destination: 6 restored (JSON), 8 committed, 9 abort (JSON); 7 commit |
//! | 8..12 | pid |
//! | 12..16 | count: payload bytes (JSON kinds), pages (pages), final flag (round end) |
//! | 16..24 | addr: first page (pages), round number (round end) |
//!
//! Page payloads are raw 4 KiB pages back to back; nothing is encoded, so a
//! page costs one copy out of the source and one copy into the destination.

use crate::json::Json;
use crate::sys::{Error, Result, PAGE_SIZE};
use std::io::{Read, Write};

/// Whether anything (a frame, or the end of the connection) can be read
/// from `b` without waiting.
pub fn waiting(b: &std::io::BufReader<std::net::TcpStream>) -> bool {
    use std::os::fd::AsRawFd;
    !b.buffer().is_empty() || crate::sys::poll(&mut [crate::sys::PollFd::new(b.get_ref().as_raw_fd(), crate::sys::POLLIN | crate::sys::POLLRDHUP)], 0) > 0
}

pub const MAGIC: u32 = u32::from_le_bytes(*b"PHPG");
pub const HELLO: u32 = 1;
pub const LAYOUT: u32 = 2;
pub const PAGES: u32 = 3;
pub const ROUND_END: u32 = 4;
/// The final state document (JSON), after the last round: the destination
/// can restore without waiting for the control channel to relay it.
pub const STATE: u32 = 5;
/// The end of a migration is agreed engine to engine on this stream, so an
/// agent (or its control connection) dying cannot split it: the destination
/// reports RESTORED (its copy held stopped), the source answers COMMIT, the
/// destination lets its copy run and answers COMMITTED, and only then does
/// the source kill its own. ABORT (JSON error) says the destination gave up.
pub const RESTORED: u32 = 6;
pub const COMMIT: u32 = 7;
pub const COMMITTED: u32 = 8;
pub const ABORT: u32 = 9;
/// Source -> destination, first in a final round when processes started or
/// ended during pre-copy: {"gone": [pid], "processes": [layout entry]},
/// the stubs to drop and the final tree (new processes with their areas).
pub const TREE: u32 = 10;
/// Source -> destination, after the final round and before STATE: one
/// process's entry of the final state, sent as soon as it is dumped, so that
/// writing, sending and reading the entries overlap the dump of the next
/// process. STATE then comes without "processes" and says how many came
/// this way ("processes_streamed").
pub const STATE_PROCESS: u32 = 11;
pub const HEADER: usize = 24;
/// Pages per frame (1 MiB): big enough for full-speed copies, small enough to stream.
pub const MAX_PAGES: u32 = 256;
pub const MAX_JSON: u32 = 64 << 20;

#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub kind: u32,
    pub pid: u32,
    pub count: u32,
    pub addr: u64,
}

impl Header {
    pub fn encode(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&self.kind.to_le_bytes());
        out[8..12].copy_from_slice(&self.pid.to_le_bytes());
        out[12..16].copy_from_slice(&self.count.to_le_bytes());
        out[16..24].copy_from_slice(&self.addr.to_le_bytes());
    }

    /// Parse and validate a header; a peer that sends garbage gets a clear error.
    pub fn decode(b: &[u8; HEADER]) -> Result<Header> {
        let g = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        if g(0) != MAGIC {
            return Err(Error::new("EPROTO", "page stream: bad frame magic (not a phaul page stream, or corrupted)"));
        }
        let h = Header { kind: g(4), pid: g(8), count: g(12), addr: u64::from_le_bytes(b[16..24].try_into().unwrap_or([0; 8])) };
        match h.kind {
            HELLO | LAYOUT | TREE | STATE | STATE_PROCESS | RESTORED | ABORT if h.count > MAX_JSON => Err(Error::new("EPROTO", "page stream: control frame too large")),
            COMMIT | COMMITTED if h.count != 0 => Err(Error::new("EPROTO", "page stream: bad commit frame")),
            PAGES if h.count == 0 || h.count > MAX_PAGES => Err(Error::new("EPROTO", format!("page stream: bad page count {}", h.count))),
            PAGES if h.addr % PAGE_SIZE != 0 || h.addr >= (1 << 47) => Err(Error::new("EPROTO", format!("page stream: bad page address {:#x}", h.addr))),
            HELLO | LAYOUT | TREE | PAGES | ROUND_END | STATE | STATE_PROCESS | RESTORED | COMMIT | COMMITTED | ABORT => Ok(h),
            k => Err(Error::new("EPROTO", format!("page stream: unknown frame kind {}", k))),
        }
    }

    pub fn payload_len(&self) -> usize {
        match self.kind {
            HELLO | LAYOUT | TREE | STATE | STATE_PROCESS | RESTORED | ABORT => self.count as usize,
            PAGES => self.count as usize * PAGE_SIZE as usize,
            _ => 0,
        }
    }
}

pub fn write_json(w: &mut impl Write, kind: u32, pid: u32, j: &Json) -> Result<()> {
    let body = j.to_string().into_bytes();
    write_frame(w, &encoded(Header { kind, pid, count: body.len() as u32, addr: 0 }), &body)
}

fn encoded(h: Header) -> [u8; HEADER] {
    let mut b = [0u8; HEADER];
    h.encode(&mut b);
    b
}

fn write_frame(w: &mut impl Write, header: &[u8; HEADER], body: &[u8]) -> Result<()> {
    w.write_all(header).map_err(|e| Error::from(e).context("page stream"))?;
    w.write_all(body).map_err(|e| Error::from(e).context("page stream"))
}

pub fn write_round_end(w: &mut impl Write, round: u64, last: bool) -> Result<()> {
    let mut h = [0u8; HEADER];
    Header { kind: ROUND_END, pid: 0, count: last as u32, addr: round }.encode(&mut h);
    w.write_all(&h).map_err(|e| Error::from(e).context("page stream"))?;
    w.flush().map_err(|e| Error::from(e).context("page stream"))
}

/// Integrity sum of one round (frames, headers included, in order): eight
/// lanes of 64-bit words, each keeping a running sum and a sum of running
/// sums (Fletcher's scheme, so the order of blocks counts), folded to 32 bits
/// and carried in the round end's pid field. Plain additions vectorize: the
/// sum costs a few percent of a copy. It detects damage in transit (a flipped
/// bit, a lost, repeated or swapped chunk), not a forger: anyone who can
/// write into the stream can recompute it (docs/security.md).
#[derive(Clone)]
pub struct RoundSum {
    a: [u64; LANES],
    b: [u64; LANES],
    len: u64,
    tail: Vec<u8>,
}

const LANES: usize = 8;
const BLOCK: usize = LANES * 8;

impl RoundSum {
    pub fn new() -> RoundSum {
        RoundSum { a: [0; LANES], b: [0; LANES], len: 0, tail: Vec::new() }
    }

    fn blocks(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(BLOCK);
        let (mut a, mut b) = (self.a, self.b);
        for c in &mut chunks {
            for l in 0..LANES {
                let w = u64::from_le_bytes(c[l * 8..l * 8 + 8].try_into().unwrap_or([0; 8]));
                a[l] = a[l].wrapping_add(w);
                b[l] = b[l].wrapping_add(a[l]);
            }
        }
        self.a = a;
        self.b = b;
        self.tail.extend_from_slice(chunks.remainder());
    }

    pub fn add(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.tail.is_empty() {
            self.blocks(bytes);
            return;
        }
        let need = BLOCK - self.tail.len();
        if bytes.len() < need {
            self.tail.extend_from_slice(bytes);
            return;
        }
        let mut first = std::mem::take(&mut self.tail);
        first.extend_from_slice(&bytes[..need]);
        self.blocks(&first);
        self.blocks(&bytes[need..]);
    }

    pub fn add_header(&mut self, h: &Header) {
        let mut b = [0u8; HEADER];
        h.encode(&mut b);
        self.add(&b);
    }

    pub fn finish(&self) -> u32 {
        let mut last = [0u8; BLOCK];
        last[..self.tail.len()].copy_from_slice(&self.tail);
        let mut x = self.clone();
        x.tail.clear();
        x.blocks(&last);
        let mut h = x.len.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for v in x.a.iter().chain(x.b.iter()) {
            h = (h ^ v).wrapping_mul(0xc4ce_b9fe_1a85_ec53).rotate_left(31);
        }
        (h ^ (h >> 32)) as u32
    }
}

pub fn write_json_summed(w: &mut impl Write, kind: u32, pid: u32, j: &Json, sum: &mut RoundSum) -> Result<()> {
    let body = j.to_string().into_bytes();
    let h = encoded(Header { kind, pid, count: body.len() as u32, addr: 0 });
    sum.add(&h);
    sum.add(&body);
    write_frame(w, &h, &body)
}

pub fn write_round_end_summed(w: &mut impl Write, round: u64, last: bool, sum: &RoundSum) -> Result<()> {
    let mut h = [0u8; HEADER];
    Header { kind: ROUND_END, pid: sum.finish(), count: last as u32, addr: round }.encode(&mut h);
    w.write_all(&h).map_err(|e| Error::from(e).context("page stream"))?;
    w.flush().map_err(|e| Error::from(e).context("page stream"))
}

/// A JSON frame outside a round (the final state) carries the sum of its body in `addr`.
pub fn write_json_checked(w: &mut impl Write, kind: u32, pid: u32, j: &Json) -> Result<()> {
    write_text_checked(w, kind, pid, j.to_string())
}

/// A JSON frame of a document already written out.
pub fn write_text_checked(w: &mut impl Write, kind: u32, pid: u32, text: String) -> Result<()> {
    let body = text.into_bytes();
    let mut sum = RoundSum::new();
    sum.add(&body);
    write_frame(w, &encoded(Header { kind, pid, count: body.len() as u32, addr: sum.finish() as u64 }), &body)
}

/// A frame without payload (commit, committed), flushed at once.
pub fn write_signal(w: &mut impl Write, kind: u32) -> Result<()> {
    write_frame(w, &encoded(Header { kind, pid: 0, count: 0, addr: 0 }), &[])?;
    w.flush().map_err(|e| Error::from(e).context("page stream"))
}

pub fn read_json_checked(r: &mut impl Read, h: &Header) -> Result<Json> {
    let body = read_body(r, h)?;
    let mut sum = RoundSum::new();
    sum.add(&body);
    if h.addr != sum.finish() as u64 {
        return Err(Error::new("EPROTO", "page stream: a control frame (final state, restored or abort) arrived damaged (checksum mismatch)"));
    }
    parse_body(body)
}

pub fn read_json_summed(r: &mut impl Read, h: &Header, sum: &mut RoundSum) -> Result<Json> {
    let body = read_body(r, h)?;
    sum.add(&body);
    parse_body(body)
}

pub fn read_header(r: &mut impl Read) -> Result<Header> {
    let mut b = [0u8; HEADER];
    r.read_exact(&mut b).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::new("ECONNRESET", "page stream: the source closed the connection")
        } else if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut {
            Error::new("ETIMEDOUT", "page stream: timed out waiting for the source")
        } else {
            Error::from(e).context("page stream")
        }
    })?;
    Header::decode(&b)
}

pub fn read_json(r: &mut impl Read, h: &Header) -> Result<Json> {
    parse_body(read_body(r, h)?)
}

/// A JSON frame's payload. Read as it arrives, up to the announced length:
/// a header that announces 64 MiB and then stops costs no 64 MiB allocation.
fn read_body(r: &mut impl Read, h: &Header) -> Result<Vec<u8>> {
    let len = h.payload_len();
    let mut body = Vec::with_capacity(len.min(1 << 20));
    r.take(len as u64).read_to_end(&mut body).map_err(|e| Error::from(e).context("page stream"))?;
    if body.len() != len {
        return Err(Error::new("ECONNRESET", "page stream: the connection closed inside a control frame"));
    }
    Ok(body)
}

fn parse_body(body: Vec<u8>) -> Result<Json> {
    let text = String::from_utf8(body).map_err(|_| Error::new("EPROTO", "page stream: control frame is not UTF-8"))?;
    Json::parse(&text).map_err(|m| Error::new("EPROTO", format!("page stream: {}", m)))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn header_roundtrip_and_validation() {
        let mut b = [0u8; HEADER];
        Header { kind: PAGES, pid: 7, count: 3, addr: 0x7000 }.encode(&mut b);
        let h = Header::decode(&b).unwrap();
        assert_eq!((h.kind, h.pid, h.count, h.addr), (PAGES, 7, 3, 0x7000));
        Header { kind: PAGES, pid: 7, count: 3, addr: 0x7001 }.encode(&mut b);
        assert!(Header::decode(&b).is_err());
        Header { kind: PAGES, pid: 7, count: MAX_PAGES + 1, addr: 0 }.encode(&mut b);
        assert!(Header::decode(&b).is_err());
        Header { kind: 99, pid: 7, count: 0, addr: 0 }.encode(&mut b);
        assert!(Header::decode(&b).is_err());
        b[0] = 0;
        assert!(Header::decode(&b).is_err());
    }

    // ------------------------------------------------------------ fuzzing
    //
    // Random and mutated frame sequences through the header decoder and a
    // reader loop shaped like the destination's receive_round (layouts parsed
    // into memory areas, pages bounds-checked into a fake address space).
    // Deterministic seeds; every case must end in Ok or a clean Err, never a
    // panic or a hang. Run by CI through test/fuzz-native.test.ts.

    use crate::memory::Vma;
    use std::io::Cursor;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            if n == 0 { 0 } else { self.next() % n }
        }
    }

    /// A receiver: Ok(pages, last) at a round end, Err on anything malformed.
    fn read_frames(r: &mut impl Read) -> Result<(u64, bool)> {
        let mut buf = vec![0u8; MAX_PAGES as usize * PAGE_SIZE as usize];
        let mut pages = 0u64;
        let mut frames = 0;
        loop {
            frames += 1;
            assert!(frames < 100_000, "reader loop does not end");
            let h = read_header(r)?;
            match h.kind {
                HELLO => {
                    let j = read_json(r, &h)?;
                    let _ = (j.str_of("migration"), j.str_of("token"));
                }
                LAYOUT => {
                    let j = read_json(r, &h)?;
                    let vmas = j.as_arr().iter().map(Vma::from_json).collect::<Result<Vec<_>>>()?;
                    for v in &vmas {
                        assert!(v.start < v.end);
                    }
                }
                PAGES => {
                    let len = h.payload_len();
                    assert!(len <= buf.len() && len > 0);
                    r.read_exact(&mut buf[..len]).map_err(|e| Error::new("ECONNRESET", format!("page stream broke mid-frame: {}", e)))?;
                    assert!(h.addr + len as u64 <= 1 << 47);
                    pages += h.count as u64;
                }
                ROUND_END => return Ok((pages, h.count != 0)),
                _ => return Err(Error::new("EPROTO", "page stream: unexpected frame")),
            }
        }
    }

    fn valid_stream(rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        let hello = Json::obj().with("migration", "m-1").with("token", "t0k3n");
        write_json(&mut out, HELLO, 0, &hello).unwrap();
        let layout = format!(
            "[{{\"start\":{},\"end\":{},\"prot\":\"rw-p\",\"kind\":\"anon\"}}]",
            0x10000, 0x10000 + 4096 * (1 + rng.below(8))
        );
        let layout = Json::parse(&layout).unwrap();
        write_json(&mut out, LAYOUT, 7, &layout).unwrap();
        for _ in 0..rng.below(4) {
            let n = 1 + rng.below(3) as u32;
            let mut h = [0u8; HEADER];
            Header { kind: PAGES, pid: 7, count: n, addr: 0x10000 + 4096 * rng.below(4) }.encode(&mut h);
            out.extend_from_slice(&h);
            out.extend(std::iter::repeat(rng.next() as u8).take(n as usize * PAGE_SIZE as usize));
        }
        write_round_end(&mut out, rng.below(3), rng.below(2) == 1).unwrap();
        out
    }

    fn mutate(rng: &mut Rng, mut b: Vec<u8>) -> Vec<u8> {
        for _ in 0..1 + rng.below(4) {
            match rng.below(6) {
                0 if !b.is_empty() => {
                    let i = rng.below(b.len() as u64) as usize;
                    b[i] ^= 1 << rng.below(8);
                }
                1 if !b.is_empty() => {
                    let i = rng.below(b.len() as u64) as usize;
                    b[i] = rng.next() as u8;
                }
                2 => {
                    let n = rng.below(b.len() as u64 + 1) as usize;
                    b.truncate(n);
                }
                3 if b.len() >= HEADER => {
                    // a hostile header field: kind, pid, count or addr set to an edge value
                    let field = [4usize, 8, 12, 16][rng.below(4) as usize];
                    let v: u32 = [0, 1, 2, 3, 4, 5, 255, 256, 257, u32::MAX, MAX_JSON, MAX_JSON + 1][rng.below(12) as usize];
                    let frame_starts: Vec<usize> = (0..b.len() - 3).filter(|&i| b[i..i + 4] == MAGIC.to_le_bytes()).collect();
                    if let Some(&at) = frame_starts.get(rng.below(frame_starts.len() as u64) as usize) {
                        if at + field + 4 <= b.len() {
                            b[at + field..at + field + 4].copy_from_slice(&v.to_le_bytes());
                        }
                    }
                }
                4 => {
                    let i = rng.below(b.len() as u64 + 1) as usize;
                    let extra: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
                    b.splice(i..i, extra);
                }
                _ if !b.is_empty() => {
                    let i = rng.below(b.len() as u64) as usize;
                    let n = rng.below((b.len() - i) as u64 + 1) as usize;
                    b.drain(i..i + n);
                }
                _ => {}
            }
        }
        b
    }

    fn check_error(e: &Error) {
        let m = format!("{:?}", e);
        assert!(!m.is_empty());
    }

    #[test]
    fn fuzz_header_decoder() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut ok = 0;
        for i in 0..60_000u32 {
            let mut b = [0u8; HEADER];
            for x in b.iter_mut() {
                *x = rng.next() as u8;
            }
            if i % 2 == 0 {
                b[0..4].copy_from_slice(&MAGIC.to_le_bytes()); // get past the magic
                b[4..8].copy_from_slice(&((rng.below(6)) as u32).to_le_bytes());
            }
            match Header::decode(&b) {
                Ok(h) => {
                    ok += 1;
                    assert!(h.payload_len() <= MAX_JSON as usize);
                    if h.kind == PAGES {
                        assert!(h.count >= 1 && h.count <= MAX_PAGES && h.addr % PAGE_SIZE == 0 && h.addr < 1 << 47);
                    }
                }
                Err(e) => check_error(&e),
            }
        }
        assert!(ok > 1000, "the generator should reach valid headers ({})", ok);
    }

    #[test]
    fn fuzz_frame_reader() {
        let mut rng = Rng(0x5eed_0001);
        let (mut ok, mut err) = (0, 0);
        for i in 0..20_000u32 {
            let base = valid_stream(&mut rng);
            let input = if i % 10 == 0 {
                base
            } else if i % 10 == 1 {
                (0..rng.below(200)).map(|_| rng.next() as u8).collect()
            } else {
                mutate(&mut rng, base)
            };
            match read_frames(&mut Cursor::new(input)) {
                Ok(_) => ok += 1,
                Err(e) => {
                    check_error(&e);
                    err += 1
                }
            }
        }
        assert!(ok >= 2000 && err >= 5000, "ok {} err {}", ok, err);
    }

    #[test]
    fn round_sum_split_invariant_and_sensitive() {
        let mut rng = Rng(42);
        for _ in 0..200 {
            let data: Vec<u8> = (0..rng.below(5000)).map(|_| rng.next() as u8).collect();
            let mut a = RoundSum::new();
            a.add(&data);
            let mut b = RoundSum::new();
            let mut i = 0;
            while i < data.len() {
                let n = (1 + rng.below(100) as usize).min(data.len() - i);
                b.add(&data[i..i + n]);
                i += n;
            }
            assert_eq!(a.finish(), b.finish());
            if !data.is_empty() {
                let mut d = data.clone();
                let k = rng.below(d.len() as u64) as usize;
                d[k] ^= 1 << rng.below(8);
                let mut c = RoundSum::new();
                c.add(&d);
                assert_ne!(a.finish(), c.finish());
            }
            // Two different blocks swapped (a chunk delivered out of order).
            if data.len() >= 256 && data[..64] != data[128..192] {
                let mut d = data.clone();
                let (x, y) = d.split_at_mut(128);
                x[..64].swap_with_slice(&mut y[..64]);
                let mut c = RoundSum::new();
                c.add(&d);
                assert_ne!(a.finish(), c.finish());
            }
        }
    }

    /// cargo test --release round_sum_speed -- --ignored --nocapture
    #[test]
    #[ignore]
    fn round_sum_speed() {
        let data = vec![0x5au8; 1 << 20];
        let t = std::time::Instant::now();
        let mut s = RoundSum::new();
        for _ in 0..2048 {
            s.add(&data);
        }
        let secs = t.elapsed().as_secs_f64();
        println!("RoundSum: {:.1} GB/s ({})", 2.0 * 1.073741824 / secs, s.finish());
    }
}
