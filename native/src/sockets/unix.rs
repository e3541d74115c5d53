//! Unix sockets: listening (path or abstract name), bound datagram sockets,
//! connected pairs whose both ends are inside the dumped tree (recreated with
//! socketpair), each with the unread data of its receive queue.

use super::*;
use crate::base64;
use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;

const SCM_RIGHTS: i32 = 1;
const ST_ESTABLISHED: u8 = 1;
const ST_LISTEN: u8 = 10;

fn type_name(ty: i32) -> &'static str {
    match ty {
        SOCK_STREAM => "stream",
        SOCK_DGRAM => "datagram",
        SOCK_SEQPACKET => "seqpacket",
        _ => "?",
    }
}

/// sun_path bytes of a sockaddr_un (abstract names keep their leading NUL).
fn name_of(raw: &[u8]) -> Vec<u8> {
    if raw.len() <= 2 {
        return Vec::new();
    }
    let mut p = raw[2..].to_vec();
    if p.first() != Some(&0) {
        while p.last() == Some(&0) {
            p.pop();
        }
    }
    p
}

fn name_text(p: &[u8]) -> String {
    if p.first() == Some(&0) {
        format!("@{}", String::from_utf8_lossy(&p[1..]))
    } else {
        String::from_utf8_lossy(p).into_owned()
    }
}

fn sockaddr_un(name: &[u8]) -> Result<Vec<u8>> {
    if name.len() > 107 {
        return Err(Error::new("EIMAGE", "unix socket name longer than 107 bytes"));
    }
    let mut r = (AF_UNIX as u16).to_le_bytes().to_vec();
    r.extend_from_slice(name);
    if name.first() != Some(&0) {
        r.push(0);
    }
    Ok(r)
}

/// Is socket inode `ino` held by a process this engine has frozen (traced)?
fn held_in_tree(ino: u64) -> bool {
    let link = format!("socket:[{}]", ino);
    let me = sys::getpid();
    let Ok(procs) = std::fs::read_dir("/proc") else { return false };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", pid)) else { continue };
        let holds = fds.flatten().any(|f| std::fs::read_link(f.path()).map(|t| t.to_string_lossy() == link).unwrap_or(false));
        if !holds {
            continue;
        }
        let tracer = crate::proc::status_field(pid, "TracerPid").ok().and_then(|v| v.trim().parse::<i32>().ok()).unwrap_or(0);
        if tracer != 0 {
            let tgid = crate::proc::status_field(tracer, "Tgid").ok().and_then(|v| v.trim().parse::<i32>().ok()).unwrap_or(0);
            if tgid == me {
                return true;
            }
        }
    }
    false
}

/// Read the receive queue without consuming it: SO_PEEK_OFF makes each
/// MSG_PEEK continue where the previous one stopped. One entry per datagram
/// or record (stream sockets: one entry for all bytes).
fn peek_all(ctx: &FileCtx, copy: &Fd, ty: i32) -> Result<Vec<Vec<u8>>> {
    let old_off = getsockopt_int(copy, SOL_SOCKET, SO_PEEK_OFF).unwrap_or(-1);
    setsockopt_int(copy, SOL_SOCKET, SO_PEEK_OFF, 0)?;
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut ctl = vec![0u8; 4096];
    let r = (|| -> Result<()> {
        loop {
            let iov = [buf.as_mut_ptr() as u64, buf.len() as u64];
            let mut msg: [u64; 7] = [0, 0, iov.as_ptr() as u64, 1, ctl.as_mut_ptr() as u64, ctl.len() as u64, 0];
            let n = match unsafe { sys::raw(nr::RECVMSG, &[copy.raw() as u64, msg.as_mut_ptr() as u64, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC | 0x40000000]) } {
                Ok(n) => n as usize,
                Err(11) => return Ok(()),
                Err(4) => continue,
                Err(e) => return Err(Error::sys("peek of a unix socket queue", e)),
            };
            // control messages: SCM_RIGHTS would have installed descriptors here
            let clen = msg[5] as usize;
            let mut off = 0;
            let mut fds_in_flight = false;
            while off + 16 <= clen {
                let len = u64::from_le_bytes(ctl[off..off + 8].try_into().unwrap()) as usize;
                let level = i32::from_le_bytes(ctl[off + 8..off + 12].try_into().unwrap());
                let typ = i32::from_le_bytes(ctl[off + 12..off + 16].try_into().unwrap());
                if len < 16 {
                    break;
                }
                if level == SOL_SOCKET && typ == SCM_RIGHTS {
                    fds_in_flight = true;
                    let mut p = off + 16;
                    while p + 4 <= off + len {
                        drop(Fd(i32::from_le_bytes(ctl[p..p + 4].try_into().unwrap())));
                        p += 4;
                    }
                }
                off += (len + 7) & !7;
            }
            if fds_in_flight {
                return ctx.unsupported("unix socket with descriptors in flight (SCM_RIGHTS in its queue)");
            }
            let flags = msg[6];
            if n > buf.len() || flags & MSG_TRUNC != 0 {
                return ctx.unsupported("unix socket with a queued message larger than 1 MiB");
            }
            if n == 0 && ty == SOCK_STREAM {
                return Ok(());
            }
            if ty == SOCK_STREAM && !out.is_empty() {
                out[0].extend_from_slice(&buf[..n]);
            } else {
                out.push(buf[..n].to_vec());
            }
            if n == 0 {
                // a zero-length datagram does not move the peek offset: stop
                return Ok(());
            }
        }
    })();
    let _ = setsockopt_int(copy, SOL_SOCKET, SO_PEEK_OFF, old_off);
    r?;
    Ok(out)
}

