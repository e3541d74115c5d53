//! IPv4/IPv6 sockets: TCP (unbound, bound, listening, established through
//! TCP_REPAIR) and UDP (unbound, bound, connected).

use super::*;
use crate::base64;
use std::net::{Ipv4Addr, Ipv6Addr};

pub(crate) const SOL_TCP: i32 = 6;
const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
const TCP_NODELAY: i32 = 1;
const TCP_MAXSEG: i32 = 2;
const TCP_KEEPIDLE: i32 = 4;
const TCP_KEEPINTVL: i32 = 5;
const TCP_KEEPCNT: i32 = 6;
pub(super) const TCP_INFO: i32 = 11;
pub(crate) const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
pub(crate) const TCP_REPAIR_OFF_NO_WP: i32 = -1;
const TCP_NO_QUEUE: i32 = 0;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const IPV6_V6ONLY: i32 = 26;
const IP_FREEBIND: i32 = 15;
const IPV6_FREEBIND: i32 = 78;
const SIOCINQ: u64 = 0x541B;
const SIOCOUTQ: u64 = 0x5411;
const SIOCOUTQNSD: u64 = 0x894B;

const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;
const TCP_FIN_WAIT1: u8 = 4;
const TCP_FIN_WAIT2: u8 = 5;
const TCP_CLOSE: u8 = 7;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_CLOSING: u8 = 11;
const SHUT_RD: u64 = 0;
const SHUT_WR: u64 = 1;
const SHUTDOWN: i64 = 48;
const TCP_LISTEN: u8 = 10;

fn tcp_state_name(s: u8) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "unknown",
    }
}

// ---- addresses ----

pub(crate) fn addr_json(raw: &[u8]) -> Option<Json> {
    if raw.len() < 2 {
        return None;
    }
    let fam = u16::from_le_bytes([raw[0], raw[1]]) as i32;
    match fam {
        AF_INET if raw.len() >= 8 => {
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            let ip = Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
            Some(Json::obj().with("ip", ip.to_string()).with("port", port as u64))
        }
        AF_INET6 if raw.len() >= 28 => {
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            let a: [u8; 16] = raw[8..24].try_into().ok()?;
            let scope = u32::from_le_bytes(raw[24..28].try_into().ok()?);
            let flow = u32::from_be_bytes(raw[4..8].try_into().ok()?);
            let mut j = Json::obj().with("ip", Ipv6Addr::from(a).to_string()).with("port", port as u64);
            if scope != 0 {
                j.set("scope_id", scope as u64);
            }
            if flow != 0 {
                j.set("flowinfo", flow as u64);
            }
            Some(j)
        }
        _ => None,
    }
}

fn addr_raw(family: i32, a: &Json) -> Result<Vec<u8>> {
    let ip = a.str_of("ip").unwrap_or(if family == AF_INET { "0.0.0.0" } else { "::" });
    let port = a.u64_of("port").unwrap_or(0) as u16;
    let bad = || Error::new("EIMAGE", format!("socket address {:?} in the image is malformed", ip));
    if family == AF_INET {
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let mut r = vec![0u8; 16];
        r[0..2].copy_from_slice(&(AF_INET as u16).to_le_bytes());
        r[2..4].copy_from_slice(&port.to_be_bytes());
        r[4..8].copy_from_slice(&ip.octets());
        Ok(r)
    } else {
        let ip: Ipv6Addr = ip.parse().map_err(|_| bad())?;
        let mut r = vec![0u8; 28];
        r[0..2].copy_from_slice(&(AF_INET6 as u16).to_le_bytes());
        r[2..4].copy_from_slice(&port.to_be_bytes());
        r[4..8].copy_from_slice(&(a.u64_of("flowinfo").unwrap_or(0) as u32).to_be_bytes());
        r[8..24].copy_from_slice(&ip.octets());
        r[24..28].copy_from_slice(&(a.u64_of("scope_id").unwrap_or(0) as u32).to_le_bytes());
        Ok(r)
    }
}

fn addr_text(a: Option<&Json>) -> String {
    match a {
        Some(a) => {
            let ip = a.str_of("ip").unwrap_or("?");
            let port = a.u64_of("port").unwrap_or(0);
            if ip.contains(':') {
                format!("[{}]:{}", ip, port)
            } else {
                format!("{}:{}", ip, port)
            }
        }
        None => "-".into(),
    }
}

