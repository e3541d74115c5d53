//! Socket options that only change how the socket behaves for its owner
//! (timeouts, linger, marks, priorities...), carried over as raw values when
//! they differ from a new socket's. The options that shape how the socket is
//! rebuilt (addresses, reuse, keepalive, nodelay...) are handled where the
//! socket is made (inet.rs, unix.rs).

use super::{getsockopt_buf, getsockopt_int, new_socket, setsockopt_buf, setsockopt_int, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, SOL_SOCKET};
use super::{SO_RCVBUF, SO_RCVBUFFORCE, SO_SNDBUF, SO_SNDBUFFORCE};
use crate::base64;
use crate::json::Json;
use crate::sys::{Fd, Result};

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
const SOL_TCP: i32 = 6;
const SOL_RAW: i32 = 255;
const SOL_ICMPV6: i32 = 58;

/// (level, name, size, which families: 0 any, else AF_INET/AF_INET6 with TCP only if `tcp`).
struct Opt {
    level: i32,
    name: i32,
    size: usize,
    inet: bool,
    tcp: bool,
    what: &'static str,
}

/// In the order they are set: IP_TOS first, as it also sets SO_PRIORITY;
/// SO_TIMESTAMP before SO_TIMESTAMPNS (which reads 1 alone when both are on).
const OPTS: &[Opt] = &[
    Opt { level: SOL_IP, name: 1, size: 4, inet: true, tcp: false, what: "IP_TOS" },
    Opt { level: SOL_SOCKET, name: 5, size: 4, inet: false, tcp: false, what: "SO_DONTROUTE" },
    Opt { level: SOL_SOCKET, name: 10, size: 4, inet: false, tcp: false, what: "SO_OOBINLINE" },
    Opt { level: SOL_SOCKET, name: 11, size: 4, inet: false, tcp: false, what: "SO_NO_CHECK" },
    Opt { level: SOL_SOCKET, name: 29, size: 4, inet: false, tcp: false, what: "SO_TIMESTAMP" },
    Opt { level: SOL_SOCKET, name: 35, size: 4, inet: false, tcp: false, what: "SO_TIMESTAMPNS" },
    Opt { level: SOL_SOCKET, name: 34, size: 4, inet: false, tcp: false, what: "SO_PASSSEC" },
    Opt { level: SOL_SOCKET, name: 12, size: 4, inet: false, tcp: false, what: "SO_PRIORITY" },
    Opt { level: SOL_SOCKET, name: 13, size: 8, inet: false, tcp: false, what: "SO_LINGER" },
    Opt { level: SOL_SOCKET, name: 18, size: 4, inet: false, tcp: false, what: "SO_RCVLOWAT" },
    Opt { level: SOL_SOCKET, name: 20, size: 16, inet: false, tcp: false, what: "SO_RCVTIMEO" },
    Opt { level: SOL_SOCKET, name: 21, size: 16, inet: false, tcp: false, what: "SO_SNDTIMEO" },
    Opt { level: SOL_SOCKET, name: 36, size: 4, inet: false, tcp: false, what: "SO_MARK" },
    Opt { level: SOL_IP, name: 2, size: 4, inet: true, tcp: false, what: "IP_TTL" },
    Opt { level: SOL_IP, name: 3, size: 4, inet: true, tcp: false, what: "IP_HDRINCL" },
    Opt { level: SOL_RAW, name: 1, size: 4, inet: true, tcp: false, what: "ICMP_FILTER" },
    Opt { level: SOL_ICMPV6, name: 1, size: 32, inet: true, tcp: false, what: "ICMP6_FILTER" },
    Opt { level: SOL_IPV6, name: 7, size: 4, inet: true, tcp: false, what: "IPV6_CHECKSUM" },
    Opt { level: SOL_IP, name: 8, size: 4, inet: true, tcp: false, what: "IP_PKTINFO" },
    Opt { level: SOL_IP, name: 10, size: 4, inet: true, tcp: false, what: "IP_MTU_DISCOVER" },
    Opt { level: SOL_IP, name: 11, size: 4, inet: true, tcp: false, what: "IP_RECVERR" },
    Opt { level: SOL_IP, name: 12, size: 4, inet: true, tcp: false, what: "IP_RECVTTL" },
    Opt { level: SOL_IP, name: 13, size: 4, inet: true, tcp: false, what: "IP_RECVTOS" },
    Opt { level: SOL_IP, name: 19, size: 4, inet: true, tcp: false, what: "IP_TRANSPARENT" },
    Opt { level: SOL_IP, name: 20, size: 4, inet: true, tcp: false, what: "IP_RECVORIGDSTADDR" },
    Opt { level: SOL_IP, name: 24, size: 4, inet: true, tcp: false, what: "IP_BIND_ADDRESS_NO_PORT" },
    Opt { level: SOL_IPV6, name: 23, size: 4, inet: true, tcp: false, what: "IPV6_MTU_DISCOVER" },
    Opt { level: SOL_IPV6, name: 25, size: 4, inet: true, tcp: false, what: "IPV6_RECVERR" },
    Opt { level: SOL_IPV6, name: 49, size: 4, inet: true, tcp: false, what: "IPV6_RECVPKTINFO" },
    Opt { level: SOL_IPV6, name: 66, size: 4, inet: true, tcp: false, what: "IPV6_RECVTCLASS" },
    Opt { level: SOL_IPV6, name: 16, size: 4, inet: true, tcp: false, what: "IPV6_UNICAST_HOPS" },
    Opt { level: SOL_IPV6, name: 67, size: 4, inet: true, tcp: false, what: "IPV6_TCLASS" },
    Opt { level: SOL_TCP, name: 18, size: 4, inet: true, tcp: true, what: "TCP_USER_TIMEOUT" },
    Opt { level: SOL_TCP, name: 25, size: 4, inet: true, tcp: true, what: "TCP_NOTSENT_LOWAT" },
];

