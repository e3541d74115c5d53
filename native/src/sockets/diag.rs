//! NETLINK_SOCK_DIAG lookups by socket inode: the listen backlog of TCP
//! sockets (inet_diag: idiag_wqueue of a listener), the peer and queue
//! lengths of unix sockets (unix_diag), the interface, memberships, rings and
//! fanout of packet sockets (packet_diag). The netlink socket is opened in the
//! network namespace of the examined socket (SIOCGSKNS), from a short-lived
//! thread that enters it, so a target in another namespace is seen too.

use super::{snr, AF_INET, AF_NETLINK, AF_UNIX};
use crate::sys::{self, Error, Fd, Result};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::FromRawFd;

const NETLINK_SOCK_DIAG: u64 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SIOCGSKNS: u64 = 0x894C;
const CLONE_NEWNET: u64 = 0x40000000;

/// A netlink diag socket in the namespace of socket `of`.
fn diag_socket(of: &Fd) -> Result<Fd> {
    netlink_socket_beside(of, NETLINK_SOCK_DIAG)
}

/// A netlink socket of `protocol` in the network namespace of socket `of`.
pub(crate) fn netlink_socket_beside(of: &Fd, protocol: u64) -> Result<Fd> {
    let open = move || sys::call("socket(AF_NETLINK)", snr::SOCKET, &[AF_NETLINK as u64, 3 /* SOCK_RAW */ | super::SOCK_CLOEXEC, protocol]).map(|f| Fd(f as i32));
    let ns = match sys::call("SIOCGSKNS", crate::sys::nr::IOCTL, &[of.raw() as u64, SIOCGSKNS, 0]) {
        Ok(f) => Fd(f as i32),
        Err(_) => return open(),
    };
    let theirs = unsafe { std::fs::File::from_raw_fd(ns.into_raw()) };
    let same = match (theirs.metadata(), std::fs::metadata("/proc/thread-self/ns/net")) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => true,
    };
    if same {
        return open();
    }
    let nsfd = std::os::unix::io::AsRawFd::as_raw_fd(&theirs);
    let r = std::thread::spawn(move || -> Result<i32> {
        sys::call("setns(net)", snr::SETNS, &[nsfd as u64, CLONE_NEWNET])?;
        open().map(|f| f.into_raw())
    })
    .join()
    .map_err(|_| Error::new("EINTERNAL", "sock_diag thread panicked"))??;
    Ok(Fd(r))
}

/// Send netlink message(s) `msg` to the kernel through `nl`.
pub(crate) fn send_to_kernel(nl: &Fd, msg: &[u8], what: &str) -> Result<()> {
    // sockaddr_nl of the kernel
    let mut sa = [0u8; 12];
    sa[0..2].copy_from_slice(&(AF_NETLINK as u16).to_le_bytes());
    sys::call(what, snr::SENDTO, &[nl.raw() as u64, msg.as_ptr() as u64, msg.len() as u64, 0, sa.as_ptr() as u64, 12]).map(|_| ())
}

/// Send one request, collect the payloads of all answers of `SOCK_DIAG_BY_FAMILY`.
fn request(nl: &Fd, req: &[u8], dump: bool) -> Result<Vec<Vec<u8>>> {
    let mut msg = Vec::with_capacity(16 + req.len());
    msg.extend_from_slice(&((16 + req.len()) as u32).to_le_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_le_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 }).to_le_bytes());
    msg.extend_from_slice(&1u32.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    msg.extend_from_slice(req);
    send_to_kernel(nl, &msg, "sock_diag request")?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = sys::call("sock_diag answer", snr::RECVFROM, &[nl.raw() as u64, buf.as_mut_ptr() as u64, buf.len() as u64, 0, 0, 0])? as usize;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_le_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let ty = u16::from_le_bytes(buf[off + 4..off + 6].try_into().unwrap());
            if len < 16 || off + len > n {
                return Ok(out);
            }
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let e = i32::from_le_bytes(buf[off + 16..off + 20].try_into().unwrap());
                    if e == 0 {
                        return Ok(out);
                    }
                    return Err(Error::sys("sock_diag", -e));
                }
                _ => out.push(buf[off + 16..off + len].to_vec()),
            }
            off += (len + 3) & !3;
        }
        if !dump {
            return Ok(out);
        }
    }
}

/// The netlink attributes (type, payload) of a diag answer from `off` on.
fn attrs(m: &[u8], mut off: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while off + 4 <= m.len() {
        let len = u16::from_le_bytes([m[off], m[off + 1]]) as usize;
        let ty = u16::from_le_bytes([m[off + 2], m[off + 3]]);
        if len < 4 || off + len > m.len() {
            break;
        }
        out.push((ty, &m[off + 4..off + len]));
        off += (len + 3) & !3;
    }
    out
}

