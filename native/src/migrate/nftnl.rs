//! Adding elements to an nftables set over netlink (NFT_MSG_NEWSETELEM in
//! one batch), without running nft. The handoff holds back a frozen tree's
//! connections by adding them to sets its table already matches on; nft
//! needs 10-15 ms to start and 5-6 ms to apply a script here, and this
//! happens inside the frozen window, where one netlink round trip costs
//! well under a millisecond.
//!
//! Wire format (include/uapi/linux/netfilter/nf_tables.h, nfnetlink.h): each
//! message is an nlmsghdr, an nfgenmsg (family, version 0, resource id) and
//! attributes; changes travel between NFNL_MSG_BATCH_BEGIN and _END.

use crate::sys::{self, Error, Fd, Result};

pub(super) const NETLINK_NETFILTER: u64 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const RECVFROM: i64 = 45;

/// A netlink socket for nf_tables, in the network namespace of socket `of`.
pub fn socket_beside(of: &Fd) -> Result<Fd> {
    crate::sockets::netlink_socket_beside(of, NETLINK_NETFILTER)
}

pub(super) fn attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_le_bytes());
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(payload);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn nested(out: &mut Vec<u8>, ty: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = (out.len() - at) as u16;
    out[at..at + 2].copy_from_slice(&len.to_le_bytes());
    out[at + 2..at + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_le_bytes());
}

pub(super) fn message(out: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) {
    out.extend_from_slice(&((16 + 4 + attrs.len()) as u32).to_le_bytes());
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
}

/// One nf_tables batch of set element requests, each answered: `requests`
/// are (message type, extra flags, attributes), numbered from 2 (the batch
/// begins with 1). Returns the batch and the numbers to await.
fn framed(requests: Vec<(u16, u16, Vec<u8>)>) -> (Vec<u8>, Vec<u32>) {
    let mut out = Vec::new();
    let res = NFNL_SUBSYS_NFTABLES;
    message(&mut out, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 1, 0, res, &[]);
    let mut acked = Vec::with_capacity(requests.len());
    for (k, (ty, flags, a)) in requests.into_iter().enumerate() {
        let seq = 2 + k as u32;
        message(&mut out, (NFNL_SUBSYS_NFTABLES << 8) | ty, NLM_F_REQUEST | NLM_F_ACK | flags, seq, NFPROTO_INET, 0, &a);
        acked.push(seq);
    }
    message(&mut out, NFNL_MSG_BATCH_END, NLM_F_REQUEST, 2 + acked.len() as u32, 0, res, &[]);
    (out, acked)
}

/// The attributes naming set `set` of table `table`.
fn set_attrs(table: &str, set: &str) -> Result<Vec<u8>> {
    let mut a = Vec::new();
    attr(&mut a, NFTA_SET_ELEM_LIST_TABLE, sys::cstr(table)?.as_bytes_with_nul());
    attr(&mut a, NFTA_SET_ELEM_LIST_SET, sys::cstr(set)?.as_bytes_with_nul());
    Ok(a)
}

/// The batch adding `keys` to each named set of inet table `table`.
fn batch(table: &str, sets: &[(&str, &[Vec<u8>])]) -> Result<(Vec<u8>, Vec<u32>)> {
    let mut requests = Vec::new();
    for (set, keys) in sets.iter().filter(|(_, k)| !k.is_empty()) {
        let mut a = set_attrs(table, set)?;
        nested(&mut a, NFTA_SET_ELEM_LIST_ELEMENTS, |a| {
            for k in keys.iter() {
                nested(a, NFTA_LIST_ELEM, |a| nested(a, NFTA_SET_ELEM_KEY, |a| attr(a, NFTA_DATA_VALUE, k)));
            }
        });
        requests.push((NFT_MSG_NEWSETELEM, NLM_F_CREATE, a));
    }
    Ok(framed(requests))
}

/// Add `keys` (raw set keys, see `key_*`) to sets of inet table `table`,
/// through `nl` (from `socket_beside`); every set's answer is awaited.
pub fn add_elements(nl: &Fd, table: &str, sets: &[(&str, &[Vec<u8>])]) -> Result<()> {
    let (msg, mut waiting) = batch(table, sets)?;
    if waiting.is_empty() {
        return Ok(());
    }
    crate::sockets::send_to_kernel(nl, &msg, "nf_tables request")?;
    await_acks(nl, &mut waiting, "nf_tables: adding set elements")
}

