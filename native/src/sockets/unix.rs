//! Unix sockets: listening (path or abstract name), bound datagram sockets,
//! connected pairs whose both ends are inside the dumped tree (recreated with
//! socketpair), each with the unread data of its receive queue and the
//! descriptors in flight with it (SCM_RIGHTS; described by files.rs).

use super::scm::{peek_at, send_with_fds, Guard, EFAULT};
use super::*;
use crate::base64;
use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;

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

/// One record of a receive queue: a datagram, or for a stream socket a run
/// of bytes; `fds` are copies (in phaul) of the descriptors in flight with
/// it. On a stream socket only a record with descriptors is a message of
/// its own: the reader's recvmsg stops at its end, and gets the
/// descriptors with its first byte.
struct Record {
    data: Vec<u8>,
    fds: Vec<Fd>,
}

/// Largest message (datagram, or part of a stream queue) read in one peek.
const MAX_RECORD: usize = 1 << 20;

/// Read the receive queue without consuming it: SO_PEEK_OFF makes each
/// MSG_PEEK continue where the previous one stopped.
fn peek_all(ctx: &FileCtx, copy: &Fd, ty: i32) -> Result<Vec<Record>> {
    let old_off = getsockopt_int(copy, SOL_SOCKET, SO_PEEK_OFF).unwrap_or(-1);
    let r = if ty == SOCK_STREAM { peek_stream(ctx, copy) } else { peek_datagrams(ctx, copy) };
    let _ = setsockopt_int(copy, SOL_SOCKET, SO_PEEK_OFF, old_off);
    let q = r?;
    // fdinfo counts the descriptors in the queue (Linux 5.x+). A peek
    // cannot see a zero-length datagram that an earlier peek saw (an
    // earlier dump of this process, say): its descriptors would be lost.
    let seen: usize = q.iter().map(|r| r.fds.len()).sum();
    if let Some(queued) = crate::anonfd::field(&ctx.info.raw, "scm_fds").and_then(|v| v.parse::<usize>().ok()) {
        if queued != seen {
            return ctx.unsupported(&format!(
                "unix socket whose queue holds {} descriptors in flight, of which only {} can be read without receiving them (a zero-length datagram seen by an earlier peek)",
                queued, seen
            ));
        }
    }
    Ok(q)
}

fn peek_failed(e: i32) -> Error {
    Error::sys("peek of a unix socket queue", e)
}

/// Datagrams and seqpackets: one peek, one message, with its descriptors.
fn peek_datagrams(ctx: &FileCtx, copy: &Fd) -> Result<Vec<Record>> {
    let mut out: Vec<Record> = Vec::new();
    let mut buf = vec![0u8; MAX_RECORD];
    let mut off = 0;
    loop {
        let p = match peek_at(copy, off, &[[buf.as_mut_ptr() as u64, buf.len() as u64]], MSG_TRUNC).map_err(peek_failed)? {
            Some(p) => p,
            None => return Ok(out),
        };
        if p.truncated_fds() {
            return ctx.unsupported("unix socket with a queued message carrying more descriptors than a peek can take");
        }
        if p.n > buf.len() || p.flags & MSG_TRUNC != 0 {
            return ctx.unsupported("unix socket with a queued message larger than 1 MiB");
        }
        if out.len() >= MAX_RECORD {
            return ctx.unsupported("unix socket with more than a million queued messages");
        }
        // A zero-length datagram leaves the offset where it is; the kernel
        // marks it peeked and steps over it on the next peek.
        off += p.n;
        out.push(Record { data: buf[..p.n].to_vec(), fds: p.fds });
    }
}

/// A stream queue: plain bytes run together (a reader cannot tell where one
/// send ended), but each message with descriptors is kept apart. A peek
/// that meets such a message stops at its end and returns its descriptors,
/// so where it ends is known; where it starts is found with `record_start`.
fn peek_stream(ctx: &FileCtx, copy: &Fd) -> Result<Vec<Record>> {
    let mut out: Vec<Record> = Vec::new();
    let mut buf = vec![0u8; MAX_RECORD];
    let mut guard = None;
    let mut off = 0;
    loop {
        let p = match peek_at(copy, off, &[[buf.as_mut_ptr() as u64, buf.len() as u64]], 0).map_err(peek_failed)? {
            Some(p) => p,
            None => return Ok(out),
        };
        if p.truncated_fds() {
            return ctx.unsupported("unix socket with a queued message carrying more descriptors than a peek can take");
        }
        if p.n == 0 {
            return Ok(out); // end-of-file: the peer is gone
        }
        if p.n < buf.len() && p.fds.is_empty() {
            push_plain(&mut out, &buf[..p.n]);
            off += p.n;
            continue;
        }
        // A full buffer may stop short of the message whose descriptors
        // came back (a peek that runs out of room looks ahead for them):
        // keep what lies before the message holding the last byte, and
        // peek again from there.
        let full = p.n == buf.len();
        let start = record_start(copy, off, p.n, &mut buf, &mut guard)?;
        if full {
            if start == 0 {
                return ctx.unsupported("unix socket with a queued message larger than 1 MiB");
            }
            push_plain(&mut out, &buf[..start]);
            off += start;
            continue;
        }
        push_plain(&mut out, &buf[..start]);
        out.push(Record { data: buf[start..p.n].to_vec(), fds: p.fds });
        off += p.n;
    }
}