fn is_unbound(a: &Json) -> bool {
    a.u64_of("port").unwrap_or(0) == 0 && matches!(a.str_of("ip"), Some("0.0.0.0") | Some("::") | None)
}

/// State "bound" with its address, or "unbound", of a socket that is
/// neither listening nor connected.
fn set_bound(s: &mut Json, local: Option<Json>) {
    match local {
        Some(l) if !is_unbound(&l) => {
            s.set("state", "bound").set("local", l);
        }
        _ => {
            s.set("state", "unbound");
        }
    }
}

fn bind_raw(fd: &Fd, raw: &[u8], what: &str) -> Result<()> {
    sys::call(what, snr::BIND, &[fd.raw() as u64, raw.as_ptr() as u64, raw.len() as u64]).map(|_| ())
}

// ---- options shared by TCP and UDP ----

fn dump_common_opts(copy: &Fd, s: &mut Json, domain: i32) {
    let flag = |level, opt| getsockopt_int(copy, level, opt).map(|v| v != 0).unwrap_or(false);
    s.set("reuseaddr", flag(SOL_SOCKET, SO_REUSEADDR));
    s.set("reuseport", flag(SOL_SOCKET, SO_REUSEPORT));
    if domain == AF_INET6 {
        s.set("v6only", flag(SOL_IPV6, IPV6_V6ONLY));
    }
}

pub(super) fn restore_pre_bind_opts(fd: &Fd, s: &Json, family: i32) -> Result<()> {
    if family == AF_INET6 {
        setsockopt_int(fd, SOL_IPV6, IPV6_V6ONLY, s.bool_of("v6only") as i32)?;
    }
    if s.bool_of("reuseport") {
        setsockopt_int(fd, SOL_SOCKET, SO_REUSEPORT, 1)?;
    }
    Ok(())
}

fn local_of(copy: &Fd) -> Option<Json> {
    sockname(copy, false).ok().and_then(|r| addr_json(&r))
}

fn peer_of(copy: &Fd) -> Option<Json> {
    sockname(copy, true).ok().and_then(|r| addr_json(&r))
}

// ---- TCP ----

