//! TCP sockets whose connection is over: reset by the peer, refused, or
//! closed both ways, and still held by the process. The kernel leaves such a
//! socket in CLOSE with its receive side shut: reads return what is still
//! queued, then the error not yet reported (ECONNRESET...) once, then 0;
//! writes fail with EPIPE. A new socket would say ENOTCONN instead.
//!
//! Dump: poll() tells a finished connection (POLLRDHUP) and a pending error
//! (POLLERR) apart without changing anything; the unread bytes are peeked.
//! The error itself can only be read by clearing it (SO_ERROR, or a read
//! that reports it), so the process being dumped no longer sees it if it
//! keeps running. Restore: the same ending is played again on a loopback
//! connection made for it, so the kernel builds exactly that socket; with
//! nothing pending and nothing unread, a new socket shut both ways does.

use super::inet::{restore_pre_bind_opts, restore_tcp_post_opts, SOL_TCP, TCP_INFO};
use super::*;
use crate::base64;

const SIOCINQ: u64 = 0x541B;
const SO_ERROR: i32 = 4;
const SO_LINGER: i32 = 13;
const SO_SNDTIMEO: i32 = 21;
const SHUTDOWN: i64 = 48;
const SHUT_WR: u64 = 1;
const POLLERR: i16 = 0x8;

const EPIPE: i32 = 32;
const ECONNRESET: i32 = 104;
const ECONNREFUSED: i32 = 111;
const EINPROGRESS: i32 = 115;

const TCP_CLOSE: u8 = 7;
const TCP_CLOSE_WAIT: u8 = 8;

/// How the connection of a socket in CLOSE ended, if it had one.
pub struct Ending {
    pub unread: Vec<u8>,
    /// Not yet reported to the process: 0, ECONNRESET, EPIPE (a reset after
    /// the peer's FIN) or ECONNREFUSED (a non-blocking connect refused).
    pub error: i32,
}

/// None: a socket that never had a connection (unbound or bound).
pub fn dump(fd: i32, copy: &Fd) -> Result<Option<Ending>> {
    let mut p = [sys::PollFd::new(copy.raw(), sys::POLLIN | sys::POLLRDHUP)];
    sys::poll(&mut p, 0);
    if p[0].revents & sys::POLLRDHUP == 0 {
        return Ok(None);
    }
    let inq = ioctl_int(copy, SIOCINQ)?.max(0) as usize;
    let mut unread = vec![0u8; inq];
    if inq > 0 {
        let n = sys::call("peek of a closed TCP socket", snr::RECVFROM, &[copy.raw() as u64, unread.as_mut_ptr() as u64, inq as u64, MSG_PEEK | MSG_DONTWAIT, 0, 0])?;
        unread.truncate(n as usize);
    }
    let error = if p[0].revents & POLLERR != 0 { take_error(copy, unread.len())? } else { (false, 0) };
    let what = |e: i32| format!("fd {}: TCP socket closed with error {} ({}) not yet reported to the process", fd, e, sys::strerror(e));
    match error {
        (_, 0) | (false, ECONNRESET) | (true, EPIPE) => {}
        (false, ECONNREFUSED) if unread.is_empty() => {}
        (_, e) => {
            return Err(Error::new(
                "EUNSUPPORTED",
                format!("{}: only a reset (ECONNRESET, or EPIPE after the peer's FIN) or a refused connect can be made again; not supported", what(e)),
            ))
        }
    }
    Ok(Some(Ending { unread, error: error.1 }))
}

/// Read and clear the pending error; also tells whether the peer's FIN had
/// come (then reads return 0 before the error, which only writes report).
/// A read peeking past the unread bytes shows which: 0 for a FIN, else the
/// error, which it clears.
fn take_error(copy: &Fd, unread: usize) -> Result<(bool, i32)> {
    let old_off = getsockopt_int(copy, SOL_SOCKET, SO_PEEK_OFF).unwrap_or(-1);
    let skip = unread == 0 || setsockopt_int(copy, SOL_SOCKET, SO_PEEK_OFF, unread as i32).is_ok();
    let mut b = [0u8; 1];
    let r = if skip { Some(unsafe { sys::raw(snr::RECVFROM, &[copy.raw() as u64, b.as_mut_ptr() as u64, 1, MSG_PEEK | MSG_DONTWAIT, 0, 0]) }) } else { None };
    if unread > 0 {
        let _ = setsockopt_int(copy, SOL_SOCKET, SO_PEEK_OFF, old_off);
    }
    let so_error = || getsockopt_int(copy, SOL_SOCKET, SO_ERROR);
    match r {
        Some(Ok(0)) => Ok((true, so_error()?)),
        Some(Err(e)) if e != 11 => Ok((false, e)),
        // No way to peek past the data (a kernel without SO_PEEK_OFF for
        // TCP): only a reset after a FIN reports EPIPE.
        _ => {
            let e = so_error()?;
            Ok((e == EPIPE, e))
        }
    }
}

/// The record of an ended connection in the socket's JSON.
pub fn describe(end: Ending, s: &mut Json) {
    s.set("state", "closed");
    if end.error != 0 {
        s.set("error", end.error as u64);
    }
    if !end.unread.is_empty() {
        s.set("queue", vec![Json::from(base64::encode(&end.unread))]);
    }
}

fn tcp_state(fd: &Fd) -> u8 {
    let mut info = [0u8; 8];
    getsockopt_buf(fd, SOL_TCP, TCP_INFO, &mut info).map(|_| info[0]).unwrap_or(0)
}

