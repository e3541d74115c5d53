//! Sockets: TCP (listening, bound, established through TCP_REPAIR), UDP,
//! unix (listening, pairs inside the tree with their queued data), netlink
//! (port id, groups) and packet (interface, ethertype, memberships).
//!
//! Dump works on a copy of the descriptor taken with pidfd_getfd: what the
//! socket API can tell (SO_DOMAIN, getsockname, options, queued data with
//! MSG_PEEK) is asked directly, the rest (listen backlog, unix peers) comes
//! from NETLINK_SOCK_DIAG, opened in the socket's own network namespace.
//!
//! JSON: `{"kind": "sock_tcp" | "sock_udp" | "sock_unix" | "sock_netlink" |
//! "sock_packet", "sock": {...}}`,
//! see docs/sockets.md and `Socket` in images/files.proto.

mod diag;
pub(crate) use diag::{netlink_socket_beside, send_to_kernel};
mod filter;
mod inet;
mod netlink;
mod opts;
mod packet;
mod scm;
mod tcp_closed;
mod unix;
mod unixname;

use crate::files::FileCtx;
use crate::json::Json;
use crate::sys::{self, nr, Error, Fd, Result};
use std::sync::Mutex;

pub(crate) const AF_UNIX: i32 = 1;
pub(crate) const AF_INET: i32 = 2;
pub(crate) const AF_INET6: i32 = 10;
pub(crate) const AF_NETLINK: i32 = 16;
pub(crate) const AF_PACKET: i32 = 17;

pub(crate) const SOCK_STREAM: i32 = 1;
pub(crate) const SOCK_DGRAM: i32 = 2;
pub(crate) const SOCK_RAW: i32 = 3;
pub(crate) const IPPROTO_MPTCP: i32 = 262;
pub(crate) const SOCK_SEQPACKET: i32 = 5;
pub(crate) const SOCK_CLOEXEC: u64 = 0o2000000;
pub(crate) const SOCK_NONBLOCK: i32 = 0o4000;

pub(crate) const SOL_SOCKET: i32 = 1;
pub(crate) const SO_REUSEADDR: i32 = 2;
pub(crate) const SO_TYPE: i32 = 3;
pub(crate) const SO_BROADCAST: i32 = 6;
pub(crate) const SO_SNDBUF: i32 = 7;
pub(crate) const SO_RCVBUF: i32 = 8;
pub(crate) const SO_KEEPALIVE: i32 = 9;
pub(crate) const SO_REUSEPORT: i32 = 15;
pub(crate) const SO_PASSCRED: i32 = 16;
pub(crate) const SO_SNDBUFFORCE: i32 = 32;
pub(crate) const SO_RCVBUFFORCE: i32 = 33;
pub(crate) const SO_PEEK_OFF: i32 = 42;
pub(crate) const SO_PROTOCOL: i32 = 38;
pub(crate) const SO_DOMAIN: i32 = 39;

pub(crate) const MSG_PEEK: u64 = 2;
pub(crate) const MSG_TRUNC: u64 = 0x20;
pub(crate) const MSG_DONTWAIT: u64 = 0x40;

pub(crate) use crate::sys::O_NONBLOCK;

pub(crate) mod snr {
    pub const SOCKET: i64 = 41;
    pub const CONNECT: i64 = 42;
    pub const ACCEPT: i64 = 43;
    pub const SENDTO: i64 = 44;
    pub const RECVFROM: i64 = 45;
    pub const BIND: i64 = 49;
    pub const LISTEN: i64 = 50;
    pub const GETSOCKNAME: i64 = 51;
    pub const GETPEERNAME: i64 = 52;
    pub const SOCKETPAIR: i64 = 53;
    pub const SETSOCKOPT: i64 = 54;
    pub const GETSOCKOPT: i64 = 55;
    pub const SETNS: i64 = 308;
}

pub(crate) const SO_ACCEPTCONN: i32 = 30;

/// File kinds (the "kind" field) this module restores.
pub fn handles(kind: &str) -> bool {
    kind.starts_with("sock")
}

