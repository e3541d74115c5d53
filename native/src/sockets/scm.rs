//! Messages with descriptors (SCM_RIGHTS) on unix sockets: peeking a queue
//! at a byte offset, which installs fresh copies of the descriptors a
//! message carries into phaul's own table, and sending data with
//! descriptors again.

use super::*;

const SCM_RIGHTS: i32 = 1;
/// SO_PASSPIDFD (Linux 6.5+) attaches a pidfd of the sender to every read.
const SCM_PIDFD: i32 = 4;
const MSG_CTRUNC: u64 = 8;
const MSG_CMSG_CLOEXEC: u64 = 0x4000_0000;
const EAGAIN: i32 = 11;
const EINTR: i32 = 4;
pub(crate) const EFAULT: i32 = 14;
/// Room for SCM_MAX_FD (253) descriptors and any credentials next to them.
const CTL_LEN: usize = 4096;
/// sizeof(struct sockaddr_un)
const NAME_LEN: usize = 110;

/// What one MSG_PEEK returned.
pub(crate) struct Peeked {
    pub n: usize,
    /// Copies of the descriptors in flight with the message, in its order.
    pub fds: Vec<Fd>,
    /// msg_flags (MSG_TRUNC...)
    pub flags: u64,
    /// msg_name: the address of the socket that sent the message (empty
    /// when it has none).
    pub name: Vec<u8>,
}

