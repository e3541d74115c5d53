//! Handing a tree's network endpoints over to the destination when both
//! run in one network stack (one host): the kernel refuses a second socket
//! with the 4-tuple of a live established connection (connect in repair mode:
//! EADDRNOTAVAIL), a second listener on a port (EADDRINUSE), a second UDP
//! socket on a bound port and a second unix socket on an abstract name. So at
//! the final freeze, once the state is dumped, the source's copies (and
//! netlink sockets with their port ids) are
//! *detached*: close() is injected into every frozen process for each such
//! descriptor and phaul drops its own copies (the TCP connections are in
//! repair mode, so closing them sends neither FIN nor RST). On rollback the
//! sockets are recreated from the dumped JSON and installed back at their
//! descriptor numbers (and into the epoll sets that watched them) before the
//! tree resumes. TCP sockets whose connection ended with an error not yet
//! reported are detached too: the dump read (and so cleared) the error, and
//! the socket put back on rollback reports it again.
//!
//! While no socket exists, a packet from a peer would draw a reset (TCP) or
//! an ICMP error (UDP). A per-migration nftables table (`inet phaul_*`)
//! drops them: SYNs to the tree's listening ports from just before the
//! freeze (new clients retry their SYN after 1 s), and every packet of the
//! tree's established connections and UDP ports from the freeze on (added
//! to the table's sets over netlink, nftnl.rs: running nft inside the
//! frozen window cost 10-15 ms). The
//! table is deleted once the destination runs the tree (source_commit)
//! or the source resumes it (rollback). Without `nft` the handoff still
//! works but is not protected (reported in the warnings).
//!
//! When the destination restores into this very network namespace, the
//! table queues what it matches instead (nfqueue.rs) and the queue is
//! emptied before the table goes: the peers' segments and SYNs sent during
//! the handoff then reach the new sockets at once instead of waiting for a
//! retransmission (200 ms at least) or a SYN retry (1 s).
//!
//! File locks change hands the same way on one host (`release_locks`): the
//! frozen source gives them up once they are dumped, a rollback takes them
//! back.