pub fn describe(ctx: &FileCtx) -> Result<Json> {
    let copy = sys::pidfd_getfd(ctx.pidfd, ctx.fd)?;
    let domain = getsockopt_int(&copy, SOL_SOCKET, SO_DOMAIN).unwrap_or(-1);
    let ty = getsockopt_int(&copy, SOL_SOCKET, SO_TYPE).unwrap_or(-1);
    let proto = getsockopt_int(&copy, SOL_SOCKET, SO_PROTOCOL).unwrap_or(-1);
    let ino = ctx.info.ino;
    let ino = if ino != 0 { ino } else { std::os::unix::fs::MetadataExt::ino(ctx.md) };
    let mut s = Json::obj().with("family", domain as u64).with("type", ty as u64).with("protocol", proto as u64).with("ino", ino);
    if matches!(domain, AF_INET | AF_INET6 | AF_UNIX | AF_NETLINK | AF_PACKET) {
        let o = opts::dump(&copy, domain, ty, proto, ty == SOCK_STREAM && domain != AF_UNIX);
        if !o.is_empty() {
            s.set("opts", o);
        }
        filter::dump(&copy, &mut s, &format!("fd {}: {}", ctx.fd, ctx.target))?;
    }
    // A connected TCP socket's sizes may be the kernel's autotuning, which
    // must go on: only those of other sockets are a program's (opts.rs).
    let tcp_connected = || getsockopt_int(&copy, SOL_SOCKET, SO_ACCEPTCONN).unwrap_or(0) == 0 && sockname(&copy, true).is_ok();
    if matches!(domain, AF_UNIX) || (matches!(domain, AF_INET | AF_INET6) && (ty == SOCK_DGRAM || ty == SOCK_RAW || (ty == SOCK_STREAM && !tcp_connected()))) {
        opts::dump_buffers(&copy, domain, ty, proto, &mut s);
    }
    match (domain, ty) {
        (AF_INET | AF_INET6, SOCK_STREAM) if proto == 6 || proto == 0 => inet::describe_tcp(ctx, copy, s, domain),
        (AF_INET | AF_INET6, SOCK_STREAM) if proto == IPPROTO_MPTCP => inet::describe_mptcp(ctx, copy, s, domain),
        // UDP, UDP-Lite and ICMP echo ("ping") sockets: datagrams to a port (an echo id)
        (AF_INET | AF_INET6, SOCK_DGRAM) if matches!(proto, 0 | 17 | 136 | 1 | 58) => inet::describe_udp(ctx, copy, s, domain),
        (AF_INET | AF_INET6, SOCK_RAW) => inet::describe_raw(ctx, copy, s, domain),
        (AF_UNIX, SOCK_STREAM | SOCK_DGRAM | SOCK_SEQPACKET) => unix::describe(ctx, copy, s, ty, ino),
        (AF_NETLINK, SOCK_RAW | SOCK_DGRAM) => netlink::describe(ctx, copy, s, ty, proto),
        (AF_PACKET, SOCK_RAW | SOCK_DGRAM) => packet::describe(ctx, copy, s, ty),
        _ => ctx.unsupported(&format!("{} socket ({})", family_name(domain, ty, proto), ctx.target)),
    }
}

fn family_name(domain: i32, ty: i32, proto: i32) -> String {
    let d = match domain {
        AF_UNIX => "unix",
        AF_INET => "IPv4",
        AF_INET6 => "IPv6",
        AF_NETLINK => "netlink",
        AF_PACKET => "packet",
        40 => "vsock",
        _ => return format!("address family {}", domain),
    };
    let t = match ty {
        SOCK_STREAM => "stream",
        SOCK_DGRAM => "datagram",
        SOCK_RAW => "raw",
        SOCK_SEQPACKET => "seqpacket",
        10 => "SOCK_PACKET",
        _ => "of an unknown type",
    };
    if domain == AF_INET || domain == AF_INET6 {
        let p = match proto {
            6 => "TCP".to_string(),
            17 => "UDP".to_string(),
            132 => "SCTP".to_string(),
            136 => "UDP-Lite".to_string(),
            1 | 58 => "ICMP".to_string(),
            p => format!("{} protocol {}", t, p),
        };
        return format!("{} {}", d, p);
    }
    format!("{} {}", d, t)
}

/// Once every file of a restore is open (`by_id`): unix queues that carry
/// descriptors are refilled, then connections leave repair mode.
pub fn finish_opened(by_id: &std::collections::BTreeMap<u64, Fd>) -> Result<()> {
    let r = unix::refill_deferred(by_id);
    // Names bound without a file are only needed to refill their queues.
    unixname::finish();
    r?;
    shut_down_pending()?;
    inet::finish_established()
}

/// A restore that failed half-way: nothing left to finish.
pub fn abandon_opened() {
    if let Ok(mut v) = SHUTDOWNS.lock() {
        v.clear();
    }
    unix::abandon_deferred();
    unixname::finish();
    inet::abandon_established()
}

/// At the end of a dump: every connected unix socket's peer was dumped too.
pub fn check_unix_peers(files: &[Json], where_of: &dyn Fn(u64) -> String) -> Result<()> {
    unix::check_peers(files, where_of)
}

