//! Unix sockets: listening (path or abstract name), bound datagram sockets,
//! connected pairs whose both ends are inside the dumped tree (recreated with
//! socketpair), each with the unread data of its receive queue and the
//! descriptors in flight with it (SCM_RIGHTS; described by files.rs).

use super::scm::{peek_at, send_with_fds, Guard, EFAULT};
use super::unixname::{self, is_abstract, name_of, name_text, Place, Reach};
use super::*;
use crate::base64;
use std::collections::BTreeMap;

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

/// One record of a receive queue: a datagram, or for a stream socket a run
/// of bytes; `fds` are copies (in phaul) of the descriptors in flight with
/// it. On a stream socket only a record with descriptors is a message of
/// its own: the reader's recvmsg stops at its end, and gets the
/// descriptors with its first byte.
struct Record {
    data: Vec<u8>,
    fds: Vec<Fd>,
    /// A datagram's sender address (sun_path bytes), empty if it had none.
    from: Vec<u8>,
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
        out.push(Record { data: buf[..p.n].to_vec(), fds: p.fds, from: name_of(&p.name) });
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
        out.push(Record { data: buf[start..p.n].to_vec(), fds: p.fds, from: Vec::new() });
        off += p.n;
    }
}

fn push_plain(out: &mut Vec<Record>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    match out.last_mut() {
        Some(r) if r.fds.is_empty() => r.data.extend_from_slice(data),
        _ => out.push(Record { data: data.to_vec(), fds: Vec::new(), from: Vec::new() }),
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

/// "queue" (base64 data of each record), "in_flight" ({msg, files}: the
/// record's index and its descriptors, as slots of the dump's in-flight
/// list until files.rs turns them into file ids) and, for a socket that
/// takes datagrams from anyone (`senders`), "senders" ({msg, path}: the
/// address of a datagram's sender; `held_by`: inode of the socket bound to
/// it, where that is asked).
fn queue_json(ctx: &FileCtx, s: &mut Json, q: Vec<Record>, senders: bool, held_by: &dyn Fn(&[u8]) -> u64) {
    let mut data = Vec::new();
    let mut fds = Vec::new();
    let mut from = Vec::new();
    for (i, r) in q.into_iter().enumerate() {
        data.push(Json::from(base64::encode(&r.data)));
        if !r.fds.is_empty() {
            let slots: Vec<Json> = r.fds.into_iter().map(|f| Json::from(ctx.in_flight.take(f))).collect();
            fds.push(Json::obj().with("msg", i as u64).with("files", slots));
        }
        if senders && !r.from.is_empty() {
            let mut e = Json::obj().with("msg", i as u64).with("path", base64::encode(&r.from));
            let holder = held_by(&r.from);
            if holder != 0 {
                e.set("held_by", holder);
            }
            from.push(e);
        }
    }
    if !data.is_empty() {
        s.set("queue", data);
    }
    if !fds.is_empty() {
        s.set("in_flight", fds);
    }
    if !from.is_empty() {
        s.set("senders", from);
    }
}

/// Which socket holds each abstract name the datagrams of `q` came from,
/// when the receiver's own name is abstract too: a temporary sender bound
/// to such a name at restore can reach it only from this network namespace,
/// where the name must then be free (see `check_peers`).
fn abstract_holders(copy: &Fd, local: &[u8], q: &[Record]) -> Result<BTreeMap<Vec<u8>, u64>> {
    let wanted = is_abstract(local) && q.iter().any(|r| is_abstract(&r.from));
    if !wanted {
        return Ok(BTreeMap::new());
    }
    Ok(super::diag::unix_names(copy)?.into_iter().filter(|(_, n)| is_abstract(n)).map(|(ino, n)| (n, ino)).collect())
}

pub fn describe(ctx: &FileCtx, copy: Fd, mut s: Json, ty: i32, ino: u64) -> Result<Json> {
    let what = format!("unix {} socket", type_name(ty));
    let local = sockname(&copy, false).map(|r| name_of(&r)).unwrap_or_default();
    s.set("passcred", getsockopt_int(&copy, SOL_SOCKET, SO_PASSCRED).map(|v| v != 0).unwrap_or(false));
    let info = super::diag::unix_lookup(&copy, ino)?
        .ok_or_else(|| Error::new("EUNSUPPORTED", format!("fd {}: {} {} is not known to sock_diag, so it is not supported", ctx.fd, what, ctx.target)))?;
    if !local.is_empty() {
        s.set("local", Json::obj().with("path", base64::encode(&local)));
        match unixname::locate(ctx.pid, &local, info.vfs) {
            Place::Here => {}
            Place::From(dir) => {
                s.set("bind_dir", dir);
            }
            Place::Unlinked => {
                s.set("unlinked", true);
            }
        }
    }
    if info.shutdown != 0 {
        s.set("shutdown", info.shutdown);
    }
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
            // The pair comes back from socketpair, nameless: its senders too.
            queue_json(ctx, &mut s, q, false, &|_| 0);
            Ok(base.with("sock", s))
        }
        _ => {
            // unconnected: bound (datagram server) or not bound at all
            let q = if ty == SOCK_DGRAM { peek_all(ctx, &copy, ty)? } else { Vec::new() };
            s.set("state", if local.is_empty() { "unbound" } else { "bound" });
            let holders = abstract_holders(&copy, &local, &q)?;
            queue_json(ctx, &mut s, q, true, &|n| holders.get(n).copied().unwrap_or(0));
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
        // An abstract sender's name held outside the tree stays taken: a
        // temporary socket could not take it to send the datagrams again,
        // and an abstract receiver is reached from this namespace only.
        for e in s.arr_of("senders") {
            let holder = e.u64_of("held_by").unwrap_or(0);
            if holder != 0 && !dumped.contains(&holder) {
                let name = |v: Option<&Json>| v.and_then(|p| p.as_str()).and_then(base64::decode).map(|p| name_text(&p)).unwrap_or_default();
                return Err(Error::new(
                    "EUNSUPPORTED",
                    format!(
                        "{}: unix datagram socket {} holds datagrams from {}, a name held by socket:[{}] outside the dumped process tree: restored, they could not carry that sender address",
                        where_of(f.u64_of("id").unwrap_or(0)),
                        name(s.get("local").and_then(|l| l.get("path"))),
                        name(e.get("path")),
                        holder
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// What the dump tells the user of: a relative name whose file is not in
/// the process's working directory. Taken as removed, the socket keeps its
/// name and gets no file; if the file lives on in a directory the process
/// has left, it no longer leads to the socket.
pub fn warnings(files: &[Json], where_of: &dyn Fn(u64) -> String) -> Vec<String> {
    let mut out = Vec::new();
    for f in files.iter().filter(|f| f.str_of("kind") == Some("sock_unix")) {
        let s = match f.get("sock") {
            Some(s) if s.bool_of("unlinked") => s,
            _ => continue,
        };
        let name = s.get("local").and_then(|l| l.str_of("path")).and_then(base64::decode).unwrap_or_default();
        if !name.is_empty() && name[0] != b'/' {
            out.push(format!(
                "{}: unix socket bound to the relative name {} has no such file in its working directory; it is restored with that name and no file (a file of it left in another directory no longer leads to it)",
                where_of(f.u64_of("id").unwrap_or(0)),
                name_text(&name)
            ));
        }
    }
    out
}

// ---- restore ----

/// Ends of socketpairs created for the first end seen, waiting for the
/// second: peer inode -> (the other end, a duplicate of the first end to
/// refill the second end's queue from).
static PENDING: Mutex<BTreeMap<u64, (i32, i32)>> = Mutex::new(BTreeMap::new());

/// A message of a queue in the image: its bytes, the file ids of the
/// descriptors in flight with it, and its sender's address (a datagram's).
struct Msg {
    data: Vec<u8>,
    files: Vec<u64>,
    from: Vec<u8>,
}

fn queue_of(s: &Json) -> Result<Vec<Msg>> {
    let bad = || Error::new("EIMAGE", "unix socket queue in the image is malformed");
    let mut q = s
        .arr_of("queue")
        .iter()
        .map(|d| d.as_str().and_then(base64::decode).map(|data| Msg { data, files: Vec::new(), from: Vec::new() }).ok_or_else(bad))
        .collect::<Result<Vec<Msg>>>()?;
    for e in s.arr_of("in_flight") {
        let m = e.u64_of("msg").and_then(|i| q.get_mut(i as usize)).ok_or_else(bad)?;
        m.files = e.arr_of("files").iter().map(Json::as_u64).collect::<Option<Vec<u64>>>().ok_or_else(bad)?;
    }
    for e in s.arr_of("senders") {
        let m = e.u64_of("msg").and_then(|i| q.get_mut(i as usize)).ok_or_else(bad)?;
        m.from = e.str_of("path").and_then(base64::decode).ok_or_else(bad)?;
    }
    Ok(q)
}

/// Queues whose messages carry descriptors or came from a named sender:
/// refilled by `refill_deferred` once every file of the restore is open, as
/// a message may carry any of them (the socket itself included), and its
/// sender may be any socket restored.
struct Deferred {
    from: Fd,
    /// the bound datagram socket to send to; None: the peer
    to: Option<Reach>,
    ty: i32,
    queue: Vec<Msg>,
}

static DEFERRED: Mutex<Vec<Deferred>> = Mutex::new(Vec::new());

/// Datagram sockets restored bound to a name, by name: datagrams they had
/// sent and that wait in a queue are sent again through them, so they keep
/// their sender address and are charged to their sender.
static NAMED: Mutex<BTreeMap<Vec<u8>, Fd>> = Mutex::new(BTreeMap::new());

/// Refill now, or after every file is open if a message carries
/// descriptors or has a sender.
fn refill_or_defer(from: &Fd, queue: Vec<Msg>, ty: i32, to: Option<Reach>) -> Result<()> {
    if queue.iter().all(|m| m.files.is_empty() && m.from.is_empty()) {
        return refill(from, &queue, ty, to.as_ref(), &BTreeMap::new());
    }
    let from = dup(from)?;
    DEFERRED.lock().map_err(|_| Error::new("EINTERNAL", "lock"))?.push(Deferred { from, to, ty, queue });
    Ok(())
}

/// The queues left by `open` for later, sent with their descriptors
/// (`by_id`: every file of the restore, opened in phaul) from their senders.
pub fn refill_deferred(by_id: &BTreeMap<u64, Fd>) -> Result<()> {
    let all = std::mem::take(&mut *DEFERRED.lock().map_err(|_| Error::new("EINTERNAL", "lock"))?);
    let r = all.iter().try_for_each(|d| refill(&d.from, &d.queue, d.ty, d.to.as_ref(), by_id));
    abandon_deferred();
    r
}

/// A restore that failed half-way (or is done): drop the queues not yet
/// refilled and the senders kept for them.
pub fn abandon_deferred() {
    if let Ok(mut v) = DEFERRED.lock() {
        v.clear();
    }
    if let Ok(mut v) = NAMED.lock() {
        v.clear();
    }
}

const REFILL: &str = "refill of a unix socket queue";

/// The socket to send datagrams from `name` through: the restored socket
/// bound to it, or a temporary one (unixname::temp_sender).
fn sender_for(name: &[u8], ty: i32, to: Option<&Reach>) -> Result<Fd> {
    if let Some(s) = NAMED.lock().map_err(|_| Error::new("EINTERNAL", "lock"))?.get(name) {
        return dup(s);
    }
    let to = to.ok_or_else(|| Error::new("EIMAGE", "a unix socket message has a sender but no destination"))?;
    unixname::temp_sender(name, ty, to)
}

/// Send `queue` from `from` so that it lands in the receive queue of its
/// peer (or of the socket `to`), each message with its descriptors, a
/// datagram with a sender from a socket bound to the sender's name.
fn refill(from: &Fd, queue: &[Msg], ty: i32, to: Option<&Reach>, files: &BTreeMap<u64, Fd>) -> Result<()> {
    if queue.is_empty() {
        return Ok(());
    }
    let to_addr = match to {
        Some(r) => Some(r.addr(REFILL)?),
        None => None,
    };
    // Bytes and messages each sender sends, to make room in its buffer.
    let mut load: BTreeMap<&[u8], usize> = BTreeMap::new();
    for m in queue {
        *load.entry(&m.from[..]).or_default() += m.data.len() + 1024;
    }
    let mut senders: BTreeMap<&[u8], Fd> = BTreeMap::new();
    for name in load.keys().filter(|n| !n.is_empty()) {
        senders.insert(name, sender_for(name, ty, to)?);
    }
    let sender = |name: &[u8]| pick(&senders, from, name);
    let old: Vec<(&Fd, i32)> = load.keys().map(|n| (sender(n), getsockopt_int(sender(n), SOL_SOCKET, SO_SNDBUF).unwrap_or(0))).collect();
    for (n, bytes) in &load {
        grow_buffer(sender(n), SO_SNDBUFFORCE, SO_SNDBUF, *bytes);
    }
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
            } else if send_with_fds(sender(&m.from), &m.data, &fds, to_addr, REFILL)? != m.data.len() {
                return Err(Error::new("ESOCKET", "refill of a unix socket queue: a datagram was cut short"));
            }
        }
        Ok(())
    })();
    for (fd, v) in old {
        if v > 0 {
            let _ = setsockopt_int(fd, SOL_SOCKET, SO_SNDBUFFORCE, v / 2);
        }
    }
    r
}

fn pick<'a>(senders: &'a BTreeMap<&[u8], Fd>, from: &'a Fd, name: &[u8]) -> &'a Fd {
    senders.get(name).unwrap_or(from)
}

pub(super) fn dup(fd: &Fd) -> Result<Fd> {
    sys::call("dup", nr::FCNTL, &[fd.raw() as u64, 1030, 0]).map(|f| Fd(f as i32))
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
        // A datagram socket without a name receives only from the peer of
        // its pair: with a queue, that peer has since closed. A new pair
        // whose other end sends the queue and closes is the same again.
        "unbound" if ty == SOCK_DGRAM && name.is_empty() && !queue.is_empty() => {
            let mut sv = [0i32; 2];
            sys::call("socketpair", snr::SOCKETPAIR, &[AF_UNIX as u64, ty as u64 | SOCK_CLOEXEC, 0, sv.as_mut_ptr() as u64])?;
            let (mine, other) = (Fd(sv[0]), Fd(sv[1]));
            refill_or_defer(&other, queue, ty, None)?;
            mine
        }
        "listen" | "bound" | "unbound" => {
            let fd = new_socket(AF_UNIX, ty, 0)?;
            let reach = if name.is_empty() { None } else { Some(unixname::bind(&fd, &name, s)?) };
            if state == "listen" {
                sys::call("listen", snr::LISTEN, &[fd.raw() as u64, s.u64_of("backlog").unwrap_or(128)])?;
            }
            if state == "bound" && ty == SOCK_DGRAM {
                NAMED.lock().map_err(|_| Error::new("EINTERNAL", "lock"))?.entry(name.clone()).or_insert(dup(&fd)?);
            }
            if let (false, Some(reach)) = (queue.is_empty(), reach) {
                let tmp = new_socket(AF_UNIX, ty, 0)?;
                refill_or_defer(&tmp, queue, ty, Some(reach))?;
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