const SOL_PACKET: i32 = 263;
const SOL_NETLINK: i32 = 270;

/// Flags of netlink sockets (NETLINK_PKTINFO ... NETLINK_GET_STRICT_CHK).
const NETLINK_OPTS: &[Opt] = &[
    Opt { level: SOL_NETLINK, name: 3, size: 4, inet: false, tcp: false, what: "NETLINK_PKTINFO" },
    Opt { level: SOL_NETLINK, name: 4, size: 4, inet: false, tcp: false, what: "NETLINK_BROADCAST_ERROR" },
    Opt { level: SOL_NETLINK, name: 5, size: 4, inet: false, tcp: false, what: "NETLINK_NO_ENOBUFS" },
    Opt { level: SOL_NETLINK, name: 8, size: 4, inet: false, tcp: false, what: "NETLINK_LISTEN_ALL_NSID" },
    Opt { level: SOL_NETLINK, name: 10, size: 4, inet: false, tcp: false, what: "NETLINK_CAP_ACK" },
    Opt { level: SOL_NETLINK, name: 11, size: 4, inet: false, tcp: false, what: "NETLINK_EXT_ACK" },
    Opt { level: SOL_NETLINK, name: 12, size: 4, inet: false, tcp: false, what: "NETLINK_GET_STRICT_CHK" },
];

/// Options of packet sockets that read back what was set. PACKET_VNET_HDR
/// before PACKET_VNET_HDR_SZ (it sets the size to 10); not PACKET_STATISTICS
/// (reading it clears the counters); rings and fanout are refused (packet.rs).
const PACKET_OPTS: &[Opt] = &[
    Opt { level: SOL_PACKET, name: 10, size: 4, inet: false, tcp: false, what: "PACKET_VERSION" },
    Opt { level: SOL_PACKET, name: 7, size: 4, inet: false, tcp: false, what: "PACKET_COPY_THRESH" },
    Opt { level: SOL_PACKET, name: 8, size: 4, inet: false, tcp: false, what: "PACKET_AUXDATA" },
    Opt { level: SOL_PACKET, name: 9, size: 4, inet: false, tcp: false, what: "PACKET_ORIGDEV" },
    Opt { level: SOL_PACKET, name: 12, size: 4, inet: false, tcp: false, what: "PACKET_RESERVE" },
    Opt { level: SOL_PACKET, name: 14, size: 4, inet: false, tcp: false, what: "PACKET_LOSS" },
    Opt { level: SOL_PACKET, name: 15, size: 4, inet: false, tcp: false, what: "PACKET_VNET_HDR" },
    Opt { level: SOL_PACKET, name: 24, size: 4, inet: false, tcp: false, what: "PACKET_VNET_HDR_SZ" },
    Opt { level: SOL_PACKET, name: 17, size: 4, inet: false, tcp: false, what: "PACKET_TIMESTAMP" },
    Opt { level: SOL_PACKET, name: 19, size: 4, inet: false, tcp: false, what: "PACKET_TX_HAS_OFF" },
    Opt { level: SOL_PACKET, name: 20, size: 4, inet: false, tcp: false, what: "PACKET_QDISC_BYPASS" },
    Opt { level: SOL_PACKET, name: 23, size: 4, inet: false, tcp: false, what: "PACKET_IGNORE_OUTGOING" },
];

/// The options of a family: OPTS (those of every socket first) and its own.
fn table(family: i32) -> impl Iterator<Item = &'static Opt> {
    let own: &'static [Opt] = match family {
        AF_NETLINK => NETLINK_OPTS,
        AF_PACKET => PACKET_OPTS,
        _ => &[],
    };
    OPTS.iter().chain(own.iter())
}

fn applies(o: &Opt, family: i32, tcp: bool) -> bool {
    if !o.inet {
        return true;
    }
    let fam_ok = match o.level {
        SOL_IP | SOL_RAW => family == AF_INET,
        SOL_IPV6 | SOL_ICMPV6 => family == AF_INET6,
        _ => family == AF_INET || family == AF_INET6,
    };
    fam_ok && (!o.tcp || tcp)
}