/// What sock_diag tells of an inet socket.
pub struct InetInfo {
    pub state: u8,
    pub wqueue: u32,
    /// The remote end as a raw sockaddr (it names the peer of a connection
    /// still in SYN_SENT, which getpeername does not).
    pub peer: Vec<u8>,
    /// INET_DIAG_SHUTDOWN: the directions shut down (1 receive, 2 send),
    /// which nothing else tells.
    pub shutdown: u8,
}

/// inet_diag_msg for the socket with inode `ino` (family, protocol), among
/// the sockets in `states` (a mask of 1 << TCP state). Only listeners
/// asked for, the kernel walks its listening hash alone; any other state
/// makes it walk every bucket of the established hash (about 3 ms here).
pub fn inet_lookup(of: &Fd, family: i32, protocol: u8, ino: u64, states: u32) -> Result<Option<InetInfo>> {
    let nl = diag_socket(of)?;
    let mut req = [0u8; 56];
    req[0] = family as u8;
    req[1] = protocol;
    req[4..8].copy_from_slice(&states.to_le_bytes());
    for m in request(&nl, &req, true)? {
        if m.len() < 72 {
            continue;
        }
        let inode = u32::from_le_bytes(m[68..72].try_into().unwrap()) as u64;
        if inode == ino {
            // inet_diag_sockid at 4: sport, dport (big endian), src[16], dst[16].
            let mut peer = vec![0u8; if family == AF_INET { 16 } else { 28 }];
            peer[0..2].copy_from_slice(&(family as u16).to_le_bytes());
            peer[2..4].copy_from_slice(&m[6..8]);
            if family == AF_INET {
                peer[4..8].copy_from_slice(&m[24..28]);
            } else {
                peer[8..24].copy_from_slice(&m[24..40]);
            }
            let wqueue = u32::from_le_bytes(m[60..64].try_into().unwrap());
            const INET_DIAG_SHUTDOWN: u16 = 8;
            let shutdown = attrs(&m, 72).iter().find(|(ty, p)| *ty == INET_DIAG_SHUTDOWN && !p.is_empty()).map(|(_, p)| p[0]).unwrap_or(0);
            return Ok(Some(InetInfo { state: m[1], wqueue, peer, shutdown }));
        }
    }
    Ok(None)
}

pub struct UnixInfo {
    pub state: u8,
    pub peer: u64,
    pub rqueue: u32,
    pub wqueue: u32,
    /// UNIX_DIAG_VFS: (inode, device) of the file a path name made, as the
    /// kernel numbers them (the device is major << 20 | minor).
    pub vfs: Option<(u32, u32)>,
    /// UNIX_DIAG_SHUTDOWN: the directions shut down (1 receive, 2 send).
    pub shutdown: u8,
}