use super::nfqueue::Queue;
use super::nftnl;
use crate::files::FdChannel;
use crate::freeze::Frozen;
use crate::inject::{find_syscall_insn, Injector};
use crate::json::Json;
use crate::proc;
use crate::sys::{self, nr, Error, Fd, Pid, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SOL_SOCKET: i32 = 1;
const SO_ACCEPTCONN: i32 = 30;
const SO_DOMAIN: i32 = 39;
const SO_PROTOCOL: i32 = 38;
const SOL_TCP: i32 = 6;
const TCP_INFO: i32 = 11;

pub struct Handoff {
    netns_pid: Pid,
    table: Option<String>,
    /// the table exists and has a chain
    created: bool,
    /// socket file entries (from the dumped state) detached from the source
    files: Vec<Json>,
    /// per process: (fd, file id, cloexec)
    fds: BTreeMap<Pid, Vec<(i32, u64, bool)>>,
    /// (owner pid, epoll fd, target fd, events, data) watches lost by the detach
    watches: Vec<(Pid, i32, i32, u32, u64)>,
    pub warnings: Vec<String>,
    pub stats: Json,
    /// (pid, {file_locks}) given up by the source for the destination (one
    /// host), taken again on rollback.
    locks: Vec<(Pid, Json)>,
    /// nf_tables netlink socket in the tree's network namespace: the
    /// connections are added to the table's sets through it at the freeze.
    nl: Option<Fd>,
    /// Where held packets wait (one network stack only); None: dropped.
    queue: Option<Queue>,
}

impl Default for Handoff {
    fn default() -> Self {
        Handoff {
            netns_pid: 0,
            table: None,
            created: false,
            files: Vec::new(),
            fds: BTreeMap::new(),
            watches: Vec::new(),
            warnings: Vec::new(),
            stats: Json::obj(),
            nl: None,
            locks: Vec::new(),
            queue: None,
        }
    }
}

/// Where a system tool is installed, if it is.
pub(super) fn tool_path(name: &str) -> Option<String> {
    ["/usr/sbin", "/sbin", "/usr/bin"].iter().map(|d| format!("{}/{}", d, name)).find(|p| std::path::Path::new(p).exists())
}

fn nft_path() -> Option<String> {
    tool_path("nft")
}

fn same_netns(pid: Pid) -> bool {
    match (proc::readlink("/proc/self/ns/net"), proc::readlink(&format!("/proc/{}/ns/net", pid))) {
        (Ok(a), Ok(b)) => a == b,
        _ => true,
    }
}

/// Run `nft -f -` with `script`, in the network namespace of `pid`.
fn nft(pid: Pid, script: &str) -> Result<()> {
    let path = nft_path().ok_or_else(|| Error::new("ENOENT", "nft is not installed (Debian package nftables)"))?;
    run_in_netns(pid, &path, &["-f", "-"], script)
}

/// Run `path args`, fed `stdin`, in the network namespace of `pid`.
pub(super) fn run_in_netns(pid: Pid, path: &str, args: &[&str], stdin: &str) -> Result<()> {
    let name = path.rsplit('/').next().unwrap_or(path).to_string();
    let mut cmd = if same_netns(pid) {
        Command::new(path)
    } else {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/proc/{}/ns/net", pid)).arg("--").arg(path);
        c
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new("ENFT", format!("cannot run {}: {}", path, e)))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| Error::new("ENFT", format!("{}: {}", name, e)))?;
    if !out.status.success() {
        return Err(Error::new("ENFT", format!("{} failed: {}", name, String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

fn getsockopt_int(fd: &Fd, level: i32, opt: i32) -> Option<i32> {
    let mut v: i32 = 0;
    let mut len: u32 = 4;
    unsafe { sys::raw(55, &[fd.raw() as u64, level as u64, opt as u64, &mut v as *mut i32 as u64, &mut len as *mut u32 as u64]) }.ok().map(|_| v)
}

fn tcp_state(fd: &Fd) -> Option<u8> {
    let mut info = [0u8; 8];
    let mut len: u32 = 8;
    unsafe { sys::raw(55, &[fd.raw() as u64, SOL_TCP as u64, TCP_INFO as u64, info.as_mut_ptr() as u64, &mut len as *mut u32 as u64]) }.ok().map(|_| info[0])
}

fn name_of(fd: &Fd, peer: bool) -> Option<Json> {
    let mut buf = [0u8; 128];
    let mut len: u32 = 128;
    let n = if peer { 52 } else { 51 };
    unsafe { sys::raw(n, &[fd.raw() as u64, buf.as_mut_ptr() as u64, &mut len as *mut u32 as u64]) }.ok()?;
    crate::sockets::addr_json_pub(&buf[..(len as usize).min(128)])
}

/// Copies of every distinct socket of `pids` (by inode).
fn socket_copies(pids: &[Pid]) -> Vec<Fd> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for &pid in pids {
        let pidfd = match sys::pidfd_open(pid) {
            Ok(f) => f,
            Err(_) => continue,
        };
        for fd in proc::fds(pid).unwrap_or_default() {
            let t = proc::readlink(&format!("/proc/{}/fd/{}", pid, fd)).unwrap_or_default();
            if !t.starts_with("socket:[") || !seen.insert(t) {
                continue;
            }
            if let Ok(c) = sys::pidfd_getfd(&pidfd, fd) {
                out.push(c);
            }
        }
    }
    out
}

const HELD4: &str = "held4";
const HELD6: &str = "held6";
const HELD_UDP: &str = "held_udp";
const HELD_SYN: &str = "held_syn";

/// The handoff's table: sets of the connections (and UDP ports) to hold
/// back, filled at the freeze, the listening ports whose SYNs are held from
/// before it, and the rules that hold (drop, or queue) what they match.
fn table_script(t: &str, verdict: &str) -> String {
    format!(
        "table inet {t} {{\n set {HELD4} {{ type ipv4_addr . inet_service . ipv4_addr . inet_service; }}\n set {HELD6} {{ type ipv6_addr . inet_service . ipv6_addr . inet_service; }}\n set {HELD_UDP} {{ type inet_service; }}\n set {HELD_SYN} {{ type inet_service; }}\n chain hold {{\n  type filter hook prerouting priority -301; policy accept;\n  tcp dport @{HELD_SYN} tcp flags & (syn | ack) == syn {verdict}\n  ip saddr . tcp sport . ip daddr . tcp dport @{HELD4} {verdict}\n  ip6 saddr . tcp sport . ip6 daddr . tcp dport @{HELD6} {verdict}\n  udp dport @{HELD_UDP} {verdict}\n }}\n}}\n"
    )
}

/// The address of a socket name, an IPv4-mapped IPv6 one as the IPv4
/// address its packets carry.
fn ip_of(a: &Json) -> Option<IpAddr> {
    match a.str_of("ip")?.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) => Some(v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6))),
        v4 => Some(v4),
    }
}

