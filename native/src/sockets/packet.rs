//! Packet sockets (AF_PACKET, SOCK_RAW and SOCK_DGRAM): the ethertype, the
//! bound interface and the memberships (PACKET_ADD_MEMBERSHIP) come from
//! packet_diag, the options through opts.rs. Interfaces are recorded by name:
//! the same interface may have another index on another host. Restore opens
//! the socket without a protocol, so that it takes no frame before it is
//! bound, then binds it to the interface for the ethertype. Queued frames are
//! not carried over (`lost_datagrams`). Memory-mapped rings and fanout groups
//! are refused: a ring is shared memory of the process, and a fanout group
//! spans sockets the dump does not see as one.

use super::*;
use crate::base64;

const SOL_PACKET: i32 = 263;
const PACKET_ADD_MEMBERSHIP: i32 = 1;
const SIOCGIFNAME: u64 = 0x8910;
const SIOCGIFINDEX: u64 = 0x8933;
const IFNAMSIZ: usize = 16;

/// The name of interface `ifindex` in the network namespace of `sock`.
fn ifname(sock: &Fd, ifindex: i32) -> Result<String> {
    let mut ifr = [0u8; 40];
    ifr[16..20].copy_from_slice(&ifindex.to_le_bytes());
    sys::call(&format!("SIOCGIFNAME of interface {}", ifindex), nr::IOCTL, &[sock.raw() as u64, SIOCGIFNAME, ifr.as_mut_ptr() as u64])?;
    let end = ifr[..IFNAMSIZ].iter().position(|b| *b == 0).unwrap_or(IFNAMSIZ);
    Ok(String::from_utf8_lossy(&ifr[..end]).into_owned())
}

/// The index of interface `name` in the network namespace of `sock`.
fn ifindex(sock: &Fd, name: &str) -> Result<i32> {
    let mut ifr = [0u8; 40];
    if name.is_empty() || name.len() >= IFNAMSIZ {
        return Err(Error::new("EIMAGE", format!("interface name {:?} in the image", name)));
    }
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    sys::call("SIOCGIFINDEX", nr::IOCTL, &[sock.raw() as u64, SIOCGIFINDEX, ifr.as_mut_ptr() as u64])
        .map_err(|e| Error::new("EFILE", format!("interface {} needed by a packet socket: {}", name, e.message)))?;
    Ok(i32::from_le_bytes([ifr[16], ifr[17], ifr[18], ifr[19]]))
}

pub fn describe(ctx: &FileCtx, copy: Fd, mut s: Json, ty: i32) -> Result<Json> {
    let ino = s.u64_of("ino").unwrap_or(0);
    let info = match diag::packet_lookup(&copy, ino)? {
        Some(i) => i,
        None => return ctx.unsupported(&format!("packet socket that packet_diag does not list ({})", ctx.target)),
    };
    for (ring, on) in [("PACKET_RX_RING", info.rx_ring), ("PACKET_TX_RING", info.tx_ring)] {
        if on {
            return ctx.unsupported(&format!("packet socket with a memory-mapped ring ({}) ({})", ring, ctx.target));
        }
    }
    if let Some(f) = info.fanout {
        return ctx.unsupported(&format!("packet socket in fanout group {} (PACKET_FANOUT) ({})", f & 0xffff, ctx.target));
    }
    let mut p = Json::obj().with("protocol", info.protocol as u64);
    if info.ifindex < 0 {
        return ctx.unsupported(&format!("packet socket whose interface was removed ({})", ctx.target));
    }
    if info.ifindex != 0 {
        let name = ifname(&copy, info.ifindex).map_err(|e| Error::new("EUNSUPPORTED", format!("fd {}: packet socket bound to interface {} that has no name ({})", ctx.fd, info.ifindex, e.message)))?;
        p.set("ifname", name);
    }
    let mut ms = Vec::new();
    for (idx, count, mtype, addr) in &info.memberships {
        let name = ifname(&copy, *idx).map_err(|e| Error::new("EUNSUPPORTED", format!("fd {}: packet membership on interface {} that has no name ({})", ctx.fd, idx, e.message)))?;
        ms.push(Json::obj().with("ifname", name).with("type", *mtype as u64).with("addr", base64::encode(addr)).with("count", *count as u64));
    }
    if !ms.is_empty() {
        p.set("memberships", ms);
    }
    opts::dump_buffers(&copy, AF_PACKET, ty, 0, &mut s);
    if has_queued(&copy) {
        s.set("lost_datagrams", true);
    }
    let state = if info.ifindex != 0 || info.protocol != 0 { "bound" } else { "unbound" };
    s.set("state", state).set("packet", p);
    Ok(ctx.base.clone().with("kind", "sock_packet").with("sock", s))
}

pub fn open(s: &Json) -> Result<Fd> {
    let ty = s.u64_of("type").unwrap_or(SOCK_RAW as u64) as i32;
    let p = s.get("packet").ok_or_else(|| Error::new("EIMAGE", "packet socket without \"packet\""))?;
    // No protocol yet: a socket opened with one takes frames of every
    // interface until it is bound.
    let fd = new_socket(AF_PACKET, ty, 0)?;
    opts::restore_buffers(&fd, s)?;
    let proto = p.u64_of("protocol").unwrap_or(0) as u16;
    let name = p.str_of("ifname").unwrap_or("");
    let idx = if name.is_empty() { 0 } else { ifindex(&fd, name)? };
    if proto != 0 || idx != 0 {
        // struct sockaddr_ll: family, protocol (network order), ifindex, ...
        let mut a = [0u8; 20];
        a[0..2].copy_from_slice(&(AF_PACKET as u16).to_le_bytes());
        a[2..4].copy_from_slice(&proto.to_be_bytes());
        a[4..8].copy_from_slice(&idx.to_le_bytes());
        let what = format!("bind packet socket to {} for ethertype {:#06x}", if name.is_empty() { "every interface" } else { name }, proto);
        sys::call(&what, snr::BIND, &[fd.raw() as u64, a.as_ptr() as u64, a.len() as u64])?;
    }
    for m in p.arr_of("memberships") {
        let mname = m.str_of("ifname").unwrap_or("");
        let addr = m.str_of("addr").and_then(base64::decode).unwrap_or_default();
        // struct packet_mreq_max: ifindex, type, alen, address[32]
        let mut mr = [0u8; 40];
        mr[0..4].copy_from_slice(&ifindex(&fd, mname)?.to_le_bytes());
        mr[4..6].copy_from_slice(&(m.u64_of("type").unwrap_or(0) as u16).to_le_bytes());
        let alen = addr.len().min(32);
        mr[6..8].copy_from_slice(&(alen as u16).to_le_bytes());
        mr[8..8 + alen].copy_from_slice(&addr[..alen]);
        for _ in 0..m.u64_of("count").unwrap_or(1).max(1) {
            setsockopt_buf(&fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, &format!("PACKET_ADD_MEMBERSHIP on {}", mname))?;
        }
    }
    Ok(fd)
}
