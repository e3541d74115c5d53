//! Pseudo-terminal pairs a process tree opened for itself (a master from
//! /dev/ptmx and slaves /dev/pts/N of the same pair).
//!
//! Reopening /dev/ptmx by path would create a new, unrelated pair, so a pair
//! whose master is in the tree is dumped as one object: the master's file
//! entry carries the pair's state (termios, window size, lock, packet mode,
//! controlling-terminal session and foreground group) and a `pty_id`; every
//! slave description of the pair carries the same `pty_id`. On restore phaul
//! opens one new pair per `pty_id`, applies that state, opens each slave
//! description from the new master with TIOCGPTPEER, and the session leader
//! makes the slave its controlling terminal again. The new pair may get
//! another index (another /dev/pts/N): see docs/limitations.md.
//!
//! A slave whose master is outside the tree (the terminal the program was
//! started from) stays an ordinary character device reopened by path.
//!
//! All dump-time ioctls run in phaul on a copy of the descriptor taken with
//! pidfd_getfd: termios and window size ioctls on a master act on its slave,
//! and none of them depends on the calling process.

use crate::files::FileCtx;
use crate::inject::Injector;
use crate::json::Json;
use crate::sys::{self, nr, Error, Fd, Pid, Result};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

const TCGETS2: u64 = 0x802c_542a;
const TCSETS2: u64 = 0x402c_542b;
const TIOCGWINSZ: u64 = 0x5413;
const TIOCSWINSZ: u64 = 0x5414;
const TIOCSCTTY: u64 = 0x540e;
const TIOCGPGRP: u64 = 0x540f;
const TIOCSPGRP: u64 = 0x5410;
const FIONREAD: u64 = 0x541b;
const TIOCPKT: u64 = 0x5420;
const TIOCGSID: u64 = 0x5429;
const TIOCGPTN: u64 = 0x8004_5430;
const TIOCSPTLCK: u64 = 0x4004_5431;
const TIOCGPKT: u64 = 0x8004_5438;
const TIOCGPTLCK: u64 = 0x8004_5439;
const TIOCGPTPEER: u64 = 0x5441;

use crate::sys::{O_ACCMODE, O_CLOEXEC, O_NOCTTY, O_NONBLOCK, O_PATH, O_RDWR};

/// struct termios2: four u32 flag words, c_line, c_cc[19], two u32 speeds.
const TERMIOS2_LEN: usize = 44;
const NCCS: usize = 19;

fn major(rdev: u64) -> u64 {
    ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)
}

fn minor(rdev: u64) -> u64 {
    (rdev & 0xff) | ((rdev >> 12) & !0xff)
}

/// /dev/ptmx (or a devpts instance's own ptmx node): a new master each open.
pub fn is_ptmx(rdev: u64) -> bool {
    major(rdev) == 5 && minor(rdev) == 2
}

/// A /dev/pts/N slave (Unix98 pty slaves use majors 136-143).
pub fn is_pts(rdev: u64) -> bool {
    (136..=143).contains(&major(rdev))
}

fn ioctl(fd: &Fd, what: &str, req: u64, arg: u64) -> Result<i64> {
    sys::call(what, nr::IOCTL, &[fd.raw() as u64, req, arg])
}

fn ioctl_int(fd: &Fd, what: &str, req: u64) -> Result<i32> {
    let mut v: i32 = 0;
    ioctl(fd, what, req, &mut v as *mut i32 as u64)?;
    Ok(v)
}

/// Bytes waiting to be read on this side of the pair.
fn queued(fd: &Fd) -> u64 {
    ioctl_int(fd, "FIONREAD", FIONREAD).map(|n| n.max(0) as u64).unwrap_or(0)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or([0; 4]))
}

