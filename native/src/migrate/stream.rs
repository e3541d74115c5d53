//! The page stream: a TCP connection of its own from the source engine to
//! the destination engine. Frames are a 24-byte header and a payload:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic "PHPG" |
//! | 4..8 | kind: 1 hello (JSON), 2 layout (JSON list of areas of `pid`), 3 pages, 4 round end |
//! | 8..12 | pid |
//! | 12..16 | count: payload bytes (JSON kinds), pages (pages), final flag (round end) |
//! | 16..24 | addr: first page (pages), round number (round end) |
//!
//! Page payloads are raw 4 KiB pages back to back; nothing is encoded, so a
//! page costs one copy out of the source and one copy into the destination.

use crate::json::Json;
use crate::sys::{Error, Result, PAGE_SIZE};
use std::io::{Read, Write};

pub const MAGIC: u32 = u32::from_le_bytes(*b"PHPG");
pub const HELLO: u32 = 1;
pub const LAYOUT: u32 = 2;
pub const PAGES: u32 = 3;
pub const ROUND_END: u32 = 4;
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
            HELLO | LAYOUT if h.count > MAX_JSON => Err(Error::new("EPROTO", "page stream: control frame too large")),
            PAGES if h.count == 0 || h.count > MAX_PAGES => Err(Error::new("EPROTO", format!("page stream: bad page count {}", h.count))),
            PAGES if h.addr % PAGE_SIZE != 0 || h.addr >= (1 << 47) => Err(Error::new("EPROTO", format!("page stream: bad page address {:#x}", h.addr))),
            HELLO | LAYOUT | PAGES | ROUND_END => Ok(h),
            k => Err(Error::new("EPROTO", format!("page stream: unknown frame kind {}", k))),
        }
    }

    pub fn payload_len(&self) -> usize {
        match self.kind {
            HELLO | LAYOUT => self.count as usize,
            PAGES => self.count as usize * PAGE_SIZE as usize,
            _ => 0,
        }
    }
}

pub fn write_json(w: &mut impl Write, kind: u32, pid: u32, j: &Json) -> Result<()> {
    let body = j.to_string().into_bytes();
    let mut h = [0u8; HEADER];
    Header { kind, pid, count: body.len() as u32, addr: 0 }.encode(&mut h);
    w.write_all(&h).map_err(|e| Error::from(e).context("page stream"))?;
    w.write_all(&body).map_err(|e| Error::from(e).context("page stream"))
}

pub fn write_round_end(w: &mut impl Write, round: u64, last: bool) -> Result<()> {
    let mut h = [0u8; HEADER];
    Header { kind: ROUND_END, pid: 0, count: last as u32, addr: round }.encode(&mut h);
    w.write_all(&h).map_err(|e| Error::from(e).context("page stream"))?;
    w.flush().map_err(|e| Error::from(e).context("page stream"))
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
    let mut body = vec![0u8; h.payload_len()];
    r.read_exact(&mut body).map_err(|e| Error::from(e).context("page stream"))?;
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
}