pub fn describe_tcp(ctx: &FileCtx, copy: Fd, mut s: Json, domain: i32) -> Result<Json> {
    let mut info = [0u8; 232];
    let n = getsockopt_buf(&copy, SOL_TCP, TCP_INFO, &mut info)?;
    if n < 8 {
        return ctx.unsupported("TCP socket without TCP_INFO");
    }
    let state = info[0];
    dump_common_opts(&copy, &mut s, domain);
    let flag = |level, opt| getsockopt_int(&copy, level, opt).map(|v| v != 0).unwrap_or(false);
    s.set("nodelay", flag(SOL_TCP, TCP_NODELAY));
    if flag(SOL_SOCKET, SO_KEEPALIVE) {
        s.set("keepalive", true);
        for (k, o) in [("keepidle", TCP_KEEPIDLE), ("keepintvl", TCP_KEEPINTVL), ("keepcnt", TCP_KEEPCNT)] {
            if let Ok(v) = getsockopt_int(&copy, SOL_TCP, o) {
                s.set(k, v as u64);
            }
        }
    }
    let local = local_of(&copy);
    let base = ctx.base.clone().with("kind", "sock_tcp");
    match state {
        TCP_LISTEN => {
            let ino = s.u64_of("ino").unwrap_or(0);
            let backlog = match super::diag::inet_lookup(&copy, domain, 6, ino, 1 << TCP_LISTEN) {
                Ok(Some(i)) => i.wqueue,
                _ => 128,
            };
            s.set("state", "listen").set("backlog", backlog as u64);
            if let Some(l) = local {
                s.set("local", l);
            }
            Ok(base.with("sock", s))
        }
        TCP_CLOSE => {
            // A connection that ended (reset, refused, closed both ways):
            // not a socket that never had one.
            if let Some(end) = super::tcp_closed::dump(ctx.fd, &copy)? {
                super::tcp_closed::describe(end, &mut s);
                return Ok(base.with("sock", s));
            }
            set_bound(&mut s, local);
            Ok(base.with("sock", s))
        }
        TCP_ESTABLISHED | TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING => {
            let peer = peer_of(&copy);
            let (l, p) = match (local, peer) {
                (Some(l), Some(p)) => (l, p),
                _ => return ctx.unsupported("TCP connection without addresses"),
            };
            let what = format!("TCP connection {} -> {}", addr_text(Some(&l)), addr_text(Some(&p)));
            // Half-closed: the peer's FIN came in, ours went out (or both).
            let fin_in = matches!(state, TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING);
            let fin_out = matches!(state, TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_LAST_ACK | TCP_CLOSING);
            let fin_unacked = fin_out && state != TCP_FIN_WAIT2;
            let tcp = dump_established(&copy, &info, fin_in, fin_out, fin_unacked).map_err(|e| e.context(format!("fd {}: {}", ctx.fd, what)))?;
            s.set("state", "established").set("local", l).set("peer", p).set("tcp", tcp);
            remember_repaired(copy);
            Ok(base.with("sock", s))
        }
        TCP_SYN_SENT => {
            // A connect in flight (one the handoff's hold caught, say): its
            // peer is known to sock_diag only. Restored as a new connect to
            // it from the same local address; the process's own connect
            // call, restarted, waits for that one.
            let ino = s.u64_of("ino").unwrap_or(0);
            let peer = super::diag::inet_lookup(&copy, domain, 6, ino, 1 << TCP_SYN_SENT).ok().flatten().filter(|i| i.state == TCP_SYN_SENT).and_then(|i| addr_json(&i.peer));
            match (local, peer) {
                (Some(l), Some(p)) => {
                    s.set("state", "connecting").set("local", l).set("peer", p);
                    Ok(base.with("sock", s))
                }
                (l, _) => ctx.unsupported(&format!("TCP connection in state SYN_SENT ({} -> ?) unknown to sock_diag", addr_text(l.as_ref()))),
            }
        }
        st => ctx.unsupported(&format!(
            "TCP connection in state {} ({} -> {})",
            tcp_state_name(st),
            addr_text(local.as_ref()),
            addr_text(peer_of(&copy).as_ref())
        )),
    }
}

fn set_queue(fd: &Fd, q: i32) -> Result<()> {
    setsockopt_int(fd, SOL_TCP, TCP_REPAIR_QUEUE, q)
}

fn peek_queue(fd: &Fd, len: usize, what: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    let n = sys::call(what, snr::RECVFROM, &[fd.raw() as u64, buf.as_mut_ptr() as u64, len as u64, MSG_PEEK | MSG_DONTWAIT, 0, 0])? as usize;
    if n != len {
        return Err(Error::new("ESOCKET", format!("{}: peeked {} of {} bytes", what, n, len)));
    }
    Ok(buf)
}