/// Wait (briefly: loopback segments are handled at once) until `fd` reaches `want`.
fn wait_state(fd: &Fd, want: u8, what: &str) -> Result<()> {
    let t0 = std::time::Instant::now();
    while tcp_state(fd) != want {
        if t0.elapsed() > std::time::Duration::from_secs(2) {
            return Err(Error::new("ESOCKET", format!("rebuilding a closed TCP socket: {} did not happen on loopback", what)));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(())
}

fn loopback(family: i32) -> Vec<u8> {
    let mut a = vec![0u8; if family == AF_INET { 16 } else { 28 }];
    a[0..2].copy_from_slice(&(family as u16).to_le_bytes());
    if family == AF_INET {
        a[4..8].copy_from_slice(&[127, 0, 0, 1]);
    } else {
        a[23] = 1; // ::1
    }
    a
}

/// A socket on which the dumped ending is played again: connected over
/// loopback to a peer made for it, which sends the unread bytes, its FIN if
/// the error needs one, then resets the connection (SO_LINGER 0). A refused
/// connect is a non-blocking connect to a port that does not listen.
pub fn open(s: &Json, family: i32) -> Result<Fd> {
    let error = s.u64_of("error").unwrap_or(0) as i32;
    let unread: Vec<u8> = match s.arr_of("queue").first() {
        Some(q) => q.as_str().and_then(base64::decode).ok_or_else(|| Error::new("EIMAGE", "unread data of a closed TCP socket is malformed"))?,
        None => Vec::new(),
    };
    if error == 0 && unread.is_empty() {
        return open_shut(s, family);
    }
    let peer = new_socket(family, SOCK_STREAM, 6)?;
    let mut addr = loopback(family);
    sys::call("bind (loopback)", snr::BIND, &[peer.raw() as u64, addr.as_ptr() as u64, addr.len() as u64])
        .map_err(|e| e.context("rebuilding a closed TCP socket with a pending error or unread bytes needs the loopback interface"))?;
    let mut len = addr.len() as u32;
    sys::call("getsockname (loopback)", snr::GETSOCKNAME, &[peer.raw() as u64, addr.as_mut_ptr() as u64, &mut len as *mut u32 as u64])?;
    let fd = new_socket(family, SOCK_STREAM, 6)?;
    restore_pre_bind_opts(&fd, s, family)?;
    let connect = || sys::call("connect (loopback)", snr::CONNECT, &[fd.raw() as u64, addr.as_ptr() as u64, addr.len() as u64]);
    if error == ECONNREFUSED {
        sys::call("F_SETFL", nr::FCNTL, &[fd.raw() as u64, 4, O_NONBLOCK as u64])?;
        match connect() {
            Err(e) if e.errno == EINPROGRESS => {}
            r => return Err(Error::new("ESOCKET", format!("rebuilding a refused TCP connect: connect gave {:?}", r.map_err(|e| e.message)))),
        }
        wait_state(&fd, TCP_CLOSE, "the refusal")?;
    } else {
        if !unread.is_empty() {
            grow_buffer(&fd, SO_RCVBUFFORCE, SO_RCVBUF, unread.len());
        }
        sys::call("listen (loopback)", snr::LISTEN, &[peer.raw() as u64, 1])?;
        connect()?;
        let conn = Fd(sys::call("accept (loopback)", snr::ACCEPT, &[peer.raw() as u64, 0, 0])? as i32);
        if !unread.is_empty() {
            // Bounded: a receive buffer too small for the bytes fails, not hangs.
            let mut tv = [0u8; 16]; // struct timeval: 2 s
            tv[0] = 2;
            setsockopt_buf(&conn, SOL_SOCKET, SO_SNDTIMEO, &tv, "SO_SNDTIMEO")?;
            send_all(&conn, &unread, 0, "refill of a closed TCP socket")?;
            let t0 = std::time::Instant::now();
            while (ioctl_int(&fd, SIOCINQ)? as usize) < unread.len() {
                if t0.elapsed() > std::time::Duration::from_secs(2) {
                    return Err(Error::new("ESOCKET", "rebuilding a closed TCP socket: its unread bytes did not arrive on loopback"));
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        if error == EPIPE {
            sys::call("shutdown (loopback)", SHUTDOWN, &[conn.raw() as u64, SHUT_WR])?;
            wait_state(&fd, TCP_CLOSE_WAIT, "the peer's FIN")?;
        }
        let linger = [1u8, 0, 0, 0, 0, 0, 0, 0]; // struct linger: on, 0 s
        setsockopt_buf(&conn, SOL_SOCKET, SO_LINGER, &linger, "SO_LINGER")?;
        drop(conn);
        wait_state(&fd, TCP_CLOSE, "the reset")?;
        if error == 0 {
            getsockopt_int(&fd, SOL_SOCKET, SO_ERROR)?; // reported already: clear it
        }
    }
    finish(fd, s)
}

/// Nothing to replay (no error pending, nothing unread): a new socket with
/// both directions shut reads 0 and fails writes with EPIPE, and poll shows
/// the same, as an ended connection's socket does. No network is needed.
fn open_shut(s: &Json, family: i32) -> Result<Fd> {
    let fd = new_socket(family, SOCK_STREAM, 6)?;
    restore_pre_bind_opts(&fd, s, family)?;
    const SHUT_RDWR: u64 = 2;
    const ENOTCONN: i32 = 107;
    // Refused (ENOTCONN) on a socket that never connected, but done all the same.
    match sys::call("shutdown", SHUTDOWN, &[fd.raw() as u64, SHUT_RDWR]) {
        Err(e) if e.errno != ENOTCONN => return Err(e),
        _ => {}
    }
    finish(fd, s)
}

fn finish(fd: Fd, s: &Json) -> Result<Fd> {
    if s.bool_of("reuseaddr") {
        setsockopt_int(&fd, SOL_SOCKET, SO_REUSEADDR, 1)?;
    }
    restore_tcp_post_opts(&fd, s)?;
    Ok(fd)
}