fn ip_match(a: &Json, dir: &str) -> String {
    match ip_of(a) {
        Some(IpAddr::V6(ip)) => format!("ip6 {}addr {}", dir, ip),
        Some(IpAddr::V4(ip)) => format!("ip {}addr {}", dir, ip),
        None => format!("ip {}addr {}", dir, a.str_of("ip").unwrap_or("")),
    }
}

impl Handoff {
    fn table(&mut self) -> String {
        if self.table.is_none() {
            let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
            self.table = Some(format!("phaul_{}_{}", self.netns_pid, n % 1_000_000_000));
        }
        self.table.clone().unwrap_or_default()
    }

    /// What the table does with a packet it holds back.
    fn verdict(&self) -> String {
        self.queue.as_ref().map(Queue::statement).unwrap_or_else(|| "drop".to_string())
    }

    /// Run nft commands (one per line, `{t}` standing for the table),
    /// creating the table first if need be.
    fn apply(&mut self, rules: &[String]) {
        if rules.is_empty() && self.created {
            return;
        }
        if nft_path().is_none() {
            self.warnings.push("nft is not installed: peers' packets are not held back while the sockets change hands (a reset is possible)".into());
            return;
        }
        let t = self.table();
        let queued = self.verdict();
        let mut s = String::new();
        if !self.created {
            s += &table_script(&t, &queued);
        }
        for r in rules {
            s += &r.replace("{t}", &t);
            s.push('\n');
        }
        match nft(self.netns_pid, &s) {
            Ok(()) => self.created = true,
            // Queueing is an improvement only: drop the packets rather than
            // let them through.
            Err(e) if !self.created && self.queue.is_some() => {
                self.warnings.push(format!("peers' packets are dropped, not queued, during the handoff: {}", e.message));
                self.queue = None;
                let drop_rules: Vec<String> = rules.iter().map(|r| r.replace(&queued, "drop")).collect();
                self.apply(&drop_rules);
            }
            Err(e) => self.warnings.push(format!("packets are not held back during the handoff: {}", e.message)),
        }
    }