fn push_plain(out: &mut Vec<Record>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    match out.last_mut() {
        Some(r) if r.fds.is_empty() => r.data.extend_from_slice(data),
        _ => out.push(Record { data: data.to_vec(), fds: Vec::new() }),
    }
}

/// Where the message holding byte `off + n - 1` of a stream queue starts,
/// relative to `off`. The peek copies message by message, and the one
/// message whose part reaches the unwritable guard byte fails as a whole:
/// the peek returns the bytes of the messages before it (EFAULT if none).
/// `buf` is overwritten with the same bytes; `guard` is made on first use.
fn record_start(copy: &Fd, off: usize, n: usize, buf: &mut [u8], guard: &mut Option<Guard>) -> Result<usize> {
    let guard = match guard {
        Some(g) => g,
        None => guard.insert(Guard::new()?),
    };
    let iov = [[buf.as_mut_ptr() as u64, (n - 1) as u64], [guard.addr(), 1]];
    match peek_at(copy, off, &iov, 0) {
        Ok(Some(p)) if p.n < n => Ok(p.n),
        Err(EFAULT) => Ok(0),
        Ok(_) => Err(Error::new("EINTERNAL", "a unix socket queue changed while it was read")),
        Err(e) => Err(peek_failed(e)),
    }
}

/// "queue" (base64 data of each record) and "in_flight" ({msg, files}: the
/// record's index and its descriptors, as slots of the dump's in-flight
/// list until files.rs turns them into file ids).
fn queue_json(ctx: &FileCtx, s: &mut Json, q: Vec<Record>) {
    let mut data = Vec::new();
    let mut fds = Vec::new();
    for (i, r) in q.into_iter().enumerate() {
        data.push(Json::from(base64::encode(&r.data)));
        if !r.fds.is_empty() {
            let slots: Vec<Json> = r.fds.into_iter().map(|f| Json::from(ctx.in_flight.take(f))).collect();
            fds.push(Json::obj().with("msg", i as u64).with("files", slots));
        }
    }
    if !data.is_empty() {
        s.set("queue", data);
    }
    if !fds.is_empty() {
        s.set("in_flight", fds);
    }
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
                // Whether the peer comes along (held in the tree, or in
                // flight in one of its queues) is checked once all are seen:
                // check_peers.
                let back = super::diag::unix_lookup(&copy, info.peer)?.map(|i| i.peer).unwrap_or(0);
                if back != ino {
                    return ctx.unsupported(&format!("{} connected one way to socket:[{}] (not a pair)", what, info.peer));
                }
                s.set("peer_ino", info.peer);
            }
            let q = peek_all(ctx, &copy, ty)?;
            s.set("state", "connected");
            queue_json(ctx, &mut s, q);
            Ok(base.with("sock", s))
        }
        _ => {
            // unconnected: bound (datagram server) or not bound at all
            let q = if ty == SOCK_DGRAM { peek_all(ctx, &copy, ty)? } else { Vec::new() };
            s.set("state", if local.is_empty() { "unbound" } else { "bound" });
            queue_json(ctx, &mut s, q);
            Ok(base.with("sock", s))
        }
    }
}

/// Every connected unix socket of a dump must have its peer dumped too:
/// held by a process of the tree or in flight in one of its queues.
/// `where_of`: where a file id was found, for the message.
pub fn check_peers(files: &[Json], where_of: &dyn Fn(u64) -> String) -> Result<()> {
    let dumped: std::collections::BTreeSet<u64> =
        files.iter().filter(|f| f.str_of("kind") == Some("sock_unix")).filter_map(|f| f.get("sock").and_then(|s| s.u64_of("ino"))).collect();
    for f in files.iter().filter(|f| f.str_of("kind") == Some("sock_unix")) {
        let s = match f.get("sock") {
            Some(s) => s,
            None => continue,
        };
        let peer = s.u64_of("peer_ino").unwrap_or(0);
        if peer != 0 && !dumped.contains(&peer) {
            let what = format!("unix {} socket", type_name(s.u64_of("type").unwrap_or(0) as i32));
            return Err(Error::new(
                "EUNSUPPORTED",
                format!("{}: {} connected to a socket outside the dumped process tree (socket:[{}]) is not supported", where_of(f.u64_of("id").unwrap_or(0)), what, peer),
            ));
        }
    }
    Ok(())
}

// ---- restore ----