pub fn describe(ctx: &FileCtx, copy: Fd, mut s: Json, ty: i32, ino: u64) -> Result<Json> {
    let what = format!("unix {} socket", type_name(ty));
    let local = sockname(&copy, false).map(|r| name_of(&r)).unwrap_or_default();
    if !local.is_empty() {
        s.set("local", Json::obj().with("path", base64::encode(&local)));
    }
    s.set("passcred", getsockopt_int(&copy, SOL_SOCKET, SO_PASSCRED).map(|v| v != 0).unwrap_or(false));
    let info = super::diag::unix_lookup(&copy, ino)?
        .ok_or_else(|| Error::new("EUNSUPPORTED", format!("fd {}: {} {} is not known to sock_diag, so it is not supported", ctx.fd, what, ctx.target)))?;
    let base = ctx.base.clone().with("kind", "sock_unix");
    match info.state {
        ST_LISTEN => {
            if local.is_empty() {
                return ctx.unsupported(&format!("listening {} without a name", what));
            }
            s.set("state", "listen").set("backlog", info.wqueue as u64);
            Ok(base.with("sock", s))
        }
        ST_ESTABLISHED if info.peer != 0 || ty != SOCK_DGRAM => {
            if info.peer != 0 {
                if !held_in_tree(info.peer) {
                    return ctx.unsupported(&format!("{} connected to a socket outside the dumped process tree (socket:[{}])", what, info.peer));
                }
                let back = super::diag::unix_lookup(&copy, info.peer)?.map(|i| i.peer).unwrap_or(0);
                if back != ino {
                    return ctx.unsupported(&format!("{} connected one way to socket:[{}] (not a pair)", what, info.peer));
                }
                s.set("peer_ino", info.peer);
            }
            let q = peek_all(ctx, &copy, ty)?;
            s.set("state", "connected");
            s.set("queue", q.iter().map(|d| Json::from(base64::encode(d))).collect::<Vec<_>>());
            Ok(base.with("sock", s))
        }
        _ => {
            // unconnected: bound (datagram server) or not bound at all
            let q = if ty == SOCK_DGRAM { peek_all(ctx, &copy, ty)? } else { Vec::new() };
            s.set("state", if local.is_empty() { "unbound" } else { "bound" });
            if !q.is_empty() {
                s.set("queue", q.iter().map(|d| Json::from(base64::encode(d))).collect::<Vec<_>>());
            }
            Ok(base.with("sock", s))
        }
    }
}

// ---- restore ----

/// Ends of socketpairs created for the first end seen, waiting for the
/// second: peer inode -> (the other end, a duplicate of the first end to
/// refill the second end's queue from).
static PENDING: Mutex<BTreeMap<u64, (i32, i32)>> = Mutex::new(BTreeMap::new());

fn queue_of(s: &Json) -> Result<Vec<Vec<u8>>> {
    s.arr_of("queue")
        .iter()
        .map(|q| q.as_str().and_then(base64::decode).ok_or_else(|| Error::new("EIMAGE", "unix socket queue in the image is malformed")))
        .collect()
}