/// Put the socket in repair mode and read everything TCP_REPAIR can tell.
/// The socket stays in repair mode (see `remember_repaired`).
/// The sequence numbers recorded are those of the data: a FIN that came
/// in (`fin_in`) or went out (`fin_out`; still in the send queue when
/// `fin_unacked`) is left out of them and recorded as a flag.
fn dump_established(copy: &Fd, info: &[u8], fin_in: bool, fin_out: bool, fin_unacked: bool) -> Result<Json> {
    setsockopt_int(copy, SOL_TCP, TCP_REPAIR, 1).map_err(|e| e.context("TCP_REPAIR (needs CAP_NET_ADMIN)"))?;
    let r = (|| -> Result<Json> {
        set_queue(copy, TCP_RECV_QUEUE)?;
        let rcv_seq = (getsockopt_int(copy, SOL_TCP, TCP_QUEUE_SEQ)? as u32).wrapping_sub(fin_in as u32);
        let inq = ioctl_int(copy, SIOCINQ)? as usize;
        let recv_queue = peek_queue(copy, inq, "peek of the receive queue")?;
        set_queue(copy, TCP_SEND_QUEUE)?;
        let snd_seq = (getsockopt_int(copy, SOL_TCP, TCP_QUEUE_SEQ)? as u32).wrapping_sub(fin_out as u32);
        // Both counts include a FIN not yet acknowledged (or not yet sent).
        let outq = (ioctl_int(copy, SIOCOUTQ)? as usize).saturating_sub(fin_unacked as usize);
        let unsent = (ioctl_int(copy, SIOCOUTQNSD)? as usize).saturating_sub(fin_unacked as usize);
        let send_queue = peek_queue(copy, outq, "peek of the send queue")?;
        set_queue(copy, TCP_NO_QUEUE)?;
        let mss = getsockopt_int(copy, SOL_TCP, TCP_MAXSEG)? as u32;
        let ts = getsockopt_int(copy, SOL_TCP, TCP_TIMESTAMP)? as u32;
        let mut w = [0u8; 20];
        getsockopt_buf(copy, SOL_TCP, TCP_REPAIR_WINDOW, &mut w)?;
        let w32 = |i: usize| u32::from_le_bytes(w[i * 4..i * 4 + 4].try_into().unwrap()) as u64;
        let opts = info[5];
        Ok(Json::obj()
            .with("fin_in", fin_in)
            .with("fin_out", fin_out)
            .with("snd_seq", snd_seq as u64)
            .with("rcv_seq", rcv_seq as u64)
            .with("send_queue", base64::encode(&send_queue))
            .with("recv_queue", base64::encode(&recv_queue))
            .with("unsent", unsent.min(outq) as u64)
            .with("mss", mss as u64)
            .with("timestamps", opts & 1 != 0)
            .with("sack", opts & 2 != 0)
            .with("wscale", opts & 4 != 0)
            .with("snd_wscale", (info[6] & 0xf) as u64)
            .with("rcv_wscale", (info[6] >> 4) as u64)
            .with("timestamp", ts as u64)
            .with("snd_wl1", w32(0))
            .with("snd_wnd", w32(1))
            .with("max_window", w32(2))
            .with("rcv_wnd", w32(3))
            // (rcv_wup may count the FIN left out of rcv_seq: the kernel
            // refuses a window update beyond what was received.)
            .with("rcv_wup", if (w32(4) as u32).wrapping_sub(rcv_seq) as i32 > 0 { rcv_seq as u64 } else { w32(4) }))
    })();
    if r.is_err() {
        let _ = set_queue(copy, TCP_NO_QUEUE);
        let _ = setsockopt_int(copy, SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
    }
    r
}

fn family_of(s: &Json) -> Result<i32> {
    match s.u64_of("family") {
        Some(2) => Ok(AF_INET),
        Some(10) => Ok(AF_INET6),
        f => Err(Error::new("EIMAGE", format!("socket family {:?} is not IPv4/IPv6", f))),
    }
}

pub(super) fn restore_tcp_post_opts(fd: &Fd, s: &Json) -> Result<()> {
    if s.bool_of("nodelay") {
        setsockopt_int(fd, SOL_TCP, TCP_NODELAY, 1)?;
    }
    if s.bool_of("keepalive") {
        setsockopt_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1)?;
        for (k, o) in [("keepidle", TCP_KEEPIDLE), ("keepintvl", TCP_KEEPINTVL), ("keepcnt", TCP_KEEPCNT)] {
            if let Some(v) = s.u64_of(k) {
                setsockopt_int(fd, SOL_TCP, o, v as i32)?;
            }
        }
    }
    Ok(())
}

/// A Multipath TCP socket (IPPROTO_MPTCP; Go makes its listeners so):
/// listening, bound or not yet bound, as a TCP socket of those states is. A
/// connection over it cannot be repaired as TCP's are: refused.
pub fn describe_mptcp(ctx: &FileCtx, copy: Fd, mut s: Json, domain: i32) -> Result<Json> {
    dump_common_opts(&copy, &mut s, domain);
    let local = local_of(&copy);
    if getsockopt_int(&copy, SOL_SOCKET, super::SO_ACCEPTCONN).unwrap_or(0) != 0 {
        s.set("state", "listen").set("backlog", 128u64);
        if let Some(l) = local {
            s.set("local", l);
        }
    } else if let Some(p) = peer_of(&copy) {
        return ctx.unsupported(&format!("Multipath TCP connection {} -> {}", addr_text(local.as_ref()), addr_text(Some(&p))));
    } else {
        set_bound(&mut s, local);
    }
    s.set("mptcp", true);
    Ok(ctx.base.clone().with("kind", "sock_tcp").with("sock", s))
}