/// unix_diag of the socket with inode `ino`.
pub fn unix_lookup(of: &Fd, ino: u64) -> Result<Option<UnixInfo>> {
    let nl = diag_socket(of)?;
    let mut req = [0u8; 24];
    req[0] = AF_UNIX as u8;
    req[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    req[8..12].copy_from_slice(&(ino as u32).to_le_bytes());
    req[12..16].copy_from_slice(&(2u32 /* VFS */ | 4 /* PEER */ | 16 /* RQLEN */).to_le_bytes());
    req[16..24].copy_from_slice(&[0xff; 8]);
    let msgs = match request(&nl, &req, false) {
        Ok(m) => m,
        Err(e) if e.errno == 2 => return Ok(None),
        Err(e) => return Err(e),
    };
    for m in msgs {
        if m.len() < 16 || u32::from_le_bytes(m[4..8].try_into().unwrap()) as u64 != ino {
            continue;
        }
        let mut info = UnixInfo { state: m[2], peer: 0, rqueue: 0, wqueue: 0, vfs: None, shutdown: 0 };
        for (ty, p) in attrs(&m, 16) {
            match ty {
                1 if p.len() >= 8 => info.vfs = Some((u32::from_le_bytes(p[0..4].try_into().unwrap()), u32::from_le_bytes(p[4..8].try_into().unwrap()))),
                2 if p.len() >= 4 => info.peer = u32::from_le_bytes(p[0..4].try_into().unwrap()) as u64,
                6 if !p.is_empty() => info.shutdown = p[0],
                4 if p.len() >= 8 => {
                    info.rqueue = u32::from_le_bytes(p[0..4].try_into().unwrap());
                    info.wqueue = u32::from_le_bytes(p[4..8].try_into().unwrap());
                }
                _ => {}
            }
        }
        return Ok(Some(info));
    }
    Ok(None)
}

/// Every unix socket bound to a name in the network namespace of socket
/// `of`: (inode, sun_path bytes as the kernel keeps them).
pub fn unix_names(of: &Fd) -> Result<Vec<(u64, Vec<u8>)>> {
    let nl = diag_socket(of)?;
    let mut req = [0u8; 24];
    req[0] = AF_UNIX as u8;
    req[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    req[12..16].copy_from_slice(&1u32.to_le_bytes()); // UDIAG_SHOW_NAME
    let mut out = Vec::new();
    for m in request(&nl, &req, true)? {
        if m.len() < 16 {
            continue;
        }
        let ino = u32::from_le_bytes(m[4..8].try_into().unwrap()) as u64;
        for (ty, p) in attrs(&m, 16) {
            if ty == 0 {
                out.push((ino, p.to_vec()));
            }
        }
    }
    Ok(out)
}

/// What packet_diag tells of a packet socket.
pub struct PacketInfo {
    /// Bound (or, unbound, opened) for this ethertype, host order; 0: none.
    pub protocol: u16,
    /// PACKET_DIAG_INFO pdi_index: the bound interface, 0 if none.
    pub ifindex: i32,
    /// PACKET_DIAG_MCLIST: (ifindex, count, type, address).
    pub memberships: Vec<(i32, u32, u16, Vec<u8>)>,
    pub rx_ring: bool,
    pub tx_ring: bool,
    /// PACKET_DIAG_FANOUT: id | type << 16.
    pub fanout: Option<u32>,
}

/// packet_diag of the socket with inode `ino` (the kernel dumps them all).
pub fn packet_lookup(of: &Fd, ino: u64) -> Result<Option<PacketInfo>> {
    const AF_PACKET: u8 = 17;
    const SHOW: u32 = 1 /* INFO */ | 2 /* MCLIST */ | 4 /* RING_CFG */ | 8 /* FANOUT */;
    let nl = diag_socket(of)?;
    let mut req = [0u8; 20];
    req[0] = AF_PACKET;
    req[8..12].copy_from_slice(&SHOW.to_le_bytes());
    Ok(request(&nl, &req, true)?.iter().find(|m| m.len() >= 16 && u32::from_le_bytes(m[4..8].try_into().unwrap()) as u64 == ino).map(|m| parse_packet(m)))
}

/// A packet_diag_msg and its attributes.
fn parse_packet(m: &[u8]) -> PacketInfo {
    let mut info = PacketInfo { protocol: u16::from_le_bytes([m[2], m[3]]), ifindex: 0, memberships: Vec::new(), rx_ring: false, tx_ring: false, fanout: None };
    for (ty, p) in attrs(m, 16) {
        match ty {
            0 if p.len() >= 4 => info.ifindex = i32::from_le_bytes(p[0..4].try_into().unwrap()),
            1 => {
                // struct packet_diag_mclist: index, count, type, alen, addr[32]
                for e in p.chunks_exact(44) {
                    let alen = (u16::from_le_bytes([e[10], e[11]]) as usize).min(32);
                    let idx = i32::from_le_bytes(e[0..4].try_into().unwrap());
                    info.memberships.push((idx, u32::from_le_bytes(e[4..8].try_into().unwrap()), u16::from_le_bytes([e[8], e[9]]), e[12..12 + alen].to_vec()));
                }
            }
            2 => info.rx_ring = true,
            3 => info.tx_ring = true,
            4 if p.len() >= 4 => info.fanout = Some(u32::from_le_bytes(p[0..4].try_into().unwrap())),
            _ => {}
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_le_bytes());
        a.extend_from_slice(&ty.to_le_bytes());
        a.extend_from_slice(payload);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    #[test]
    fn packet_diag_message() {
        // As Linux 6.18 answers for a SOCK_RAW socket bound to lo (1) for
        // 0x0800, TPACKET_V2, aux data, a multicast and a promiscuous membership.
        let mut m = vec![17, 3, 0x00, 0x08, 0x37, 0x73, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let words = |w: &[u32]| w.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        m.extend(attr(0, &words(&[1, 1, 0, 0, 0, 3])));
        let mut mc = Vec::new();
        for (ty, addr) in [(0u16, &[1u8, 0, 0x5e, 0, 0, 0x42][..]), (1, &[][..])] {
            mc.extend(words(&[1, 1]));
            mc.extend(ty.to_le_bytes());
            mc.extend((addr.len() as u16).to_le_bytes());
            let mut a = addr.to_vec();
            a.resize(32, 0);
            mc.extend(a);
        }
        m.extend(attr(1, &mc));
        m.extend(attr(5, &words(&[0])));
        let p = parse_packet(&m);
        assert_eq!((p.protocol, p.ifindex, p.rx_ring, p.tx_ring, p.fanout), (0x0800, 1, false, false, None));
        assert_eq!(p.memberships, vec![(1, 1, 0, vec![1, 0, 0x5e, 0, 0, 0x42]), (1, 1, 1, vec![])]);
        m.extend(attr(2, &words(&[4096, 4, 2048, 8, 0, 0, 0])));
        m.extend(attr(4, &words(&[77])));
        let p = parse_packet(&m);
        assert_eq!((p.rx_ring, p.tx_ring, p.fanout), (true, false, Some(77)));
    }
}