/// Ends of socketpairs created for the first end seen, waiting for the
/// second: peer inode -> (the other end, a duplicate of the first end to
/// refill the second end's queue from).
static PENDING: Mutex<BTreeMap<u64, (i32, i32)>> = Mutex::new(BTreeMap::new());

/// A message of a queue in the image: its bytes and the file ids of the
/// descriptors in flight with it.
struct Msg {
    data: Vec<u8>,
    files: Vec<u64>,
}

fn queue_of(s: &Json) -> Result<Vec<Msg>> {
    let bad = || Error::new("EIMAGE", "unix socket queue in the image is malformed");
    let mut q = s
        .arr_of("queue")
        .iter()
        .map(|d| d.as_str().and_then(base64::decode).map(|data| Msg { data, files: Vec::new() }).ok_or_else(bad))
        .collect::<Result<Vec<Msg>>>()?;
    for e in s.arr_of("in_flight") {
        let m = e.u64_of("msg").and_then(|i| q.get_mut(i as usize)).ok_or_else(bad)?;
        m.files = e.arr_of("files").iter().map(Json::as_u64).collect::<Option<Vec<u64>>>().ok_or_else(bad)?;
    }
    Ok(q)
}

/// Queues whose messages carry descriptors: refilled by `refill_deferred`
/// once every file of the restore is open, as a message may carry any of
/// them (the socket itself included).
struct Deferred {
    from: Fd,
    /// sockaddr to send to (a bound datagram socket); None: the peer
    to: Option<Vec<u8>>,
    ty: i32,
    queue: Vec<Msg>,
}

static DEFERRED: Mutex<Vec<Deferred>> = Mutex::new(Vec::new());

/// Refill now, or after every file is open if a message carries descriptors.
fn refill_or_defer(from: &Fd, queue: Vec<Msg>, ty: i32, to: Option<Vec<u8>>) -> Result<()> {
    if queue.iter().all(|m| m.files.is_empty()) {
        return refill(from, &queue, ty, to.as_deref(), &BTreeMap::new());
    }
    let from = dup(from)?;
    DEFERRED.lock().map_err(|_| Error::new("EINTERNAL", "lock"))?.push(Deferred { from, to, ty, queue });
    Ok(())
}

/// The queues left by `open` for later, sent with their descriptors
/// (`by_id`: every file of the restore, opened in phaul).
pub fn refill_deferred(by_id: &BTreeMap<u64, Fd>) -> Result<()> {
    let all = std::mem::take(&mut *DEFERRED.lock().map_err(|_| Error::new("EINTERNAL", "lock"))?);
    for d in all {
        refill(&d.from, &d.queue, d.ty, d.to.as_deref(), by_id)?;
    }
    Ok(())
}

/// A restore that failed half-way: drop the queues not yet refilled.
pub fn abandon_deferred() {
    if let Ok(mut v) = DEFERRED.lock() {
        v.clear();
    }
}

const REFILL: &str = "refill of a unix socket queue";

/// Send `queue` from `from` so that it lands in the receive queue of its
/// peer (or of the socket named `to`), each message with its descriptors.
fn refill(from: &Fd, queue: &[Msg], ty: i32, to: Option<&[u8]>, files: &BTreeMap<u64, Fd>) -> Result<()> {
    if queue.is_empty() {
        return Ok(());
    }
    let total: usize = queue.iter().map(|m| m.data.len()).sum();
    let old = getsockopt_int(from, SOL_SOCKET, SO_SNDBUF).unwrap_or(0);
    grow_buffer(from, SO_SNDBUFFORCE, SO_SNDBUF, total + queue.len() * 1024);
    let r = (|| -> Result<()> {
        for m in queue {
            let fds = m
                .files
                .iter()
                .map(|id| files.get(id).map(Fd::raw).ok_or_else(|| Error::new("EIMAGE", format!("a unix socket message carries file {}, which the image does not have", id))))
                .collect::<Result<Vec<i32>>>()?;
            if ty == SOCK_STREAM {
                // The descriptors go with the first bytes; one sendmsg is
                // one message for the reader.
                let sent = if fds.is_empty() { 0 } else { send_with_fds(from, &m.data, &fds, None, REFILL)? };
                send_all(from, &m.data[sent..], MSG_DONTWAIT, REFILL)?;
            } else if send_with_fds(from, &m.data, &fds, to, REFILL)? != m.data.len() {
                return Err(Error::new("ESOCKET", "refill of a unix socket queue: a datagram was cut short"));
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
                    refill_or_defer(&first, queue, ty, None)?;
                    mine
                }
                None => {
                    let mut sv = [0i32; 2];
                    sys::call("socketpair", snr::SOCKETPAIR, &[AF_UNIX as u64, ty as u64 | SOCK_CLOEXEC, 0, sv.as_mut_ptr() as u64])?;
                    let (mine, other) = (Fd(sv[0]), Fd(sv[1]));
                    refill_or_defer(&other, queue, ty, None)?;
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
                refill_or_defer(&tmp, queue, ty, Some(sockaddr_un(&name)?))?;
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