/// At the end of a dump: what the user should know of unix socket names.
pub fn unix_warnings(files: &[Json], where_of: &dyn Fn(u64) -> String) -> Vec<String> {
    unix::warnings(files, where_of)
}

/// The address family of a socket (SO_DOMAIN), -1 if it cannot be asked.
pub fn domain_of(fd: &Fd) -> i32 {
    getsockopt_int(fd, SOL_SOCKET, SO_DOMAIN).unwrap_or(-1)
}

pub fn open(f: &Json) -> Result<Fd> {
    let s = f.get("sock").ok_or_else(|| Error::new("EIMAGE", "socket entry without \"sock\""))?;
    let id = f.u64_of("id").unwrap_or(0);
    let fd = match f.str_of("kind").unwrap_or("") {
        "sock_tcp" => inet::open_tcp(s),
        "sock_udp" => inet::open_udp(s),
        "sock_raw" => inet::open_raw(s),
        "sock_unix" => unix::open(s),
        "sock_netlink" => netlink::open(s),
        "sock_packet" => packet::open(s),
        k => return Err(Error::new("EIMAGE", format!("socket kind {:?} cannot be restored", k))),
    }
    .map_err(|e| e.context(format!("socket (file {})", id)))?;
    let buffers = |fd: &Fd| match f.str_of("kind") {
        Some("sock_tcp" | "sock_udp" | "sock_raw" | "sock_unix") => opts::restore_buffers(fd, s),
        _ => Ok(()), // netlink and packet sockets set theirs when made
    };
    opts::restore(&fd, s).and_then(|_| buffers(&fd)).and_then(|_| filter::restore(&fd, s)).map_err(|e| e.context(format!("socket (file {})", id)))?;
    let flags = f.u64_of("flags").unwrap_or(0) as u32;
    sys::call("F_SETFL", nr::FCNTL, &[fd.raw() as u64, 4, (flags & O_NONBLOCK) as u64])?;
    if let Some(how) = s.u64_of("shutdown").filter(|&h| (1..=3).contains(&h)) {
        if f.str_of("kind") == Some("sock_unix") {
            // After the queues are refilled (a shut down end takes no more).
            SHUTDOWNS.lock().map_err(|_| Error::new("EINTERNAL", "lock"))?.push((unix::dup(&fd)?, how));
        } else {
            shut_down(&fd, how)?;
        }
    }
    Ok(fd)
}

/// Unix sockets that were shut down, with the directions (1
/// receive, 2 send): shut down again once their queues are refilled.
static SHUTDOWNS: std::sync::Mutex<Vec<(Fd, u64)>> = std::sync::Mutex::new(Vec::new());

/// shutdown(2) for the directions `how` (1 receive, 2 send, 3 both). An
/// unconnected datagram socket answers ENOTCONN but keeps the state.
fn shut_down(fd: &Fd, how: u64) -> Result<()> {
    const SHUTDOWN: i64 = 48;
    const ENOTCONN: i32 = 107;
    match sys::call("shutdown", SHUTDOWN, &[fd.raw() as u64, how - 1]) {
        Err(e) if e.errno == ENOTCONN => Ok(()),
        r => r.map(|_| ()),
    }
}

fn shut_down_pending() -> Result<()> {
    let all = std::mem::take(&mut *SHUTDOWNS.lock().map_err(|_| Error::new("EINTERNAL", "lock"))?);
    all.iter().try_for_each(|(fd, how)| shut_down(fd, *how))
}

/// An AF_INET/AF_INET6 sockaddr as {"ip", "port"} (for migrate::handoff).
pub fn addr_json_pub(raw: &[u8]) -> Option<Json> {
    inet::addr_json(raw)
}

// ---- sockets left in repair mode by a dump ----

/// Copies of dumped TCP sockets put in repair mode: they stay in repair mode
/// (closing them then sends neither FIN nor RST) until the process is killed,
/// or are switched back by `unrepair_all` if it is resumed.
static REPAIRED: Mutex<Vec<i32>> = Mutex::new(Vec::new());

pub(crate) fn remember_repaired(fd: Fd) {
    if let Ok(mut v) = REPAIRED.lock() {
        v.push(fd.into_raw());
    }
}

/// The dumped process keeps running (--leave-running, or a failed dump):
/// take every socket the dump put into repair mode out of it again, without
/// a window probe, and close the copies. Returns how many were switched.
pub fn unrepair_all() -> usize {
    let fds: Vec<i32> = match REPAIRED.lock() {
        Ok(mut v) => std::mem::take(&mut *v),
        Err(_) => return 0,
    };
    let n = fds.len();
    for raw in fds {
        let fd = Fd(raw);
        let _ = setsockopt_int(&fd, inet::SOL_TCP, inet::TCP_REPAIR, inet::TCP_REPAIR_OFF_NO_WP);
    }
    n
}