pub fn open_tcp(s: &Json) -> Result<Fd> {
    let family = family_of(s)?;
    let state = s.str_of("state").unwrap_or("");
    match state {
        "established" => return open_established(s, family),
        "connecting" => return open_connecting(s, family),
        "closed" => return super::tcp_closed::open(s, family),
        _ => {}
    }
    let fd = new_socket(family, SOCK_STREAM, if s.bool_of("mptcp") { IPPROTO_MPTCP } else { 6 })?;
    restore_pre_bind_opts(&fd, s, family)?;
    let reuse = s.bool_of("reuseaddr");
    let local = s.get("local");
    let what = format!("bind {}", addr_text(local));
    match state {
        "unbound" => {}
        "bound" | "listen" => {
            let raw = addr_raw(family, local.ok_or_else(|| Error::new("EIMAGE", "bound socket without a local address"))?)?;
            // Old connections of the dumped listener may linger in TIME_WAIT:
            // bind and listen with SO_REUSEADDR, then put the saved value back.
            setsockopt_int(&fd, SOL_SOCKET, SO_REUSEADDR, 1)?;
            bind_raw(&fd, &raw, &what).map_err(|e| Error { code: "ESOCKET", ..e })?;
            if state == "listen" {
                let backlog = s.u64_of("backlog").unwrap_or(128);
                sys::call(&format!("listen on {}", addr_text(local)), snr::LISTEN, &[fd.raw() as u64, backlog])?;
            }
            setsockopt_int(&fd, SOL_SOCKET, SO_REUSEADDR, reuse as i32)?;
        }
        st => return Err(Error::new("EIMAGE", format!("TCP socket state {:?} is not known", st))),
    }
    if reuse {
        setsockopt_int(&fd, SOL_SOCKET, SO_REUSEADDR, 1)?;
    }
    restore_tcp_post_opts(&fd, s)?;
    Ok(fd)
}

/// A connect in flight at the dump: the same local address, then a
/// non-blocking connect to the same peer (sockets::open sets the file's own
/// O_NONBLOCK afterwards). A blocking connect the process was inside is
/// restarted on this socket and waits for the handshake to finish.
fn open_connecting(s: &Json, family: i32) -> Result<Fd> {
    let local = s.get("local").ok_or_else(|| Error::new("EIMAGE", "TCP connect without a local address"))?;
    let peer = s.get("peer").ok_or_else(|| Error::new("EIMAGE", "TCP connect without a peer address"))?;
    let what = format!("TCP connect {} -> {}", addr_text(Some(local)), addr_text(Some(peer)));
    let fd = new_socket(family, SOCK_STREAM | SOCK_NONBLOCK, 6)?;
    let r = (|| -> Result<()> {
        restore_pre_bind_opts(&fd, s, family)?;
        setsockopt_int(&fd, SOL_SOCKET, SO_REUSEADDR, 1)?;
        freebind(&fd, family, true);
        bind_raw(&fd, &addr_raw(family, local)?, &format!("bind {}", addr_text(Some(local)))).map_err(|e| Error { code: "ESOCKET", ..e })?;
        freebind(&fd, family, false);
        setsockopt_int(&fd, SOL_SOCKET, SO_REUSEADDR, s.bool_of("reuseaddr") as i32)?;
        let p = addr_raw(family, peer)?;
        match sys::call("connect", snr::CONNECT, &[fd.raw() as u64, p.as_ptr() as u64, p.len() as u64]) {
            Err(e) if e.errno != 115 /* EINPROGRESS */ => return Err(e),
            _ => {}
        }
        restore_tcp_post_opts(&fd, s)
    })();
    r.map_err(|e| e.context(what))?;
    Ok(fd)
}

/// IP_FREEBIND / IPV6_FREEBIND: bind an address not (yet) configured on this
/// host; the kernel checks that at bind only.
fn freebind(fd: &Fd, family: i32, on: bool) {
    let _ = setsockopt_int(fd, if family == AF_INET { SOL_IP } else { SOL_IPV6 }, if family == AF_INET { IP_FREEBIND } else { IPV6_FREEBIND }, on as i32);
}