/// MSG_PEEK from byte `off` of the receive queue (SO_PEEK_OFF) into the
/// buffers `iov` ([address, length] pairs). Ok(None): nothing queued there.
/// Errors are errnos: EFAULT is meaningful to the caller (a buffer that
/// cannot be written stops the copy before the message that reaches it).
pub(crate) fn peek_at(sock: &Fd, off: usize, iov: &[[u64; 2]], extra_flags: u64) -> std::result::Result<Option<Peeked>, i32> {
    setsockopt_int(sock, SOL_SOCKET, SO_PEEK_OFF, off as i32).map_err(|e| if e.errno != 0 { e.errno } else { 22 })?;
    let mut ctl = vec![0u8; CTL_LEN];
    let mut name = [0u8; NAME_LEN];
    loop {
        let mut msg: [u64; 7] = [name.as_mut_ptr() as u64, NAME_LEN as u64, iov.as_ptr() as u64, iov.len() as u64, ctl.as_mut_ptr() as u64, ctl.len() as u64, 0];
        let r = unsafe { sys::raw(nr::RECVMSG, &[sock.raw() as u64, msg.as_mut_ptr() as u64, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC | extra_flags]) };
        match r {
            Ok(n) => {
                let fds = take_fds(&ctl[..(msg[5] as usize).min(ctl.len())]);
                let name_len = (msg[1] as u32 as usize).min(NAME_LEN);
                return Ok(Some(Peeked { n: n as usize, fds, flags: msg[6], name: name[..name_len].to_vec() }));
            }
            Err(EAGAIN) => return Ok(None),
            Err(EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

impl Peeked {
    /// The kernel had more descriptors than room to install them.
    pub fn truncated_fds(&self) -> bool {
        self.flags & MSG_CTRUNC != 0
    }
}

/// The descriptors the control messages installed: SCM_RIGHTS ones are
/// kept, a sender's pidfd (SCM_PIDFD) is closed at once.
fn take_fds(ctl: &[u8]) -> Vec<Fd> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= ctl.len() {
        let len = u64::from_le_bytes(ctl[off..off + 8].try_into().unwrap_or([0; 8])) as usize;
        let level = i32::from_le_bytes(ctl[off + 8..off + 12].try_into().unwrap_or([0; 4]));
        let typ = i32::from_le_bytes(ctl[off + 12..off + 16].try_into().unwrap_or([0; 4]));
        if len < 16 || off + len > ctl.len() {
            break;
        }
        if level == SOL_SOCKET && (typ == SCM_RIGHTS || typ == SCM_PIDFD) {
            let mut p = off + 16;
            while p + 4 <= off + len {
                let fd = Fd(i32::from_le_bytes(ctl[p..p + 4].try_into().unwrap_or([0xff; 4])));
                if typ == SCM_RIGHTS {
                    out.push(fd);
                }
                p += 4;
            }
        }
        off += (len + 7) & !7;
    }
    out
}

/// One page phaul can never write: the last byte of a peek buffer placed on
/// it makes the copy fail at the message holding that byte.
pub(crate) struct Guard(u64);

impl Guard {
    pub fn new() -> Result<Guard> {
        const PROT_NONE: u64 = 0;
        const MAP_PRIVATE_ANON: u64 = 0x02 | 0x20;
        let a = sys::call("mmap of a guard page", nr::MMAP, &[0, 4096, PROT_NONE, MAP_PRIVATE_ANON, u64::MAX, 0])?;
        Ok(Guard(a as u64))
    }
    pub fn addr(&self) -> u64 {
        self.0
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = unsafe { sys::raw(nr::MUNMAP, &[self.0, 4096]) };
    }
}

/// sendmsg of `data` with `fds` attached (none: a plain message), to `to`
/// (a sockaddr) or to the connected peer. Returns the bytes sent.
pub(crate) fn send_with_fds(sock: &Fd, data: &[u8], fds: &[i32], to: Option<&[u8]>, what: &str) -> Result<usize> {
    let iov = [data.as_ptr() as u64, data.len() as u64];
    let mut ctl = Vec::new();
    if !fds.is_empty() {
        let len = 16 + 4 * fds.len();
        ctl.extend_from_slice(&(len as u64).to_le_bytes());
        ctl.extend_from_slice(&SOL_SOCKET.to_le_bytes());
        ctl.extend_from_slice(&SCM_RIGHTS.to_le_bytes());
        for f in fds {
            ctl.extend_from_slice(&f.to_le_bytes());
        }
        ctl.resize((len + 7) & !7, 0);
    }
    let (name, name_len) = match to {
        Some(a) => (a.as_ptr() as u64, a.len() as u64),
        None => (0, 0),
    };
    let msg: [u64; 7] = [name, name_len, iov.as_ptr() as u64, 1, if ctl.is_empty() { 0 } else { ctl.as_ptr() as u64 }, ctl.len() as u64, 0];
    loop {
        match unsafe { sys::raw(nr::SENDMSG, &[sock.raw() as u64, msg.as_ptr() as u64, MSG_DONTWAIT]) } {
            Ok(n) => return Ok(n as usize),
            Err(EINTR) => continue,
            Err(e) => return Err(Error::sys(what, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(ty: i32) -> (Fd, Fd) {
        let mut sv = [0i32; 2];
        sys::call("socketpair", snr::SOCKETPAIR, &[AF_UNIX as u64, ty as u64 | SOCK_CLOEXEC, 0, sv.as_mut_ptr() as u64]).expect("socketpair");
        (Fd(sv[0]), Fd(sv[1]))
    }

    fn eventfd() -> Fd {
        Fd(sys::call("eventfd2", 290, &[0, 0o2000000]).expect("eventfd") as i32)
    }

    // The kernel facts unix.rs builds on, for a stream queue
    // "abc" "def" "gh"+fd "ij": a peek runs over plain messages and stops
    // at the end of the first one with descriptors; a peek that fills its
    // buffer early still reports the descriptors further on; a buffer whose
    // last byte cannot be written stops before the message holding it.
    #[test]
    fn stream_peek_boundaries() {
        let (a, b) = pair(SOCK_STREAM);
        let e = eventfd();
        for (d, fds) in [(&b"abc"[..], vec![]), (b"def", vec![]), (b"gh", vec![e.raw()]), (b"ij", vec![])] {
            assert_eq!(send_with_fds(&a, d, &fds, None, "send").expect("send"), d.len());
        }
        let mut buf = [0u8; 64];
        let p = peek_at(&b, 0, &[[buf.as_mut_ptr() as u64, 64]], 0).expect("peek").expect("queued");
        assert_eq!((p.n, p.fds.len()), (8, 1));
        assert_eq!(&buf[..8], b"abcdefgh");
        let p = peek_at(&b, 0, &[[buf.as_mut_ptr() as u64, 1]], 0).expect("peek").expect("queued");
        assert_eq!((p.n, p.fds.len()), (1, 1), "a short peek looks ahead for descriptors");
        let g = Guard::new().expect("guard");
        let p = peek_at(&b, 0, &[[buf.as_mut_ptr() as u64, 7], [g.addr(), 1]], 0).expect("peek").expect("queued");
        assert_eq!((p.n, p.fds.len()), (6, 0), "the message with descriptors starts at 6");
        assert_eq!(peek_at(&b, 6, &[[buf.as_mut_ptr() as u64, 1], [g.addr(), 1]], 0).err(), Some(EFAULT));
        let p = peek_at(&b, 8, &[[buf.as_mut_ptr() as u64, 64]], 0).expect("peek").expect("queued");
        assert_eq!((p.n, p.fds.len()), (2, 0));
        assert!(peek_at(&b, 10, &[[buf.as_mut_ptr() as u64, 64]], 0).expect("peek").is_none());
    }

    // Datagrams: one peek, one message; a zero-length one is seen once at
    // its offset and stepped over by the next peek.
    #[test]
    fn datagram_peek_walk() {
        let (a, b) = pair(SOCK_DGRAM);
        let e = eventfd();
        for (d, fds) in [(&b"one"[..], vec![]), (b"", vec![e.raw(), e.raw()]), (b"two", vec![e.raw()])] {
            send_with_fds(&a, d, &fds, None, "send").expect("send");
        }
        let mut buf = [0u8; 64];
        let mut off = 0;
        let mut seen = Vec::new();
        while let Some(p) = peek_at(&b, off, &[[buf.as_mut_ptr() as u64, 64]], MSG_TRUNC).expect("peek") {
            seen.push((buf[..p.n].to_vec(), p.fds.len()));
            off += p.n;
            assert!(seen.len() < 10);
        }
        assert_eq!(seen, vec![(b"one".to_vec(), 0), (Vec::new(), 2), (b"two".to_vec(), 1)]);
    }

    // A peek names each datagram's sender (msg_name), or none.
    #[test]
    fn datagram_peek_sender() {
        let sock = |name: Option<&[u8]>| {
            let s = new_socket(AF_UNIX, SOCK_DGRAM, 0).expect("socket");
            if let Some(n) = name {
                let sa = super::super::unixname::sockaddr_un(n).expect("name");
                sys::call("bind", snr::BIND, &[s.raw() as u64, sa.as_ptr() as u64, sa.len() as u64]).expect("bind");
            }
            s
        };
        let tag = format!("phaul-test-peek-{}", sys::getpid());
        let (rn, sn) = ([b"\0r-", tag.as_bytes()].concat(), [b"\0s-", tag.as_bytes()].concat());
        let (r, s, anon) = (sock(Some(&rn)), sock(Some(&sn)), sock(None));
        let to = super::super::unixname::sockaddr_un(&rn).expect("name");
        send_with_fds(&s, b"a", &[], Some(&to), "send").expect("send");
        send_with_fds(&anon, b"b", &[], Some(&to), "send").expect("send");
        let mut buf = [0u8; 8];
        let p = peek_at(&r, 0, &[[buf.as_mut_ptr() as u64, 8]], MSG_TRUNC).expect("peek").expect("queued");
        assert_eq!(super::super::unixname::name_of(&p.name), sn);
        let p = peek_at(&r, 1, &[[buf.as_mut_ptr() as u64, 8]], MSG_TRUNC).expect("peek").expect("queued");
        assert!(p.name.is_empty());
    }
}