/// The messages of one read from a netlink socket: (type, whole message).
pub(super) fn messages(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8])>> + '_ {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 16 > buf.len() {
            return None;
        }
        let len = u32::from_le_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        let ty = u16::from_le_bytes([buf[off + 4], buf[off + 5]]);
        if len < 16 || off + len > buf.len() {
            off = buf.len();
            return Some(Err(Error::new("EPROTO", "netfilter: malformed answer")));
        }
        let m = &buf[off..off + len];
        off += (len + 3) & !3;
        Some(Ok((ty, m)))
    })
}

/// An answer to a request: (the request's number, errno; 0 for success).
pub(super) fn answer(ty: u16, m: &[u8]) -> Option<(u32, i32)> {
    if ty != NLMSG_ERROR || m.len() < 36 {
        return None;
    }
    let e = i32::from_le_bytes([m[16], m[17], m[18], m[19]]);
    // The request's header follows the error code: its seq at +8.
    let seq = u32::from_le_bytes([m[28], m[29], m[30], m[31]]);
    Some((seq, -e))
}

/// Read answers on `nl` until every request numbered in `waiting` is
/// acknowledged; the first error answer fails with `what`.
pub(super) fn await_acks(nl: &Fd, waiting: &mut Vec<u32>, what: &str) -> Result<()> {
    let mut buf = vec![0u8; 16384];
    while !waiting.is_empty() {
        let n = sys::call("netfilter answer", RECVFROM, &[nl.raw() as u64, buf.as_mut_ptr() as u64, buf.len() as u64, 0, 0, 0])? as usize;
        for m in messages(&buf[..n]) {
            let (ty, m) = m?;
            if let Some((seq, e)) = answer(ty, m) {
                if e != 0 {
                    return Err(Error::sys(what, e));
                }
                waiting.retain(|&s| s != seq);
            }
        }
    }
    Ok(())
}

/// Empty the named sets of inet table `table` (NFT_MSG_DELSETELEM without
/// elements flushes a set), in one batch.
pub fn flush_sets(nl: &Fd, table: &str, sets: &[&str]) -> Result<()> {
    let requests = sets.iter().map(|set| set_attrs(table, set).map(|a| (NFT_MSG_DELSETELEM, 0, a))).collect::<Result<Vec<_>>>()?;
    let (out, mut waiting) = framed(requests);
    crate::sockets::send_to_kernel(nl, &out, "nf_tables request")?;
    await_acks(nl, &mut waiting, "nf_tables: emptying the handoff sets")
}

/// Each part of a concatenated key takes a whole number of 32-bit words.
fn push_padded(k: &mut Vec<u8>, part: &[u8]) {
    k.extend_from_slice(part);
    while k.len() % 4 != 0 {
        k.push(0);
    }
}

/// Key of a set typed `ipv4_addr . inet_service . ipv4_addr . inet_service`
/// (or the ipv6 one): source address and port, destination address and port.
pub fn key_flow(saddr: &[u8], sport: u16, daddr: &[u8], dport: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(40);
    push_padded(&mut k, saddr);
    push_padded(&mut k, &sport.to_be_bytes());
    push_padded(&mut k, daddr);
    push_padded(&mut k, &dport.to_be_bytes());
    k
}

/// Key of a set typed `inet_service`.
pub fn key_port(port: u16) -> Vec<u8> {
    port.to_be_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_pad_each_part_to_a_word() {
        let k = key_flow(&[127, 0, 0, 1], 0x1234, &[10, 0, 0, 2], 80);
        assert_eq!(k, vec![127, 0, 0, 1, 0x12, 0x34, 0, 0, 10, 0, 0, 2, 0, 80, 0, 0]);
        assert_eq!(key_flow(&[0; 16], 1, &[0; 16], 2).len(), 40);
        assert_eq!(key_port(443), vec![1, 187]);
    }

    #[test]
    fn batch_frames_every_message() {
        let keys = vec![key_port(53)];
        let (b, acked) = batch("t", &[("udp", &keys), ("empty", &[])]).unwrap();
        assert_eq!(acked, vec![2]);
        // begin, one NEWSETELEM, end; lengths add up to the whole.
        let mut off = 0;
        let mut types = Vec::new();
        while off < b.len() {
            let len = u32::from_le_bytes(b[off..off + 4].try_into().unwrap()) as usize;
            types.push(u16::from_le_bytes(b[off + 4..off + 6].try_into().unwrap()));
            off += len;
        }
        assert_eq!(off, b.len());
        assert_eq!(types, vec![NFNL_MSG_BATCH_BEGIN, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM, NFNL_MSG_BATCH_END]);
    }
}