fn open_established(s: &Json, family: i32) -> Result<Fd> {
    let t = s.get("tcp").ok_or_else(|| Error::new("EIMAGE", "established TCP socket without \"tcp\""))?;
    let local = s.get("local").ok_or_else(|| Error::new("EIMAGE", "TCP connection without a local address"))?;
    let peer = s.get("peer").ok_or_else(|| Error::new("EIMAGE", "TCP connection without a peer address"))?;
    let what = format!("TCP connection {} -> {}", addr_text(Some(local)), addr_text(Some(peer)));
    let dec = |k: &str| -> Result<Vec<u8>> {
        match t.str_of(k) {
            Some(v) => base64::decode(v).ok_or_else(|| Error::new("EIMAGE", format!("{} of a TCP connection is malformed", k))),
            None => Ok(Vec::new()),
        }
    };
    let send_queue = dec("send_queue")?;
    let recv_queue = dec("recv_queue")?;
    let unsent = (t.u64_of("unsent").unwrap_or(0) as usize).min(send_queue.len());
    let sent = send_queue.len() - unsent;
    let u32_of = |k: &str| t.u64_of(k).unwrap_or(0) as u32;
    let fd = new_socket(family, SOCK_STREAM, 6)?;
    let r = (|| -> Result<()> {
        setsockopt_int(&fd, SOL_TCP, TCP_REPAIR, 1).map_err(|e| e.context("TCP_REPAIR (needs CAP_NET_ADMIN)"))?;
        set_queue(&fd, TCP_SEND_QUEUE)?;
        setsockopt_int(&fd, SOL_TCP, TCP_QUEUE_SEQ, u32_of("snd_seq").wrapping_sub(send_queue.len() as u32) as i32)?;
        set_queue(&fd, TCP_RECV_QUEUE)?;
        setsockopt_int(&fd, SOL_TCP, TCP_QUEUE_SEQ, u32_of("rcv_seq").wrapping_sub(recv_queue.len() as u32) as i32)?;
        set_queue(&fd, TCP_NO_QUEUE)?;
        if family == AF_INET6 {
            setsockopt_int(&fd, SOL_IPV6, IPV6_V6ONLY, s.bool_of("v6only") as i32)?;
        }
        freebind(&fd, family, true);
        let l = addr_raw(family, local)?;
        bind_raw(&fd, &l, &format!("bind {}", addr_text(Some(local)))).map_err(|e| Error { code: "ESOCKET", ..e })?;
        let p = addr_raw(family, peer)?;
        sys::call("connect (repair)", snr::CONNECT, &[fd.raw() as u64, p.as_ptr() as u64, p.len() as u64])?;
        freebind(&fd, family, false);
        // TCP_REPAIR_OPTIONS: struct tcp_repair_opt { u32 code; u32 val; }[]
        let mut opts: Vec<u8> = Vec::new();
        let mut push = |code: u32, val: u32| {
            opts.extend_from_slice(&code.to_le_bytes());
            opts.extend_from_slice(&val.to_le_bytes());
        };
        push(2, u32_of("mss")); // TCPOPT_MSS
        if t.bool_of("wscale") {
            push(3, u32_of("snd_wscale") | (u32_of("rcv_wscale") << 16)); // TCPOPT_WINDOW
        }
        if t.bool_of("sack") {
            push(4, 0); // TCPOPT_SACK_PERM
        }
        if t.bool_of("timestamps") {
            push(8, 0); // TCPOPT_TIMESTAMP
        }
        setsockopt_buf(&fd, SOL_TCP, TCP_REPAIR_OPTIONS, &opts, "TCP_REPAIR_OPTIONS")?;
        if t.bool_of("timestamps") {
            setsockopt_int(&fd, SOL_TCP, TCP_TIMESTAMP, u32_of("timestamp") as i32)?;
        }
        if !recv_queue.is_empty() {
            grow_buffer(&fd, SO_RCVBUFFORCE, SO_RCVBUF, recv_queue.len());
            set_queue(&fd, TCP_RECV_QUEUE)?;
            send_all(&fd, &recv_queue, 0, "refill of the receive queue")?;
        }
        if !send_queue.is_empty() {
            grow_buffer(&fd, SO_SNDBUFFORCE, SO_SNDBUF, send_queue.len());
        }
        if sent > 0 {
            set_queue(&fd, TCP_SEND_QUEUE)?;
            send_all(&fd, &send_queue[..sent], 0, "refill of the send queue")?;
        }
        set_queue(&fd, TCP_NO_QUEUE)?;
        let mut w = Vec::new();
        for k in ["snd_wl1", "snd_wnd", "max_window", "rcv_wnd", "rcv_wup"] {
            w.extend_from_slice(&u32_of(k).to_le_bytes());
        }
        setsockopt_buf(&fd, SOL_TCP, TCP_REPAIR_WINDOW, &w, "TCP_REPAIR_WINDOW")?;
        if s.bool_of("reuseaddr") {
            setsockopt_int(&fd, SOL_SOCKET, SO_REUSEADDR, 1)?;
        }
        restore_tcp_post_opts(&fd, s)
    })();
    r.map_err(|e| e.context(what.clone()))?;
    // Still in repair mode: it leaves it in `finish_established`, once every
    // socket is made (both ends of a connection may be ours, and a segment
    // to an end not made yet would be answered with a reset).
    let unsent_data = send_queue[sent..].to_vec();
    pending().push(Pending { fd: fd.raw(), what, unsent: unsent_data, fin_in: t.bool_of("fin_in"), fin_out: t.bool_of("fin_out") });
    Ok(fd)
}