/// Send `queue` from `from` so that it lands in the receive queue of its peer.
fn refill(from: &Fd, queue: &[Vec<u8>], ty: i32) -> Result<()> {
    let total: usize = queue.iter().map(|q| q.len()).sum();
    if queue.is_empty() {
        return Ok(());
    }
    let old = getsockopt_int(from, SOL_SOCKET, SO_SNDBUF).unwrap_or(0);
    grow_buffer(from, SO_SNDBUFFORCE, SO_SNDBUF, total + queue.len() * 1024);
    let r = (|| -> Result<()> {
        for q in queue {
            if ty == SOCK_STREAM {
                send_all(from, q, MSG_DONTWAIT, "refill of a unix socket queue")?;
            } else {
                sys::call("refill of a unix socket queue", snr::SENDTO, &[from.raw() as u64, q.as_ptr() as u64, q.len() as u64, MSG_DONTWAIT, 0, 0])?;
            }
        }
        Ok(())
    })();
    if old > 0 {
        let _ = setsockopt_int(from, SOL_SOCKET, SO_SNDBUFFORCE, old / 2);
    }
    r
}

fn dup(fd: &Fd) -> Result<Fd> {
    sys::call("dup", nr::FCNTL, &[fd.raw() as u64, 1030, 0]).map(|f| Fd(f as i32))
}

fn bind_name(fd: &Fd, name: &[u8]) -> Result<()> {
    if name.first() != Some(&0) {
        // A stale socket file of the dumped process: remove it, but only if it is a socket.
        let path = std::str::from_utf8(name).map_err(|_| Error::new("EIMAGE", "unix socket path is not UTF-8"))?;
        if let Ok(md) = std::fs::symlink_metadata(path) {
            if md.file_type().is_socket() {
                let _ = std::fs::remove_file(path);
            } else {
                return Err(Error::new("ESOCKET", format!("cannot bind unix socket {}: a file that is not a socket is in the way", path)));
            }
        }
    }
    let sa = sockaddr_un(name)?;
    sys::call(&format!("bind unix socket {}", name_text(name)), snr::BIND, &[fd.raw() as u64, sa.as_ptr() as u64, sa.len() as u64])
        .map(|_| ())
        .map_err(|e| Error { code: "ESOCKET", ..e })
}

pub fn open(s: &Json) -> Result<Fd> {
    let ty = s.u64_of("type").unwrap_or(1) as i32;
    let state = s.str_of("state").unwrap_or("");
    let name = match s.get("local").and_then(|l| l.str_of("path")) {
        Some(p) => base64::decode(p).ok_or_else(|| Error::new("EIMAGE", "unix socket name in the image is malformed"))?,
        None => Vec::new(),
    };
    let queue = queue_of(s)?;
    let fd = match state {
        "connected" => {
            let ino = s.u64_of("ino").unwrap_or(0);
            let peer = s.u64_of("peer_ino").unwrap_or(0);
            let waiting = PENDING.lock().map_err(|_| Error::new("EINTERNAL", "lock"))?.remove(&ino);
            match waiting {
                Some((mine, first_dup)) => {
                    let (mine, first) = (Fd(mine), Fd(first_dup));
                    refill(&first, &queue, ty)?;
                    mine
                }
                None => {
                    let mut sv = [0i32; 2];
                    sys::call("socketpair", snr::SOCKETPAIR, &[AF_UNIX as u64, ty as u64 | SOCK_CLOEXEC, 0, sv.as_mut_ptr() as u64])?;
                    let (mine, other) = (Fd(sv[0]), Fd(sv[1]));
                    refill(&other, &queue, ty)?;
                    if peer != 0 {
                        let d = dup(&mine)?;
                        PENDING.lock().map_err(|_| Error::new("EINTERNAL", "lock"))?.insert(peer, (other.into_raw(), d.into_raw()));
                    }
                    // peer == 0: the peer was closed; dropping `other` gives end-of-file after the queue
                    mine
                }
            }
        }
        "listen" | "bound" | "unbound" => {
            let fd = new_socket(AF_UNIX, ty, 0)?;
            if !name.is_empty() {
                bind_name(&fd, &name)?;
            }
            if state == "listen" {
                sys::call("listen", snr::LISTEN, &[fd.raw() as u64, s.u64_of("backlog").unwrap_or(128)])?;
            }
            if !queue.is_empty() && !name.is_empty() {
                let tmp = new_socket(AF_UNIX, ty, 0)?;
                let sa = sockaddr_un(&name)?;
                for q in &queue {
                    sys::call("refill of a unix socket queue", snr::SENDTO, &[tmp.raw() as u64, q.as_ptr() as u64, q.len() as u64, MSG_DONTWAIT, sa.as_ptr() as u64, sa.len() as u64])?;
                }
            }
            fd
        }
        st => return Err(Error::new("EIMAGE", format!("unix socket state {:?} is not known", st))),
    };
    if s.bool_of("passcred") {
        setsockopt_int(&fd, SOL_SOCKET, SO_PASSCRED, 1)?;
    }
    Ok(fd)
}