fn read(fd: &Fd, o: &Opt) -> Option<Vec<u8>> {
    let mut b = vec![0u8; o.size];
    let n = getsockopt_buf(fd, o.level, o.name, &mut b).ok()?;
    b.truncate(n);
    Some(b)
}

/// The values of OPTS on a new socket of this family, type and protocol,
/// asked once per kind: a dump may hold thousands of sockets, in frozen time.
fn defaults(family: i32, ty: i32, proto: i32, tcp: bool) -> Vec<Option<Vec<u8>>> {
    static SEEN: std::sync::Mutex<Vec<((i32, i32, i32), Vec<Option<Vec<u8>>>)>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, d)) = seen.iter().find(|(k, _)| *k == (family, ty, proto)) {
        return d.clone();
    }
    let d: Vec<Option<Vec<u8>>> = match new_socket(family, ty, proto) {
        Ok(fresh) => table(family).map(|o| if applies(o, family, tcp) { read(&fresh, o) } else { None }).collect(),
        Err(_) => return vec![None; table(family).count()], // not cached: try again next time
    };
    seen.push(((family, ty, proto), d.clone()));
    d
}

/// The options of `copy` that differ from those of a new socket of the
/// same family, type and protocol.
pub fn dump(copy: &Fd, family: i32, ty: i32, proto: i32, tcp: bool) -> Vec<Json> {
    let mut out = Vec::new();
    for (o, d) in table(family).zip(defaults(family, ty, proto, tcp)) {
        if !applies(o, family, tcp) {
            continue;
        }
        let (Some(v), Some(d)) = (read(copy, o), d) else { continue };
        if v != d {
            out.push(Json::obj().with("level", o.level).with("name", o.name).with("value", base64::encode(&v)));
        }
    }
    out
}

/// Set the options recorded by `dump` on a rebuilt socket.
pub fn restore(fd: &Fd, s: &Json) -> Result<()> {
    let family = s.u64_of("family").unwrap_or(0) as i32;
    for j in s.arr_of("opts") {
        let (level, name) = (j.i64_of("level").unwrap_or(-1) as i32, j.i64_of("name").unwrap_or(-1) as i32);
        let Some(o) = table(family).find(|o| o.level == level && o.name == name) else { continue };
        let v = j.str_of("value").and_then(base64::decode).unwrap_or_default();
        if v.len() != o.size {
            continue;
        }
        setsockopt_buf(fd, level, name, &v, &format!("setsockopt({})", o.what))?;
    }
    Ok(())
}

/// Buffer sizes of sockets the kernel never autotunes (netlink, packet,
/// unix, UDP, and TCP before it connects): "rcvbuf" / "sndbuf" when they
/// differ from a new socket's, which only a program's setsockopt does (it
/// also stops TCP's autotuning, which the *FORCE options at the restore
/// stop too). The kernel reports twice what was asked for.
pub fn dump_buffers(copy: &Fd, family: i32, ty: i32, proto: i32, s: &mut Json) {
    // A new socket's sizes, asked once per kind as `defaults` does.
    type Seen = Vec<((i32, i32, i32), [Option<i32>; 2])>;
    static SEEN: std::sync::Mutex<Seen> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let defaults = match seen.iter().find(|(k, _)| *k == (family, ty, proto)) {
        Some((_, d)) => *d,
        None => match new_socket(family, ty, proto) {
            Ok(fresh) => {
                let d = [getsockopt_int(&fresh, SOL_SOCKET, SO_RCVBUF).ok(), getsockopt_int(&fresh, SOL_SOCKET, SO_SNDBUF).ok()];
                seen.push(((family, ty, proto), d));
                d
            }
            Err(_) => [None, None],
        },
    };
    for ((key, opt), default) in [("rcvbuf", SO_RCVBUF), ("sndbuf", SO_SNDBUF)].into_iter().zip(defaults) {
        let now = getsockopt_int(copy, SOL_SOCKET, opt).ok();
        if let (Some(v), Some(d)) = (now, default) {
            if v != d {
                s.set(key, v as u64);
            }
        }
    }
}

/// Set the sizes recorded by `dump_buffers` (the *FORCE options pass over
/// the sysctl limits, as the program may have).
pub fn restore_buffers(fd: &Fd, s: &Json) -> Result<()> {
    for (key, force, opt) in [("rcvbuf", SO_RCVBUFFORCE, SO_RCVBUF), ("sndbuf", SO_SNDBUFFORCE, SO_SNDBUF)] {
        if let Some(v) = s.u64_of(key) {
            let half = (v / 2).min(i32::MAX as u64) as i32;
            if setsockopt_int(fd, SOL_SOCKET, force, half).is_err() {
                setsockopt_int(fd, SOL_SOCKET, opt, half)?;
            }
        }
    }
    Ok(())
}