/// An established connection made, not yet out of repair mode.
struct Pending {
    fd: i32,
    what: String,
    unsent: Vec<u8>,
    fin_in: bool,
    fin_out: bool,
}

fn pending() -> std::sync::MutexGuard<'static, Vec<Pending>> {
    static P: std::sync::Mutex<Vec<Pending>> = std::sync::Mutex::new(Vec::new());
    P.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forget the connections made (their descriptors are being closed).
pub fn abandon_established() {
    pending().clear();
}

/// Take every connection made by `open_tcp` out of repair mode (the
/// descriptors are still open: files::open_all holds them).
pub fn finish_established() -> Result<()> {
    let all = std::mem::take(&mut *pending());
    for p in all {
        let fd = std::mem::ManuallyDrop::new(Fd(p.fd));
        let r = (|| -> Result<()> {
            if !p.unsent.is_empty() {
                // Never sent: goes out as ordinary data once out of repair mode.
                setsockopt_int(&fd, SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)?;
                send_all(&fd, &p.unsent, MSG_DONTWAIT, "send of the unsent data")?;
                setsockopt_int(&fd, SOL_TCP, TCP_REPAIR, 1)?;
            }
            // Off with a window probe: the peer answers with an ACK and both sides agree again.
            setsockopt_int(&fd, SOL_TCP, TCP_REPAIR, 0)?;
            // Half-closed. Our FIN goes out again at its old sequence number
            // (a peer that had it acknowledges a duplicate). The peer's FIN is
            // not replayed: reads see end-of-file after the queued data, and a
            // peer that sends its FIN again (one in the same tree does) moves
            // the socket on to CLOSE_WAIT as before.
            if p.fin_in {
                sys::call("shutdown(SHUT_RD)", SHUTDOWN, &[fd.raw() as u64, SHUT_RD])?;
            }
            if p.fin_out {
                sys::call("shutdown(SHUT_WR)", SHUTDOWN, &[fd.raw() as u64, SHUT_WR])?;
            }
            Ok(())
        })();
        r.map_err(|e| e.context(p.what))?;
    }
    Ok(())
}

// ---- UDP ----