    /// Before the final freeze: hold back new connections to the tree's
    /// listening TCP ports and give the tree up to `drain` to accept the
    /// connections already queued (a queued connection is reset when its
    /// listener is closed).
    /// `same_stack`: the destination restores into this network namespace,
    /// so held packets are queued for its sockets rather than dropped.
    pub fn before_freeze(&mut self, root: Pid, pids: &[Pid], drain: Duration, same_stack: bool) {
        self.netns_pid = root;
        let t0 = Instant::now();
        let copies = socket_copies(pids);
        let inet = copies.iter().find(|c| matches!(getsockopt_int(c, SOL_SOCKET, SO_DOMAIN), Some(2) | Some(10)));
        let listeners: Vec<&Fd> = copies.iter().filter(|c| getsockopt_int(c, SOL_SOCKET, SO_ACCEPTCONN) == Some(1)).collect();
        let mut ports = BTreeSet::new();
        for l in &listeners {
            let d = getsockopt_int(l, SOL_SOCKET, SO_DOMAIN).unwrap_or(0);
            if (d == 2 || d == 10) && getsockopt_int(l, SOL_SOCKET, SO_PROTOCOL) == Some(6) {
                if let Some(p) = name_of(l, false).and_then(|a| a.u64_of("port")) {
                    ports.insert(p);
                }
            }
        }
        // With IP sockets the table (and its sets) is made now, outside the
        // frozen window; after_freeze only fills the sets.
        if let (Some(c), true) = (inet, same_stack) {
            match Queue::bind(c, root) {
                Ok(q) => self.queue = Some(q),
                Err(e) => self.warnings.push(format!("peers' packets are dropped, not queued, during the handoff: {}", e.message)),
            }
        }
        let rules: Vec<String> = if ports.is_empty() {
            Vec::new()
        } else {
            vec![format!("add element inet {{t}} {} {{ {} }}", HELD_SYN, ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "))]
        };
        if let Some(c) = inet {
            self.apply(&rules);
            if self.created {
                self.nl = nftnl::socket_beside(c).ok();
            }
        }
        let locked_us = t0.elapsed().as_micros() as u64;
        // Wait until no listener has a connection waiting to be accepted.
        let deadline = Instant::now() + drain;
        let mut pending;
        loop {
            let mut pfds: Vec<sys::PollFd> = listeners.iter().map(|l| sys::PollFd::new(l.raw(), sys::POLLIN)).collect();
            pending = if pfds.is_empty() { 0 } else { sys::poll(&mut pfds, 0) };
            if pending == 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if pending > 0 {
            self.warnings.push(format!("{} listener(s) still had connections waiting to be accepted at the freeze; those are reset", pending));
        }
        self.stats = Json::obj()
            .with("listen_ports", ports.len() as u64)
            .with("syn_hold_us", locked_us)
            .with("drain_us", (t0.elapsed().as_micros() as u64).saturating_sub(locked_us));
    }

    /// Right after the freeze, before the dump reads the connections: hold
    /// back every packet of the tree's established TCP connections and to
    /// its bound UDP ports.
    pub fn after_freeze(&mut self, frozen: &Frozen) {
        let t0 = Instant::now();
        let pids: Vec<Pid> = frozen.live().map(|p| p.pid).collect();
        let copies = socket_copies(&pids);
        let verdict = self.verdict();
        let mut rules = Vec::new();
        let (mut flows4, mut flows6, mut udp) = (Vec::new(), Vec::new(), Vec::new());
        for c in &copies {
            let d = getsockopt_int(c, SOL_SOCKET, SO_DOMAIN).unwrap_or(0);
            if d != 2 && d != 10 {
                continue;
            }
            match getsockopt_int(c, SOL_SOCKET, SO_PROTOCOL) {
                Some(6) if tcp_state(c) == Some(1) => {
                    if let (Some(l), Some(p)) = (name_of(c, false), name_of(c, true)) {
                        let (pp, lp) = (p.u64_of("port").unwrap_or(0), l.u64_of("port").unwrap_or(0));
                        rules.push(format!("add rule inet {{t}} hold {} tcp sport {} {} tcp dport {} {}", ip_match(&p, "s"), pp, ip_match(&l, "d"), lp, verdict));
                        match (ip_of(&p), ip_of(&l)) {
                            (Some(IpAddr::V4(a)), Some(IpAddr::V4(b))) => flows4.push(nftnl::key_flow(&a.octets(), pp as u16, &b.octets(), lp as u16)),
                            (Some(IpAddr::V6(a)), Some(IpAddr::V6(b))) => flows6.push(nftnl::key_flow(&a.octets(), pp as u16, &b.octets(), lp as u16)),
                            _ => {}
                        }
                    }
                }
                Some(17) => {
                    if let Some(port) = name_of(c, false).and_then(|a| a.u64_of("port")).filter(|p| *p != 0) {
                        rules.push(format!("add rule inet {{t}} hold udp dport {} {}", port, verdict));
                        udp.push(nftnl::key_port(port as u16));
                    }
                }
                _ => {}
            }
        }
        drop(copies);
        let n = rules.len();
        let added = match (&self.nl, &self.table) {
            (Some(nl), Some(t)) if self.created => nftnl::add_elements(nl, t, &[(HELD4, &flows4), (HELD6, &flows6), (HELD_UDP, &udp)]),
            (None, _) if self.created => Err(Error::new("ENOENT", "no nf_tables netlink socket")),
            _ => Err(Error::new("ENOENT", "no table made before the freeze")),
        };
        // Otherwise a rule per connection, through nft (slower).
        if let Err(e) = added {
            if n > 0 {
                if self.created {
                    self.warnings.push(format!("adding the connections to the handoff table over netlink failed ({}); nft added rules instead", e.message));
                }
                self.apply(&rules);
            }
        }
        crate::sys::trace_mark("handoff: connections held");
        self.stats.set("held_connections", n as u64).set("hold_us", t0.elapsed().as_micros() as u64);
    }

    /// After the dump: close the sockets that would collide with the
    /// destination's in every process of the frozen tree.
    pub fn detach(&mut self, frozen: &Frozen, state: &Json) -> Result<()> {
        let t0 = Instant::now();
        let mut ids = BTreeSet::new();
        for f in state.arr_of("files") {
            if collides(f) || error_was_read(f) {
                if let Some(id) = f.u64_of("id") {
                    ids.insert(id);
                    self.files.push(f.clone());
                }
            }
        }
        if ids.is_empty() {
            crate::sockets::forget_repaired();
            return Ok(());
        }
        // epoll watches on those sockets vanish with them: remember them for a rollback.
        for p in state.arr_of("processes") {
            let pid = p.i64_of("pid").unwrap_or(0) as Pid;
            for fde in p.arr_of("fds") {
                let id = fde.u64_of("file_id").unwrap_or(0);
                let fd = fde.i64_of("fd").unwrap_or(-1) as i32;
                if ids.contains(&id) {
                    self.fds.entry(pid).or_default().push((fd, id, fde.bool_of("cloexec")));
                }
            }
        }
        for f in state.arr_of("files").iter().filter(|f| f.str_of("kind") == Some("epoll")) {
            let owner = f.i64_of("owner_pid").unwrap_or(0) as Pid;
            let id = f.u64_of("id").unwrap_or(0);
            let epfd = state
                .arr_of("processes")
                .iter()
                .find(|p| p.i64_of("pid") == Some(owner as i64))
                .and_then(|p| p.arr_of("fds").iter().find(|x| x.u64_of("file_id") == Some(id)).and_then(|x| x.i64_of("fd")));
            let epfd = match epfd {
                Some(e) => e as i32,
                None => continue,
            };
            let mine = self.fds.get(&owner).cloned().unwrap_or_default();
            for w in f.arr_of("watches") {
                let tfd = w.i64_of("tfd").unwrap_or(-1) as i32;
                if mine.iter().any(|(fd, _, _)| *fd == tfd) {
                    self.watches.push((owner, epfd, tfd, w.u64_of("events").unwrap_or(0) as u32, w.u64_of("data").unwrap_or(0)));
                }
            }
        }
        for fz in frozen.live() {
            let fds = match self.fds.get(&fz.pid) {
                Some(v) => v.clone(),
                None => continue,
            };
            let mut inj = injector(fz)?;
            for (fd, _, _) in &fds {
                // EBADF: another process sharing this fd table closed it already.
                let _ = inj.raw(nr::CLOSE, &[*fd as u64])?;
            }
            inj.finish()?;
        }
        // phaul's own copies of the repaired connections: closing them in
        // repair mode sends nothing.
        crate::sockets::forget_repaired();
        self.stats.set("detached", ids.len() as u64).set("detach_us", t0.elapsed().as_micros() as u64);
        Ok(())
    }

    /// One host: the destination takes the tree's file locks again, which
    /// the frozen source still holds (flock and OFD locks belong to its open
    /// file descriptions, POSIX ones to its processes), so the source gives
    /// them up once the dump has recorded them. A rollback takes them again
    /// (`retake_locks`); someone outside the tree waiting for one of them
    /// could take it in between, and the rollback then says so.
    pub fn release_locks(&mut self, frozen: &Frozen, state: &Json) -> Result<()> {
        for p in state.arr_of("processes") {
            let locks = p.arr_of("file_locks");
            let pid = p.i64_of("pid").unwrap_or(0) as Pid;
            let fz = match frozen.live().find(|f| f.pid == pid) {
                Some(f) if !locks.is_empty() => f,
                _ => continue,
            };
            let mut inj = injector(fz)?;
            self.locks.push((pid, Json::obj().with("file_locks", locks.to_vec())));
            let r = crate::anonfd::locks::release(&mut inj, p);
            let fin = inj.finish();
            r.map_err(|e| e.context(format!("giving up the file locks of process {} for the destination", pid)))?;
            fin?;
        }
        Ok(())
    }

    /// Rollback: take again the locks given up by `release_locks`.
    fn retake_locks(&mut self, frozen: &Frozen) -> Result<()> {
        let mut first_err = Ok(());
        for (pid, j) in std::mem::take(&mut self.locks) {
            let fz = match frozen.live().find(|f| f.pid == pid) {
                Some(f) => f,
                None => continue,
            };
            let r = injector(fz).and_then(|mut inj| {
                let r = crate::anonfd::locks::restore(&mut inj, &j);
                inj.finish().and(r)
            });
            if let Err(e) = r {
                if first_err.is_ok() {
                    first_err = Err(e.context(format!("taking the file locks of process {} back", pid)));
                }
            }
        }
        first_err
    }

    /// Rollback: recreate the detached sockets and put them back, at their
    /// numbers and in their epoll sets, into the (still frozen) tree.
    pub fn reattach(&mut self, frozen: &Frozen) -> Result<()> {
        let locks = self.retake_locks(frozen);
        if self.files.is_empty() {
            return locks;
        }
        let mut opened: BTreeMap<u64, Fd> = BTreeMap::new();
        let made = (|| -> Result<()> {
            for f in std::mem::take(&mut self.files) {
                let id = f.u64_of("id").unwrap_or(0);
                opened.insert(id, crate::sockets::open(&f).map_err(|e| e.context("recreating a socket on rollback"))?);
            }
            crate::sockets::finish_opened(&opened)
        })();
        if let Err(e) = made {
            crate::sockets::abandon_opened();
            return Err(e);
        }
        for fz in frozen.live() {
            let fds = match self.fds.get(&fz.pid) {
                Some(v) => v.clone(),
                None => continue,
            };
            let mut inj = injector(fz)?;
            let park = proc::fds(fz.pid).unwrap_or_default().into_iter().chain(fds.iter().map(|x| x.0)).max().unwrap_or(0) as u64 + 1;
            let pidfd = sys::pidfd_open(fz.pid)?;
            let chan = FdChannel::open(&mut inj, &pidfd, park.max(100))?;
            let items: Vec<_> = fds.iter().filter_map(|(fd, id, cloexec)| opened.get(id).map(|obj| (obj, *fd, *cloexec))).collect();
            chan.install_all(&mut inj, &items)?;
            chan.close(&mut inj)?;
            for (owner, epfd, tfd, events, data) in self.watches.iter().filter(|w| w.0 == fz.pid) {
                let _ = owner;
                let mut ev = Vec::with_capacity(12);
                ev.extend_from_slice(&events.to_le_bytes());
                ev.extend_from_slice(&data.to_le_bytes());
                let a = inj.put(&ev, 2048)?;
                inj.call("epoll_ctl(ADD) on rollback", 233 /* epoll_ctl */, &[*epfd as u64, 1, *tfd as u64, a])?;
            }
            inj.finish()?;
        }
        self.fds.clear();
        self.watches.clear();
        locks
    }

    /// Let the peers' packets through again: the queued ones first (before
    /// the table goes, and again after, for those queued meanwhile).
    /// Returns (microseconds taken, packets passed on from the queue).
    pub fn release(&mut self) -> (u64, u64) {
        let t0 = Instant::now();
        // Deleting the table unregisters its hook, and the kernel then drops
        // every queued packet: so first nothing more is held (the sets are
        // emptied, one netlink batch), then what is held goes on.
        if let (Some(nl), Some(t), Some(_)) = (&self.nl, &self.table, &self.queue) {
            if let Err(e) = nftnl::flush_sets(nl, t, &[HELD4, HELD6, HELD_UDP, HELD_SYN]) {
                eprintln!("phaul: {}", e.message);
            }
        }
        self.nl = None;
        self.pass_queued();
        if let (Some(t), true) = (self.table.take(), self.created) {
            self.created = false;
            if let Err(e) = nft(self.netns_pid, &format!("delete table inet {}\n", t)) {
                eprintln!("phaul: cannot delete nftables table {}: {}", t, e.message);
            }
        }
        self.pass_queued();
        let passed = self.queue.take().map(|q| q.accepted).unwrap_or(0);
        (t0.elapsed().as_micros() as u64, passed)
    }

    fn pass_queued(&mut self) {
        if let Some(q) = self.queue.as_mut() {
            if let Err(e) = q.accept_all() {
                // Those packets are dropped when the queue closes: the peers retransmit.
                eprintln!("phaul: {}", e.message);
            }
        }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        self.release();
    }
}

fn injector(fz: &crate::freeze::FrozenProc) -> Result<Injector> {
    let leader = &fz.threads[0];
    Injector::new(fz.pid, leader.tid, find_syscall_insn(fz.pid)?, leader.regs.rewound(true), leader.sigmask)
}

/// A TCP socket whose connection ended with an error not yet reported
/// (sockets/tcp_closed.rs): the dump had to read the error, which clears it.
/// Detaching it lets a rollback put back a socket that reports it again.
fn error_was_read(f: &Json) -> bool {
    f.str_of("kind") == Some("sock_tcp") && f.get("sock").map(|s| s.str_of("state") == Some("closed") && s.u64_of("error").unwrap_or(0) != 0).unwrap_or(false)
}

/// Would a socket like this one, created on the destination while the
/// source's exists, collide with it?
pub(crate) fn collides(f: &Json) -> bool {
    let s = match f.get("sock") {
        Some(s) => s,
        None => return false,
    };
    let state = s.str_of("state").unwrap_or("");
    let port = s.get("local").and_then(|l| l.u64_of("port")).unwrap_or(0);
    match f.str_of("kind") {
        Some("sock_tcp") => matches!(state, "listen" | "established" | "connecting") || (state == "bound" && port != 0),
        Some("sock_udp") => port != 0,
        Some("sock_unix") => matches!(state, "listen" | "bound") && s.get("local").and_then(|l| l.str_of("path")).map(|p| !p.is_empty()).unwrap_or(false),
        // a bound port id is taken while the source's socket exists
        Some("sock_netlink") => s.get("netlink").and_then(|n| n.u64_of("portid")).unwrap_or(0) != 0,
        _ => false,
    }
}