fn termios_to_json(b: &[u8; TERMIOS2_LEN]) -> Json {
    let cc: Vec<Json> = b[17..17 + NCCS].iter().map(|&c| Json::from(c as u64)).collect();
    Json::obj()
        .with("iflag", u32_at(b, 0) as u64)
        .with("oflag", u32_at(b, 4) as u64)
        .with("cflag", u32_at(b, 8) as u64)
        .with("lflag", u32_at(b, 12) as u64)
        .with("line", b[16] as u64)
        .with("cc", cc)
        .with("ispeed", u32_at(b, 36) as u64)
        .with("ospeed", u32_at(b, 40) as u64)
}

fn termios_from_json(j: &Json) -> Result<[u8; TERMIOS2_LEN]> {
    let bad = || Error::new("EIMAGE", "the termios of a pseudo-terminal in the image is malformed");
    let mut b = [0u8; TERMIOS2_LEN];
    for (off, k) in [(0, "iflag"), (4, "oflag"), (8, "cflag"), (12, "lflag"), (36, "ispeed"), (40, "ospeed")] {
        let v = j.u64_of(k).filter(|&v| v <= u32::MAX as u64).ok_or_else(bad)? as u32;
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    b[16] = j.u64_of("line").unwrap_or(0) as u8;
    let cc = j.arr_of("cc");
    if cc.len() != NCCS {
        return Err(bad());
    }
    for (i, c) in cc.iter().enumerate() {
        b[17 + i] = c.as_u64().filter(|&v| v <= 255).ok_or_else(bad)? as u8;
    }
    Ok(b)
}

fn winsize_to_json(w: &[u16; 4]) -> Json {
    Json::obj().with("row", w[0] as u64).with("col", w[1] as u64).with("xpixel", w[2] as u64).with("ypixel", w[3] as u64)
}

fn winsize_from_json(j: &Json) -> [u16; 4] {
    let f = |k| j.u64_of(k).unwrap_or(0).min(u16::MAX as u64) as u16;
    [f("row"), f("col"), f("xpixel"), f("ypixel")]
}

/// Has the slave side been closed by everyone after being opened (reads on
/// the master then fail with EIO, poll reports POLLHUP)?
fn slave_hung_up(master: &Fd) -> bool {
    let mut pfd = [sys::PollFd::new(master.raw(), 0)];
    sys::poll(&mut pfd, 0);
    pfd[0].revents & sys::POLLHUP != 0
}

/// (st_dev, st_rdev) of the slave of `master`, through an O_PATH open of it
/// (no tty open happens, so the pair's state is not touched).
fn peer_identity(master: &Fd) -> Option<(u64, u64)> {
    let fd = ioctl(master, "TIOCGPTPEER", TIOCGPTPEER, (O_PATH | O_NOCTTY | O_CLOEXEC) as u64).ok()?;
    let fd = Fd(fd as i32);
    let md = std::fs::metadata(format!("/proc/self/fd/{}", fd.raw())).ok()?;
    Some((md.dev(), md.rdev()))
}

struct MasterSeen {
    pty_id: u64,
    index: u32,
    /// (st_dev, st_rdev) of the pair's slave
    slave: Option<(u64, u64)>,
    session: Option<Pid>,
    queued: u64,
}

struct SlaveSeen {
    file_id: u64,
    dev: u64,
    rdev: u64,
    queued: u64,
}

/// Pty masters and slaves seen while dumping a tree, linked in `link`.
#[derive(Default)]
pub struct PtyTable {
    masters: Vec<MasterSeen>,
    slaves: Vec<SlaveSeen>,
}

impl PtyTable {
    /// The file entry of a master descriptor, with the pair's state.
    pub fn describe_master(&mut self, ctx: &FileCtx) -> Result<Json> {
        let m = sys::pidfd_getfd(ctx.pidfd, ctx.fd)?;
        let what = |op: &str| format!("{} on pseudo-terminal master fd {}", op, ctx.fd);
        let index = ioctl_int(&m, &what("TIOCGPTN"), TIOCGPTN)? as u32;
        let mut t = [0u8; TERMIOS2_LEN];
        ioctl(&m, &what("TCGETS2"), TCGETS2, t.as_mut_ptr() as u64)?;
        let mut ws = [0u16; 4];
        ioctl(&m, &what("TIOCGWINSZ"), TIOCGWINSZ, ws.as_mut_ptr() as u64)?;
        let locked = ioctl_int(&m, &what("TIOCGPTLCK"), TIOCGPTLCK)? != 0;
        let packet = ioctl_int(&m, &what("TIOCGPKT"), TIOCGPKT).map(|v| v != 0).unwrap_or(false);
        // ENOTTY: the slave is nobody's controlling terminal.
        let session = ioctl_int(&m, "TIOCGSID", TIOCGSID).ok().filter(|&s| s > 0);
        let fg = ioctl_int(&m, "TIOCGPGRP", TIOCGPGRP).ok().filter(|&g| g > 0);
        let pty_id = self.masters.len() as u64 + 1;
        let mut pty = Json::obj()
            .with("index", index as u64)
            .with("termios", termios_to_json(&t))
            .with("winsize", winsize_to_json(&ws))
            .with("locked", locked)
            .with("packet", packet)
            .with("hup", slave_hung_up(&m));
        if let Some(s) = session {
            pty.set("session", s as u64);
        }
        if let (Some(_), Some(g)) = (session, fg) {
            pty.set("fg_pgrp", g as u64);
        }
        self.masters.push(MasterSeen { pty_id, index, slave: peer_identity(&m), session, queued: queued(&m) });
        let path = if ctx.target.ends_with("ptmx") { ctx.target } else { "/dev/ptmx" };
        Ok(ctx.base.clone().with("kind", "pty_master").with("path", path).with("pty_id", pty_id).with("pty", pty))
    }

    /// Remember a /dev/pts/N description; it becomes a pty_slave in `link`
    /// if its master is in the tree.
    pub fn note_slave(&mut self, ctx: &FileCtx, id: u64) {
        let queued = sys::pidfd_getfd(ctx.pidfd, ctx.fd).map(|s| queued(&s)).unwrap_or(0);
        self.slaves.push(SlaveSeen { file_id: id, dev: ctx.md.dev(), rdev: ctx.md.rdev(), queued });
    }

    fn master_of(&self, s: &SlaveSeen) -> Option<&MasterSeen> {
        self.masters.iter().find(|m| match m.slave {
            Some(peer) => peer == (s.dev, s.rdev),
            // No O_PATH peer (older kernels): the index alone.
            None => minor(s.rdev) + (major(s.rdev) - 136) * 256 == m.index as u64,
        })
    }

    /// Turn the slaves of masters in the tree into pty_slave entries; returns
    /// warnings for what cannot come along (queued bytes, a controlling
    /// terminal whose session leader is not in the tree).
    pub fn link(&self, files: &mut [Json], tree: &[Pid]) -> Vec<String> {
        let mut queued: BTreeMap<u64, u64> = self.masters.iter().map(|m| (m.pty_id, m.queued)).collect();
        for s in &self.slaves {
            let m = match self.master_of(s) {
                Some(m) => m,
                None => continue,
            };
            *queued.entry(m.pty_id).or_insert(0) += s.queued;
            if let Some(f) = files.iter_mut().find(|f| f.u64_of("id") == Some(s.file_id)) {
                f.set("kind", "pty_slave");
                f.set("pty_id", m.pty_id);
            }
        }
        let mut warnings = Vec::new();
        for m in &self.masters {
            let n = queued.get(&m.pty_id).copied().unwrap_or(0);
            if n > 0 {
                warnings.push(format!("pseudo-terminal /dev/pts/{}: {} bytes queued between master and slave are dropped on restore", m.index, n));
            }
            if let Some(sid) = m.session.filter(|s| !tree.contains(s)) {
                warnings.push(format!(
                    "pseudo-terminal /dev/pts/{} is the controlling terminal of session {}, whose leader is not in the tree: it will be no controlling terminal after restore",
                    m.index, sid
                ));
            }
        }
        warnings
    }
}

// ---- restore side ----

struct Pair {
    master: Fd,
    pty: Json,
}

/// The new pairs of a restore, by pty_id, opened before any descriptor.
#[derive(Default)]
pub struct Pairs {
    by_id: BTreeMap<u64, Pair>,
}

fn pty_id_of(f: &Json) -> Result<u64> {
    f.u64_of("pty_id").ok_or_else(|| Error::new("EIMAGE", "a pseudo-terminal entry in the image has no pty_id"))
}

/// Open a new pair for every pty_master entry of `files` and give it the
/// dumped state. Locked pairs are unlocked here so that their slaves can be
/// opened; `relock` locks them again once every slave is open.
pub fn open_pairs(files: &[Json]) -> Result<Pairs> {
    let mut pairs = Pairs::default();
    for f in files.iter().filter(|f| f.str_of("kind") == Some("pty_master")) {
        let id = pty_id_of(f)?;
        let pty = f.get("pty").cloned().ok_or_else(|| Error::new("EIMAGE", "a pseudo-terminal master in the image has no pty state"))?;
        let flags = f.u64_of("flags").unwrap_or(O_RDWR as u64) as u32;
        let path = f.str_of("path").filter(|p| p.ends_with("ptmx")).unwrap_or("/dev/ptmx");
        let c = sys::cstr(path)?;
        let open_flags = (flags & (O_ACCMODE | O_NONBLOCK)) | O_NOCTTY | O_CLOEXEC;
        let master = Fd(sys::call(&format!("open {}", path), nr::OPEN, &[c.as_ptr() as u64, open_flags as u64, 0])
            .map_err(|e| Error::new("EFILE", format!("pseudo-terminal master {}: {}", path, e.message)))? as i32);
        apply_state(&master, &pty)?;
        pairs.by_id.insert(id, Pair { master, pty });
    }
    Ok(pairs)
}

fn apply_state(master: &Fd, pty: &Json) -> Result<()> {
    let zero: i32 = 0;
    ioctl(master, "TIOCSPTLCK (unlock)", TIOCSPTLCK, &zero as *const i32 as u64)?;
    if let Some(t) = pty.get("termios") {
        let b = termios_from_json(t)?;
        ioctl(master, "TCSETS2 on a pseudo-terminal", TCSETS2, b.as_ptr() as u64)?;
    }
    if let Some(w) = pty.get("winsize") {
        let ws = winsize_from_json(w);
        ioctl(master, "TIOCSWINSZ on a pseudo-terminal", TIOCSWINSZ, ws.as_ptr() as u64)?;
    }
    if pty.bool_of("packet") {
        let one: i32 = 1;
        ioctl(master, "TIOCPKT", TIOCPKT, &one as *const i32 as u64)?;
    }
    if pty.bool_of("hup") {
        // Every slave had been closed: open and close one, so reads on the
        // master fail with EIO and poll reports POLLHUP as before.
        drop(open_slave(master, O_RDWR)?);
    }
    Ok(())
}

/// A new description of the pair's slave (TIOCGPTPEER: no path lookup, so
/// the slave's number does not matter).
fn open_slave(master: &Fd, flags: u32) -> Result<Fd> {
    let f = (flags & (O_ACCMODE | O_NONBLOCK)) | O_NOCTTY | O_CLOEXEC;
    ioctl(master, "TIOCGPTPEER", TIOCGPTPEER, f as u64).map(|fd| Fd(fd as i32))
}

fn dup_cloexec(fd: &Fd) -> Result<Fd> {
    sys::call("dup", nr::FCNTL, &[fd.raw() as u64, 1030 /* F_DUPFD_CLOEXEC */, 0]).map(|f| Fd(f as i32))
}

impl Pairs {
    fn pair(&self, f: &Json) -> Result<&Pair> {
        let id = pty_id_of(f)?;
        self.by_id.get(&id).ok_or_else(|| Error::new("EIMAGE", format!("pseudo-terminal {} in the image has no master", id)))
    }

    /// The master description of a pty_master entry (one per pair).
    pub fn master(&self, f: &Json) -> Result<Fd> {
        dup_cloexec(&self.pair(f)?.master)
    }

    /// A new slave description for a pty_slave entry.
    pub fn slave(&self, f: &Json) -> Result<Fd> {
        let flags = f.u64_of("flags").unwrap_or(O_RDWR as u64) as u32;
        open_slave(&self.pair(f)?.master, flags)
    }

    /// Lock again the pairs that were locked at the dump.
    pub fn relock(&self) -> Result<()> {
        let one: i32 = 1;
        for p in self.by_id.values().filter(|p| p.pty.bool_of("locked") && p.pty.get("session").is_none()) {
            ioctl(&p.master, "TIOCSPTLCK (lock)", TIOCSPTLCK, &one as *const i32 as u64)?;
        }
        Ok(())
    }

    /// The pair that was the controlling terminal of the session process
    /// `p` (pid `pid`) leads; None if it leads none.
    fn led_by(&self, p: &Json, pid: Pid) -> Option<&Pair> {
        if p.i64_of("sid") != Some(pid as i64) {
            return None;
        }
        self.by_id.values().find(|pair| pair.pty.i64_of("session") == Some(pid as i64))
    }
}

/// Run `f` with a descriptor of the pair's slave installed in the process
/// behind `inj` as number `at` (closed again afterwards).
fn with_slave_in(inj: &mut Injector, pair: &Pair, at: i32, f: impl FnOnce(&mut Injector, u64) -> Result<()>) -> Result<()> {
    let slave = open_slave(&pair.master, O_RDWR)?;
    crate::anonfd::pass_fd(inj, &slave, at)?;
    let r = f(inj, at as u64);
    inj.call("close", nr::CLOSE, &[at as u64])?;
    r
}

/// A descriptor number free in process `p` (above all of its own).
fn spare_fd(p: &Json) -> i32 {
    p.arr_of("fds").iter().filter_map(|f| f.u64_of("fd")).max().map(|m| m as i32 + 2).unwrap_or(3).max(10)
}

/// If `p` leads a session whose controlling terminal was a pair of the tree,
/// make that pair's slave its controlling terminal (TIOCSCTTY, from inside).
/// Processes forked from it afterwards inherit it. Harmless to repeat.
pub fn claim_ctty(inj: &mut Injector, p: &Json, pid: Pid, pairs: &Pairs) -> Result<()> {
    let pair = match pairs.led_by(p, pid) {
        Some(pair) => pair,
        None => return Ok(()),
    };
    with_slave_in(inj, pair, spare_fd(p), |inj, fd| {
        inj.call("ioctl(TIOCSCTTY)", nr::IOCTL, &[fd, TIOCSCTTY, 0]).map(|_| ())
    })
}

/// After the whole tree exists: the session leader gives the terminal back
/// to the foreground process group it had (when that group is restored:
/// the kernel refuses a group that does not exist or is of another session).
pub fn restore_foreground(inj: &mut Injector, p: &Json, pid: Pid, pairs: &Pairs) -> Result<()> {
    let pair = match pairs.led_by(p, pid) {
        Some(pair) => pair,
        None => return Ok(()),
    };
    let fg = match pair.pty.u64_of("fg_pgrp") {
        Some(g) if g != pid as u64 => g as i32,
        _ => return Ok(()),
    };
    let arg = inj.put(&fg.to_le_bytes(), 3584)?;
    with_slave_in(inj, pair, spare_fd(p), |inj, fd| match inj.raw(nr::IOCTL, &[fd, TIOCSPGRP, arg])? {
        r if r >= 0 => Ok(()),
        -3 | -1 => Ok(()), // ESRCH / EPERM: that group is not part of the restored session
        r => Err(Error::sys(format!("ioctl(TIOCSPGRP {}) in process {}", fg, pid), (-r) as i32)),
    })
}