pub fn describe_udp(ctx: &FileCtx, copy: Fd, mut s: Json, domain: i32) -> Result<Json> {
    dump_common_opts(&copy, &mut s, domain);
    s.set("broadcast", getsockopt_int(&copy, SOL_SOCKET, SO_BROADCAST).map(|v| v != 0).unwrap_or(false));
    let local = local_of(&copy);
    let proto = s.u64_of("protocol").unwrap_or(0);
    // A connected ICMP echo socket has no peer port, and getpeername
    // refuses it: its peer is read from /proc/net/icmp.
    let peer = peer_of(&copy).or_else(|| if matches!(proto, 1 | 58) { icmp_peer(ctx.pid, s.u64_of("ino").unwrap_or(0), proto == 58) } else { None });
    let state = match (&local, &peer) {
        (_, Some(_)) => "connected",
        (Some(l), None) if !is_unbound(l) => "bound",
        _ => "unbound",
    };
    s.set("state", state);
    if let Some(l) = local {
        if state != "unbound" {
            s.set("local", l);
        }
    }
    if let Some(p) = peer {
        s.set("peer", p);
    }
    let queued = ioctl_int(&copy, SIOCINQ).unwrap_or(0);
    if queued > 0 {
        s.set("lost_datagrams", true);
    }
    if matches!(proto, 0 | 17 | 136) {
        let ino = s.u64_of("ino").unwrap_or(0);
        // (None when this kernel's sock_diag does not know the protocol)
        let how = super::diag::inet_lookup(&copy, domain, if proto == 0 { 17 } else { proto as u8 }, ino, u32::MAX).ok().flatten().map_or(0, |i| i.shutdown);
        if how != 0 {
            s.set("shutdown", how);
        }
    }
    Ok(ctx.base.clone().with("kind", "sock_udp").with("sock", s))
}

/// The peer of connected ICMP echo socket `ino`, from the process's
/// /proc/net/icmp (or icmp6): its remote address, when its state is
/// established (1).
fn icmp_peer(pid: crate::sys::Pid, ino: u64, v6: bool) -> Option<Json> {
    let text = std::fs::read_to_string(format!("/proc/{}/net/{}", pid, if v6 { "icmp6" } else { "icmp" })).ok()?;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[9].parse::<u64>().ok() != Some(ino) || f[3] != "01" {
            continue;
        }
        let hex = f[2].split(':').next()?;
        // Each 32-bit word as the kernel holds it (network order), printed as a host number.
        let words: Vec<u32> = (0..hex.len() / 8).map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok()).collect::<Option<_>>()?;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let ip = match bytes.len() {
            4 => Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
            16 => Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..]).ok()?).to_string(),
            _ => return None,
        };
        return Some(Json::obj().with("ip", ip).with("port", 0u64));
    }
    None
}

/// A raw IP socket: its protocol, the address it is bound and connected to
/// (the protocol stands in the port), its options (IP_HDRINCL, ICMP
/// filters, opts.rs); queued packets are lost, as a UDP socket's datagrams.
pub fn describe_raw(ctx: &FileCtx, copy: Fd, s: Json, domain: i32) -> Result<Json> {
    let j = describe_udp(ctx, copy, s, domain)?;
    Ok(j.with("kind", "sock_raw"))
}

pub fn open_raw(s: &Json) -> Result<Fd> {
    open_datagram(s, SOCK_RAW, s.u64_of("protocol").unwrap_or(0) as i32)
}

pub fn open_udp(s: &Json) -> Result<Fd> {
    // UDP (17, or 0 for the family's default), UDP-Lite (136), ICMP echo (1, 58)
    let proto = match s.u64_of("protocol").unwrap_or(17) {
        0 => 17,
        p => p as i32,
    };
    open_datagram(s, SOCK_DGRAM, proto)
}

fn open_datagram(s: &Json, ty: i32, proto: i32) -> Result<Fd> {
    let family = family_of(s)?;
    let fd = new_socket(family, ty, proto)?;
    restore_pre_bind_opts(&fd, s, family)?;
    if s.bool_of("reuseaddr") {
        setsockopt_int(&fd, SOL_SOCKET, SO_REUSEADDR, 1)?;
    }
    if s.bool_of("broadcast") {
        setsockopt_int(&fd, SOL_SOCKET, SO_BROADCAST, 1)?;
    }
    if let Some(l) = s.get("local") {
        if !is_unbound(l) {
            let raw = addr_raw(family, l)?;
            bind_raw(&fd, &raw, &format!("bind {}", addr_text(Some(l)))).map_err(|e| Error { code: "ESOCKET", ..e })?;
        }
    }
    if let Some(p) = s.get("peer") {
        let raw = addr_raw(family, p)?;
        sys::call(&format!("connect {}", addr_text(Some(p))), snr::CONNECT, &[fd.raw() as u64, raw.as_ptr() as u64, raw.len() as u64])?;
    }
    Ok(fd)
}