/// The dumped process was killed: close the copies (still in repair mode,
/// so no FIN or RST leaves).
pub fn forget_repaired() {
    let fds: Vec<i32> = match REPAIRED.lock() {
        Ok(mut v) => std::mem::take(&mut *v),
        Err(_) => return,
    };
    for raw in fds {
        drop(Fd(raw));
    }
}

// ---- small helpers ----

pub(crate) fn getsockopt_int(fd: &Fd, level: i32, opt: i32) -> Result<i32> {
    let mut v: i32 = 0;
    let mut len: u32 = 4;
    sys::call(
        &format!("getsockopt({}, {})", level, opt),
        snr::GETSOCKOPT,
        &[fd.raw() as u64, level as u64, opt as u64, &mut v as *mut i32 as u64, &mut len as *mut u32 as u64],
    )?;
    Ok(v)
}

pub(crate) fn getsockopt_buf(fd: &Fd, level: i32, opt: i32, buf: &mut [u8]) -> Result<usize> {
    let mut len: u32 = buf.len() as u32;
    sys::call(
        &format!("getsockopt({}, {})", level, opt),
        snr::GETSOCKOPT,
        &[fd.raw() as u64, level as u64, opt as u64, buf.as_mut_ptr() as u64, &mut len as *mut u32 as u64],
    )?;
    Ok(len as usize)
}

pub(crate) fn setsockopt_int(fd: &Fd, level: i32, opt: i32, v: i32) -> Result<()> {
    sys::call(&format!("setsockopt({}, {})", level, opt), snr::SETSOCKOPT, &[fd.raw() as u64, level as u64, opt as u64, &v as *const i32 as u64, 4])
        .map(|_| ())
}

pub(crate) fn setsockopt_buf(fd: &Fd, level: i32, opt: i32, buf: &[u8], what: &str) -> Result<()> {
    sys::call(what, snr::SETSOCKOPT, &[fd.raw() as u64, level as u64, opt as u64, buf.as_ptr() as u64, buf.len() as u64]).map(|_| ())
}

pub(crate) fn ioctl_int(fd: &Fd, req: u64) -> Result<i32> {
    let mut v: i32 = 0;
    sys::call("ioctl", nr::IOCTL, &[fd.raw() as u64, req, &mut v as *mut i32 as u64])?;
    Ok(v)
}

pub(crate) fn new_socket(domain: i32, ty: i32, proto: i32) -> Result<Fd> {
    sys::call("socket", snr::SOCKET, &[domain as u64, ty as u64 | SOCK_CLOEXEC, proto as u64]).map(|f| Fd(f as i32))
}

/// getsockname / getpeername into raw bytes.
pub(crate) fn sockname(fd: &Fd, peer: bool) -> Result<Vec<u8>> {
    let mut buf = [0u8; 128];
    let mut len: u32 = 128;
    let n = if peer { snr::GETPEERNAME } else { snr::GETSOCKNAME };
    sys::call(if peer { "getpeername" } else { "getsockname" }, n, &[fd.raw() as u64, buf.as_mut_ptr() as u64, &mut len as *mut u32 as u64])?;
    Ok(buf[..(len as usize).min(128)].to_vec())
}

/// Is a message waiting in the socket's receive queue? (A peek of none of
/// its bytes: the queue is left as it is.)
pub(crate) fn has_queued(fd: &Fd) -> bool {
    unsafe { sys::raw(snr::RECVFROM, &[fd.raw() as u64, 0, 0, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC, 0, 0]) }.is_ok()
}

/// Bytes that the peer may try to send, enlarged so `len` bytes fit.
pub(crate) fn grow_buffer(fd: &Fd, opt_force: i32, opt: i32, len: usize) {
    let want = (len as i64 * 2 + 65536).min(i32::MAX as i64) as i32;
    if setsockopt_int(fd, SOL_SOCKET, opt_force, want).is_err() {
        let _ = setsockopt_int(fd, SOL_SOCKET, opt, want);
    }
}

/// send() all of `data` on a (blocking) socket.
pub(crate) fn send_all(fd: &Fd, data: &[u8], flags: u64, what: &str) -> Result<()> {
    let mut off = 0;
    while off < data.len() {
        match unsafe { sys::raw(snr::SENDTO, &[fd.raw() as u64, data[off..].as_ptr() as u64, (data.len() - off) as u64, flags, 0, 0]) } {
            Ok(n) => off += n as usize,
            Err(4) => continue,
            Err(e) => return Err(Error::sys(what, e)),
        }
    }
    Ok(())
}
