//! Open files: regular files, directories, character devices, pipes and FIFOs.
//!
//! Dump: every descriptor is described by an open file description ("file")
//! shared by all descriptors that point to it (found with kcmp), so dup'ed
//! descriptors keep one offset. Restore: phaul opens each description itself
//! and hands it to the stub over a unix socket (SCM_RIGHTS), so one object can
//! be installed in several processes.

use crate::base64;
use crate::batch::{Call, Job};
use crate::inject::Injector;
use crate::json::Json;
use crate::memory::file_identity;
use crate::proc;
use crate::sys::{self, cstr, nr, Error, Fd, Pid, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use crate::sys::{O_ACCMODE, O_CLOEXEC, O_CREAT, O_EXCL, O_NOCTTY, O_NONBLOCK, O_RDWR, O_TRUNC, O_WRONLY};
const F_SETFL: u64 = 4;
const F_SETPIPE_SZ: u64 = 1031;
const F_GETPIPE_SZ: u64 = 1032;
const KCMP_FILE: u64 = 0;

struct Seen {
    pid: Pid,
    fd: i32,
    id: u64,
}

/// Collects file descriptions across all processes of a tree.
pub struct FileTable {
    seen: Vec<Seen>,
    /// One descriptor of each description seen, per inode, in kcmp's order
    /// (kcmp orders the kernel's file pointers): a new descriptor is placed
    /// with a binary search. Comparing it with every one seen made 500
    /// descriptors of /dev/null cost 125,000 kcmp calls in the frozen window.
    descriptions: std::collections::HashMap<(u64, u64), Vec<(Pid, i32, u64)>>,
    pub files: Vec<Json>,
    pub pipes: BTreeMap<u64, Json>,
    /// pipe inode -> (has read end, has write end) inside the tree
    pipe_ends: BTreeMap<u64, (bool, bool)>,
    /// pseudo-terminal masters and slaves, linked into pairs in `finish`
    ptys: crate::tty::PtyTable,
    next_id: u64,
    /// Copies of the descriptors in flight in the unix socket queues seen,
    /// described in `finish` (crate::inflight).
    in_flight: crate::inflight::Sink,
    /// FIFOs removed while open: (a file id, device, inode), to tell in
    /// `finish` whether a process outside the tree holds one too.
    unlinked_fifos: Vec<(u64, u64, u64)>,
    /// Every process of the tree dumped (set by the caller).
    pub tree: Vec<Pid>,
    /// userfaultfd file id -> the process holding it (anonfd::userfaultfd).
    pub uffd_holders: BTreeMap<u64, Pid>,
}

fn kcmp_same(p1: Pid, p2: Pid, f1: i32, f2: i32) -> bool {
    kcmp_order(p1, p2, f1, f2) == Some(std::cmp::Ordering::Equal)
}

/// How the description of `f1` of `p1` compares with that of `f2` of `p2`.
fn kcmp_order(p1: Pid, p2: Pid, f1: i32, f2: i32) -> Option<std::cmp::Ordering> {
    match unsafe { sys::raw(nr::KCMP, &[p1 as u64, p2 as u64, KCMP_FILE, f1 as u64, f2 as u64]) } {
        Ok(0) => Some(std::cmp::Ordering::Equal),
        Ok(1) => Some(std::cmp::Ordering::Less),
        Ok(2) => Some(std::cmp::Ordering::Greater),
        _ => None,
    }
}

/// Character devices that mean the same on any host of this kind.
fn chr_supported(rdev: u64) -> bool {
    let maj = ((rdev >> 8) & 0xfff) as u32;
    let min = (rdev & 0xff) as u32;
    // 1: mem class (null, zero, full, random, urandom); 5: tty, console, ptmx; 136-143: pts
    matches!((maj, min), (1, 3) | (1, 5) | (1, 7) | (1, 8) | (1, 9)) || maj == 5 || maj == 4 || (136..=143).contains(&maj)
}

/// Read a pipe's queued bytes without consuming them (tee into a scratch pipe).
fn peek_pipe(read_end: &Fd) -> Result<(Vec<u8>, u64)> {
    let size = sys::call("F_GETPIPE_SZ", nr::FCNTL, &[read_end.raw() as u64, F_GETPIPE_SZ]).unwrap_or(65536) as u64;
    let mut p = [0i32; 2];
    sys::call("pipe2", 293, &[p.as_mut_ptr() as u64, (O_NONBLOCK | O_CLOEXEC) as u64])?;
    let (r, w) = (Fd(p[0]), Fd(p[1]));
    let _ = sys::call("F_SETPIPE_SZ", nr::FCNTL, &[w.raw() as u64, F_SETPIPE_SZ, size]);
    const SPLICE_F_NONBLOCK: u64 = 2;
    let n = match unsafe { sys::raw(276 /* tee */, &[read_end.raw() as u64, w.raw() as u64, size, SPLICE_F_NONBLOCK]) } {
        Ok(n) => n as usize,
        Err(11) => 0, // EAGAIN: empty
        Err(e) => return Err(Error::sys("tee on a pipe", e)),
    };
    let mut data = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let k = sys::call("read", nr::READ, &[r.raw() as u64, data[got..].as_mut_ptr() as u64, (n - got) as u64])?;
        if k <= 0 {
            break;
        }
        got += k as usize;
    }
    data.truncate(got);
    Ok((data, size))
}

impl FileTable {
    pub fn new() -> FileTable {
        FileTable {
            seen: Vec::new(),
            descriptions: std::collections::HashMap::new(),
            files: Vec::new(),
            pipes: BTreeMap::new(),
            pipe_ends: BTreeMap::new(),
            ptys: Default::default(),
            next_id: 1,
            in_flight: Default::default(),
            unlinked_fifos: Vec::new(),
            tree: Vec::new(),
            uffd_holders: BTreeMap::new(),
        }
    }

    /// Describe every descriptor of `pid`; returns its fd list.
    pub fn dump_fds(&mut self, pid: Pid, pidfd: &Fd) -> Result<Vec<Json>> {
        let mut out = Vec::new();
        for fd in proc::fds(pid)? {
            let link = format!("/proc/{}/fd/{}", pid, fd);
            let target = match proc::readlink(&link) {
                Err(e) if e.code == "EUNSUPPORTED" => return Err(e.context(format!("fd {}", fd))),
                t => t.unwrap_or_default(),
            };
            let md = std::fs::metadata(&link).map_err(|e| Error::new("EUNSUPPORTED", format!("fd {}: {} cannot be examined: {}", fd, target, e)))?;
            let info = proc::fdinfo(pid, fd)?;
            let cloexec = info.flags & O_CLOEXEC != 0;
            self.in_flight.set_carrier((pid, fd));
            let id = self.note(pid, pidfd, fd, &target, &md, &info, false)?;
            let mut entry = Json::obj().with("fd", fd).with("file_id", id).with("cloexec", cloexec);
            if let Some(owner) = crate::fown::dump(pidfd, fd, info.flags)? {
                entry.set("owner", owner);
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Files removed while mapped by `pid`, and memfds it maps, that no
    /// descriptor of the tree holds (anonfd::{unlinked,memfd}::describe_mapped):
    /// their contents go in the image, so that the restore makes them again
    /// and maps them.
    pub fn note_mapped_only(&mut self, pid: Pid, vmas: &[crate::memory::Vma]) -> Result<()> {
        for v in vmas.iter().filter(|v| v.kind == crate::memory::Kind::File && v.path.ends_with(" (deleted)")) {
            let (kind, key) = if v.path.starts_with("/memfd:") { ("memfd", "memfd_id") } else { ("unlinked", "unlinked_id") };
            let known = self.files.iter().any(|f| f.str_of("kind") == Some(kind) && f.u64_of(key) == Some(v.ino));
            if known {
                continue;
            }
            let f = if kind == "memfd" {
                crate::anonfd::memfd::describe_mapped(pid, v, self.next_id)?
            } else {
                crate::anonfd::unlinked::describe_mapped(pid, v, self.next_id)?
            };
            self.next_id += 1;
            self.files.push(f);
        }
        Ok(())
    }

    /// The id of the description of fd `fd` of `pid` if seen already (dup,
    /// inherited across fork, in flight more than once).
    fn seen_id(&self, pid: Pid, fd: i32, md: &std::fs::Metadata) -> Option<u64> {
        self.lookup(pid, fd, (md.dev(), md.ino())).ok()
    }

    /// Ok(id) of the description of `fd` of `pid` if seen, else Err(where
    /// it goes in its inode's list).
    fn lookup(&self, pid: Pid, fd: i32, key: (u64, u64)) -> std::result::Result<u64, usize> {
        let list = match self.descriptions.get(&key) {
            Some(l) => l,
            None => return Err(0),
        };
        let mut failed = false;
        let r = list.binary_search_by(|&(p, f, _)| match kcmp_order(p, pid, f, fd) {
            Some(o) => o,
            None => {
                failed = true;
                std::cmp::Ordering::Less
            }
        });
        if !failed {
            return r.map(|i| list[i].2);
        }
        // A descriptor kcmp cannot compare (closed meanwhile): one by one.
        list.iter().find(|&&(p, f, _)| kcmp_same(p, pid, f, fd)).map(|e| e.2).ok_or(list.len())
    }

    /// The file id of descriptor `fd` of `pid`, described now if its
    /// description is new (marked `in_flight` if found only in a queue).
    #[allow(clippy::too_many_arguments)]
    fn note(&mut self, pid: Pid, pidfd: &Fd, fd: i32, target: &str, md: &std::fs::Metadata, info: &proc::FdInfo, in_flight: bool) -> Result<u64> {
        let key = (md.dev(), md.ino());
        let id = match self.lookup(pid, fd, key) {
            Ok(id) => id,
            Err(at) => {
                let id = self.next_id;
                let list = self.descriptions.entry(key).or_default();
                list.insert(at.min(list.len()), (pid, fd, id));
                self.next_id += 1;
                let mut f = self.describe(pid, pidfd, fd, target, md, info, id)?;
                if in_flight {
                    f.set("in_flight", true);
                }
                self.files.push(f);
                id
            }
        };
        self.seen.push(Seen { pid, fd, id });
        Ok(id)
    }

    /// Describe the descriptors found in flight, as descriptors of phaul's
    /// own process (where the peeks put their copies). Describing a unix
    /// socket in flight peeks its queue in turn, which may add more.
    /// Returns the file id of each slot.
    fn describe_in_flight(&mut self) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        if self.in_flight.get(0).is_none() {
            return Ok(ids);
        }
        let me = sys::getpid();
        let pidfd = sys::pidfd_open(me)?;
        while let Some((_, carrier)) = self.in_flight.get(ids.len()) {
            let id = self
                .note_in_flight(me, &pidfd, ids.len())
                .map_err(|e| e.context(format!("process {}: fd {}: a descriptor in flight in its unix socket queue", carrier.0, carrier.1)))?;
            ids.push(id);
        }
        Ok(ids)
    }

    fn note_in_flight(&mut self, me: Pid, pidfd: &Fd, slot: usize) -> Result<u64> {
        let (fd, carrier) = self.in_flight.get(slot).ok_or_else(|| Error::new("EINTERNAL", "no such descriptor in flight"))?;
        let link = format!("/proc/self/fd/{}", fd);
        let target = proc::readlink(&link).unwrap_or_default();
        let md = std::fs::metadata(&link).map_err(|e| Error::new("EUNSUPPORTED", format!("{} cannot be examined: {}", target, e)))?;
        let info = proc::fdinfo(me, fd)?;
        // Also open in the tree, or in flight before: described already.
        if self.seen_id(me, fd, &md).is_none() {
            if let Some(why) = self.in_flight.with_fd(slot, |copy| crate::inflight::refusal(copy, &target, &md, &info)).flatten() {
                return Err(Error::new("EUNSUPPORTED", format!("{} is not supported", why)));
            }
        }
        // Descriptors in the queue of this one (a unix socket in flight)
        // are reported where it was found.
        self.in_flight.set_carrier(carrier);
        self.note(me, pidfd, fd, &target, &md, &info, true)
    }

    /// Where file `id` was found, for messages: "process P: fd N" (in flight
    /// only: the descriptor whose queue holds it).
    fn where_of(&self, id: u64) -> String {
        let me = sys::getpid();
        match self.seen.iter().find(|s| s.id == id && s.pid != me) {
            Some(s) => format!("process {}: fd {}", s.pid, s.fd),
            None => {
                let slot = self.seen.iter().find(|s| s.id == id).map(|s| s.fd);
                let carrier = (0..).map_while(|i| self.in_flight.get(i)).find(|(fd, _)| Some(*fd) == slot).map(|(_, c)| c).unwrap_or((0, 0));
                format!("process {}: fd {}: a descriptor in flight in its unix socket queue", carrier.0, carrier.1)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn describe(&mut self, pid: Pid, pidfd: &Fd, fd: i32, target: &str, md: &std::fs::Metadata, info: &proc::FdInfo, id: u64) -> Result<Json> {
        // A descriptor in flight is phaul's copy: it belongs with the process
        // holding the socket that carries it.
        let holder = if pid == sys::getpid() { self.in_flight.carrier().0 } else { pid };
        let ft = md.file_type();
        // A file made with O_TMPFILE keeps that flag (which includes
        // O_DIRECTORY) in its description: opened again with it, it is taken
        // for a directory to make a new file in.
        const O_TMPFILE: u32 = 0o20200000;
        let tmpfile = if ft.is_file() && info.flags & O_TMPFILE == O_TMPFILE { O_TMPFILE } else { 0 };
        let flags = info.flags & !O_CLOEXEC & !tmpfile;
        let base = Json::obj().with("id", id).with("flags", flags).with("pos", info.pos);
        let unsupported = |what: &str| Err(Error::new("EUNSUPPORTED", format!("fd {}: {} is not supported", fd, what)));
        if ft.is_file() || ft.is_dir() {
            if let Some(n) = crate::procpid::check(pid, &format!("fd {}", fd), target, md)? {
                let j = base.with("kind", if ft.is_dir() { "dir" } else { "reg" }).with("proc_pid", n.pid);
                // A dead directory's path reads " (deleted)"; a file's under it does not.
                return Ok(match n.dead {
                    true => j.with("path", target.trim_end_matches(" (deleted)")).with("proc_dead", true),
                    false => j.with("path", target),
                });
            }
        }
        if ft.is_file() && is_mqueue(pid, fd) {
            return unsupported(&format!("POSIX message queue {} (mq_open)", target));
        }
        if ft.is_file() {
            if target.starts_with("/memfd:") || target.ends_with(" (deleted)") {
                return crate::anonfd::describe(&FileCtx { pid: holder, pidfd, fd, target, md, info, base, in_flight: &self.in_flight });
            }
            return Ok(base.with("kind", "reg").with("path", target).with("stat", file_identity(target)));
        }
        if ft.is_dir() {
            return Ok(base.with("kind", "dir").with("path", target));
        }
        if ft.is_char_device() {
            if !chr_supported(md.rdev()) {
                return unsupported(&format!("character device {}", target));
            }
            // A new pair is made by each open of /dev/ptmx: its own kind.
            if crate::tty::is_ptmx(md.rdev()) {
                return self.ptys.describe_master(&FileCtx { pid: holder, pidfd, fd, target, md, info, base, in_flight: &self.in_flight });
            }
            if crate::tty::is_pts(md.rdev()) {
                self.ptys.note_slave(&FileCtx { pid: holder, pidfd, fd, target, md, info, base: Json::Null, in_flight: &self.in_flight }, id);
            }
            let j = base.with("kind", "chr").with("path", target).with("rdev", md.rdev());
            // A device node removed while open: made again at the restore.
            if md.nlink() == 0 {
                return Ok(j.with("mode", md.mode() & 0o7777).with("uid", md.uid()).with("gid", md.gid()));
            }
            return Ok(j);
        }
        if ft.is_fifo() {
            let is_pipe = target.starts_with("pipe:");
            // A FIFO whose name was removed: only descriptors lead to it.
            let unlinked = !is_pipe && md.nlink() == 0;
            let ino = md.ino();
            let acc = flags & O_ACCMODE;
            let ends = self.pipe_ends.entry(ino).or_insert((false, false));
            if acc == O_RDWR || acc == 0 {
                ends.0 = true;
            }
            if acc == O_RDWR || acc == O_WRONLY {
                ends.1 = true;
            }
            if !self.pipes.contains_key(&ino) && (acc != O_WRONLY || unlinked) {
                let stolen = if acc == O_WRONLY { crate::fifo::reader_of(pid, fd)? } else { sys::pidfd_getfd(pidfd, fd)? };
                let (data, size) = peek_pipe(&stolen)?;
                self.pipes.insert(ino, Json::obj().with("pipe_id", ino).with("data", base64::encode(&data)).with("size", size));
            }
            let mut j = base.with("kind", if is_pipe { "pipe" } else { "fifo" }).with("pipe_id", ino);
            if unlinked {
                j.set("path", target.strip_suffix(" (deleted)").unwrap_or(target))
                    .set("unlinked", true)
                    .set("mode", md.mode() & 0o7777)
                    .set("uid", md.uid())
                    .set("gid", md.gid());
                if !self.unlinked_fifos.iter().any(|u| u.1 == md.dev() && u.2 == ino) {
                    self.unlinked_fifos.push((id, md.dev(), ino));
                }
            } else if !is_pipe {
                j.set("path", target);
            }
            return Ok(j);
        }
        let ctx = FileCtx { pid: holder, pidfd, fd, target, md, info, base, in_flight: &self.in_flight };
        if ft.is_socket() {
            return crate::sockets::describe(&ctx);
        }
        if target.starts_with("anon_inode:") || target.starts_with("/memfd:") {
            return crate::anonfd::describe(&ctx);
        }
        unsupported(target)
    }

    /// A pipe with only one end inside the tree talks to something outside
    /// it that cannot come along; such ends are marked `external` and are
    /// reconnected to /dev/null on restore (reads see end-of-file, writes are
    /// discarded) rather than failing the whole dump.
    fn mark_external_pipes(&mut self) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut external = Vec::new();
        let me = sys::getpid();
        for (i, f) in self.files.iter().enumerate() {
            if f.str_of("kind") != Some("pipe") {
                continue;
            }
            let ino = f.u64_of("pipe_id").unwrap_or(0);
            if let Some((r, w)) = self.pipe_ends.get(&ino) {
                if !(*r && *w) {
                    let id = f.u64_of("id").unwrap_or(0);
                    let holder = self.seen.iter().find(|s| s.id == id && s.pid != me);
                    let where_ = match holder {
                        Some(s) => format!("fd {} of process {}", s.fd, s.pid),
                        None => self.where_of(id),
                    };
                    // On this host (same boot), while the process still
                    // holds it, the restore opens the same pipe through
                    // /proc: a live migration on one host keeps talking to
                    // the process outside.
                    let reopen = holder.map(|s| Json::obj().with("pid", s.pid).with("fd", s.fd).with("boot_id", proc::boot_id()));
                    external.push((i, reopen));
                    warnings.push(format!(
                        "{}: pipe:[{}] leads outside the process tree; a restore on this host while the process still runs reopens it, anywhere else it is connected to /dev/null",
                        where_, ino
                    ));
                }
            }
        }
        for (i, reopen) in external {
            self.files[i].set("external", true);
            if let Some(r) = reopen {
                self.files[i].set("reopen", r);
            }
        }
        warnings
    }

    /// An entry under /proc of a process outside the tree is opened by its
    /// path on restore, as any file: whatever process has that pid then.
    fn mark_outside_proc_entries(&mut self, tree: &[Pid]) -> Vec<String> {
        let mut warnings = Vec::new();
        for i in 0..self.files.len() {
            let f = &self.files[i];
            let Some(p) = f.i64_of("proc_pid") else { continue };
            if tree.contains(&(p as Pid)) || f.bool_of("proc_dead") {
                continue;
            }
            warnings.push(format!(
                "{}: {} belongs to process {}, outside the process tree; the restore opens that path again, in whatever process then has pid {}",
                self.where_of(f.u64_of("id").unwrap_or(0)),
                f.str_of("path").unwrap_or(""),
                p,
                p
            ));
            self.files[i].set("proc_pid", Json::Null);
        }
        warnings
    }

    /// An entry of a process of the tree is opened only once the stubs
    /// exist, after the unix queues that carry descriptors are refilled:
    /// it cannot be one of those descriptors.
    fn refuse_proc_entries_in_flight(&self) -> Result<()> {
        let carried: Vec<u64> = self
            .files
            .iter()
            .filter_map(|f| f.get("sock"))
            .flat_map(|s| s.arr_of("in_flight").iter().flat_map(|e| e.arr_of("files").iter().filter_map(Json::as_u64)))
            .collect();
        let entry = self.files.iter().find(|f| f.i64_of("proc_pid").is_some() && f.u64_of("id").is_some_and(|id| carried.contains(&id)));
        match entry {
            Some(f) => Err(Error::new(
                "EUNSUPPORTED",
                format!(
                    "{}: {} is in flight in a unix socket queue: an entry under /proc/PID of a process of the tree cannot travel in flight",
                    self.where_of(f.u64_of("id").unwrap_or(0)),
                    f.str_of("path").unwrap_or("")
                ),
            )),
            None => Ok(()),
        }
    }

    /// (files, pipes, warnings); `tree`: pids of every process dumped.
    pub fn finish(mut self, tree: &[Pid]) -> Result<(Vec<Json>, Vec<Json>, Vec<String>)> {
        let ids = self.describe_in_flight()?;
        crate::inflight::link(&mut self.files, &ids)?;
        crate::sockets::check_unix_peers(&self.files, &|id| self.where_of(id))?;
        let mut warnings = self.mark_external_pipes();
        warnings.extend(self.mark_outside_proc_entries(tree));
        self.refuse_proc_entries_in_flight()?;
        warnings.extend(crate::sockets::unix_warnings(&self.files, &|id| self.where_of(id)));
        let fifos: Vec<(u64, u64)> = self.unlinked_fifos.iter().map(|u| (u.1, u.2)).collect();
        let outside = if fifos.is_empty() { Vec::new() } else { crate::fifo::held_outside(&fifos, tree) };
        for ((id, _, _), held) in self.unlinked_fifos.iter().zip(outside) {
            if let Some((p, fd)) = held {
                let path = self.files.iter().find(|f| f.u64_of("id") == Some(*id)).and_then(|f| f.str_of("path")).unwrap_or("");
                warnings.push(format!(
                    "{}: FIFO {} (removed while open) is also open in process {} (fd {}), outside the process tree; restored, the tree gets a FIFO of its own",
                    self.where_of(*id),
                    path,
                    p,
                    fd
                ));
            }
        }
        warnings.extend(self.ptys.link(&mut self.files, tree));
        let pipes = std::mem::take(&mut self.pipes).into_values().collect();
        Ok((self.files, pipes, warnings))
    }
}

/// What a per-kind module needs to describe one descriptor at dump time.
pub struct FileCtx<'a> {
    /// The process holding the descriptor (for one in flight: the process
    /// holding the socket whose queue carries it), whose working directory
    /// relative names are looked up in.
    pub pid: Pid,
    /// pidfd of the process, for pidfd_getfd (a copy of the descriptor).
    pub pidfd: &'a Fd,
    pub fd: i32,
    /// readlink of /proc/PID/fd/N
    pub target: &'a str,
    pub md: &'a std::fs::Metadata,
    pub info: &'a proc::FdInfo,
    /// {"id", "flags", "pos"} to extend with "kind" and the kind's fields.
    pub base: Json,
    /// Where descriptors found in flight in a socket's queue go.
    pub in_flight: &'a crate::inflight::Sink,
}

impl FileCtx<'_> {
    pub fn unsupported<T>(&self, what: &str) -> Result<T> {
        Err(Error::new("EUNSUPPORTED", format!("fd {}: {} is not supported", self.fd, what)))
    }
}

// ---- restore side ----

/// The host pid of the process a /proc entry names.
fn proc_entry_host(f: &Json, hosts: &BTreeMap<Pid, Pid>) -> Result<Pid> {
    let pid = f.i64_of("proc_pid").unwrap_or(0) as Pid;
    hosts.get(&pid).copied().ok_or_else(|| Error::new("EIMAGE", format!("{} names process {}, which is not in the image", f.str_of("path").unwrap_or(""), pid)))
}

/// A /proc entry of a process of the tree, under its host pid; at its
/// offset when `seek` (else `Opened::seek_proc_entries` puts it there).
fn open_proc_entry(f: &Json, hosts: &BTreeMap<Pid, Pid>, seek: bool) -> Result<Fd> {
    let pid = f.i64_of("proc_pid").unwrap_or(0) as Pid;
    let path = f.str_of("path").unwrap_or("");
    let host = proc_entry_host(f, hosts)?;
    let here = crate::procpid::on_host(path, pid, host);
    let fd = open_path(&here, open_flags(f)).map_err(|e| Error::new("EFILE", format!("{} of the restored process {}: {}", path, pid, e.message)))?;
    if seek {
        seek_entry(&fd, f)?;
    }
    Ok(fd)
}

/// Put a regular /proc entry read part of the way at its offset (an O_PATH
/// one has none).
fn seek_entry(fd: &Fd, f: &Json) -> Result<()> {
    let pos = f.u64_of("pos").unwrap_or(0);
    if f.str_of("kind") == Some("reg") && open_flags(f) & sys::O_PATH == 0 && pos != 0 {
        sys::call(&format!("lseek {}", f.str_of("path").unwrap_or("")), nr::LSEEK, &[fd.raw() as u64, pos, 0])?;
    }
    Ok(())
}

/// Open every file description of the image in phaul's own process.
pub struct Opened {
    pub by_id: BTreeMap<u64, Fd>,
    /// The new pseudo-terminal pairs, for the controlling terminal.
    pub ptys: crate::tty::Pairs,
    /// FIFO handles kept open until every end is installed, so data survives.
    keep: Vec<Fd>,
    /// Image pid -> host pid of every process of the tree (open_proc_entries).
    pub proc_hosts: BTreeMap<Pid, Pid>,
    /// Entries naming a descriptor (/proc/PID/fdinfo/N), by file id: opened
    /// by `open_deferred` once the descriptors are installed.
    deferred: BTreeMap<u64, Json>,
}

impl Opened {
    /// Every end is installed: phaul's own ends of pipes and FIFOs go before
    /// the tree runs. Held on, they were one more reader and writer: a write
    /// to a FIFO left without readers succeeded instead of failing with
    /// EPIPE, a read of one left without writers waited instead of seeing
    /// end-of-file.
    pub fn release_pipes(&mut self) {
        self.keep.clear();
    }

    /// Entries under /proc of processes of the tree, once their stubs
    /// exist: opened under the pid phaul sees each with (`hosts`: image
    /// pid -> host pid, kept for working directories under /proc too).
    pub fn open_proc_entries(&mut self, files: &[Json], hosts: BTreeMap<Pid, Pid>) -> Result<()> {
        for f in files {
            if f.i64_of("proc_pid").is_none() {
                continue;
            }
            let id = f.u64_of("id").ok_or_else(|| Error::new("EIMAGE", "a file entry has no id"))?;
            if crate::procpid::names_descriptor(f.str_of("path").unwrap_or("")) {
                proc_entry_host(f, &hosts)?; // an image naming another process fails here, not later
                self.deferred.insert(id, f.clone());
                continue;
            }
            let fd = open_proc_entry(f, &hosts, false)?;
            self.by_id.insert(id, fd);
        }
        self.proc_hosts = hosts;
        Ok(())
    }

    /// The file ids `open_deferred` opens.
    pub fn is_deferred(&self, id: u64) -> bool {
        self.deferred.contains_key(&id)
    }

    /// An entry naming a descriptor, once that descriptor is installed
    /// (a process reading its own /proc/self/fdinfo/N at the freeze). One
    /// open per process holding it: the file offset is not shared.
    pub fn open_deferred(&self, id: u64) -> Result<Fd> {
        let f = self.deferred.get(&id).ok_or_else(|| Error::new("EPANIC", format!("file {} is not a deferred /proc entry", id)))?;
        open_proc_entry(f, &self.proc_hosts, true)
    }

    /// Put the /proc entries of the tree at their offsets, once every
    /// process has its memory, descriptors and attributes back. Their text
    /// is made when read: a seek done at their open, in a stub still empty,
    /// went past the end of /proc/PID/maps (then read nothing more).
    pub fn seek_proc_entries(&self, files: &[Json]) -> Result<()> {
        for f in files.iter().filter(|f| f.i64_of("proc_pid").is_some()) {
            if let Some(fd) = self.by_id.get(&f.u64_of("id").unwrap_or(0)) {
                seek_entry(fd, f)?;
            }
        }
        Ok(())
    }

    /// Put every restored TCP socket into repair mode, so that killing a
    /// restored copy that must not live (a migration rolled back after the
    /// restore) closes its connections without a FIN or RST reaching the
    /// peer, which stays connected to the source copy.
    pub fn silence_tcp(&self) {
        const SOL_TCP: u64 = 6;
        const TCP_REPAIR: u64 = 19;
        let one: i32 = 1;
        for fd in self.by_id.values() {
            // Fails harmlessly on anything that is not a TCP socket.
            let _ = unsafe { sys::raw(54 /* setsockopt */, &[fd.raw() as u64, SOL_TCP, TCP_REPAIR, &one as *const i32 as u64, 4]) };
        }
    }
}

/// The flags a description is opened again with.
fn open_flags(f: &Json) -> u32 {
    f.u64_of("flags").unwrap_or(0) as u32 & !(O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC | O_NOCTTY)
}

fn open_path(path: &str, flags: u32) -> Result<Fd> {
    let c = cstr(path)?;
    sys::call(&format!("open {}", path), nr::OPEN, &[c.as_ptr() as u64, (flags | O_CLOEXEC) as u64, 0]).map(|f| Fd(f as i32))
}

const NAME_TO_HANDLE_AT: i64 = 303;
const OPEN_BY_HANDLE_AT: i64 = 304;
const MAX_HANDLE_SZ: usize = 128;

/// The file handle (name_to_handle_at) of the file `path` leads to, and
/// its type: what opens that very inode again on this host, with no name.
pub fn file_handle(path: &str) -> Result<(Vec<u8>, i32)> {
    const AT_FDCWD: i64 = -100;
    const AT_SYMLINK_FOLLOW: u64 = 0x400;
    let c = cstr(path)?;
    let mut buf = [0u8; 8 + MAX_HANDLE_SZ];
    buf[0..4].copy_from_slice(&(MAX_HANDLE_SZ as u32).to_le_bytes());
    let mut mount_id: i32 = 0;
    sys::call(
        &format!("name_to_handle_at {}", path),
        NAME_TO_HANDLE_AT,
        &[AT_FDCWD as u64, c.as_ptr() as u64, buf.as_mut_ptr() as u64, &mut mount_id as *mut i32 as u64, AT_SYMLINK_FOLLOW],
    )?;
    let n = (u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize).min(MAX_HANDLE_SZ);
    Ok((buf[8..8 + n].to_vec(), i32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]])))
}

/// A file removed while open under `path` ("PATH (deleted)") but linked
/// under another name: opened again by its handle, through the directory it
/// was in (which names the filesystem), and checked to be the same inode.
pub fn open_by_handle(f: &Json, path: &str, flags: u32) -> Result<Fd> {
    let what = format!("file {} (removed while open, linked elsewhere)", path.trim_end_matches(" (deleted)"));
    let handle = f.str_of("handle").and_then(base64::decode).filter(|h| !h.is_empty() && h.len() <= MAX_HANDLE_SZ).ok_or_else(|| Error::new("EIMAGE", format!("{}: its file handle in the image is malformed", what)))?;
    let dir = std::path::Path::new(path.trim_end_matches(" (deleted)")).parent().and_then(|p| p.to_str()).unwrap_or("/").to_string();
    // (open_by_handle_at takes no O_PATH descriptor for the filesystem)
    let mount = open_path(&dir, 0o200000 /* O_RDONLY | O_DIRECTORY */).map_err(|e| Error::new("EFILE", format!("{}: {}", what, e.message)))?;
    let mut buf = Vec::with_capacity(8 + handle.len());
    buf.extend_from_slice(&(handle.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(f.i64_of("handle_type").unwrap_or(0) as i32).to_le_bytes());
    buf.extend_from_slice(&handle);
    let keep = flags & !(0o100 | 0o200 | 0o1000); // not O_CREAT, O_EXCL, O_TRUNC
    let fd = sys::call(&format!("open_by_handle_at {}", what), OPEN_BY_HANDLE_AT, &[mount.raw() as u64, buf.as_ptr() as u64, (keep | O_CLOEXEC) as u64])
        .map(|r| Fd(r as i32))
        .map_err(|e| Error::new("EFILE", format!("{} does not open here by its handle: {}", what, e.message)))?;
    let want = f.get("stat").and_then(|s| s.u64_of("ino"));
    let md = std::fs::metadata(format!("/proc/self/fd/{}", fd.raw())).map_err(|e| Error::new("EFILE", format!("{}: {}", what, e)))?;
    if want.is_some_and(|ino| ino != md.ino()) {
        return Err(Error::new("EFILE", format!("{}: its handle opens another file here", what)));
    }
    Ok(fd)
}

fn write_all(fd: &Fd, data: &[u8]) -> Result<()> {
    let mut off = 0;
    while off < data.len() {
        let n = sys::call("write to pipe", nr::WRITE, &[fd.raw() as u64, data[off..].as_ptr() as u64, (data.len() - off) as u64])?;
        off += n as usize;
    }
    Ok(())
}

pub fn check_file_identity(path: &str, want: Option<&Json>) -> Result<()> {
    let want = match want {
        Some(w) => w,
        None => return Ok(()),
    };
    let md = std::fs::metadata(path).map_err(|_| Error::new("EFILE", format!("file {} needed by the process is missing", path)))?;
    let size = want.u64_of("size");
    let mtime = want.u64_of("mtime_ns");
    let now_mtime = (md.mtime() as i64 * 1_000_000_000 + md.mtime_nsec()) as u64;
    if size.map(|s| s != md.size()).unwrap_or(false) || mtime.map(|m| m != now_mtime).unwrap_or(false) {
        return Err(Error::new("EFILE", format!("file {} needed by the process has changed since the dump", path)));
    }
    Ok(())
}

/// `want` if nothing has that name, else a free name beside it: where a
/// removed object is made again for a moment.
fn free_name_beside(want: &str) -> String {
    let mut name = want.to_string();
    let mut n = 0;
    while std::fs::symlink_metadata(&name).is_ok() {
        n += 1;
        name = format!("{}.phaul-{}-{}", want, sys::getpid(), n);
    }
    name
}

/// A directory removed while open ("PATH (deleted)"): made again for the
/// open and removed right after (under a free name beside it when PATH is
/// taken), so the descriptor is on a removed, empty directory again.
fn open_removed_dir(path: &str, flags: u32) -> Result<Fd> {
    let name = free_name_beside(path.trim_end_matches(" (deleted)"));
    std::fs::create_dir(&name).map_err(|e| Error::new("EFILE", format!("directory {} cannot be made again: {}", path, e)))?;
    let fd = open_path(&name, flags);
    let _ = std::fs::remove_dir(&name);
    fd.map_err(|e| Error::new("EFILE", format!("directory {}: {}", path, e.message)))
}

/// A character device node removed while open ("PATH (deleted)"): a node
/// of the same device, mode and owner made again for the open and removed
/// right after (under a free name beside it when PATH is taken). Only
/// devices that mean the same on every host get here (chr_supported).
fn open_removed_device(f: &Json, path: &str, flags: u32) -> Result<Fd> {
    const S_IFCHR: u64 = 0o020000;
    const MKNOD: i64 = 133;
    const CHOWN: i64 = 92;
    let rdev = f.u64_of("rdev").ok_or_else(|| Error::new("EIMAGE", format!("device {} has no device number in the image", path)))?;
    if !chr_supported(rdev) {
        return Err(Error::new("EIMAGE", format!("device {} is not one phaul restores", path)));
    }
    let name = free_name_beside(path.trim_end_matches(" (deleted)"));
    let c = std::ffi::CString::new(name.as_str()).map_err(|_| Error::new("EIMAGE", "a device path in the image holds a NUL byte"))?;
    let mode = f.u64_of("mode").unwrap_or(0o600) & 0o7777;
    sys::call(&format!("mknod {}", name), MKNOD, &[c.as_ptr() as u64, S_IFCHR | mode, rdev]).map_err(|e| Error::new("EFILE", format!("device {} cannot be made again: {}", path, e.message)))?;
    let made = (|| {
        if let (Some(uid), Some(gid)) = (f.u64_of("uid"), f.u64_of("gid")) {
            sys::call(&format!("chown {}", name), CHOWN, &[c.as_ptr() as u64, uid, gid])?;
        }
        // mknod's mode went through the umask.
        sys::call(&format!("chmod {}", name), 90, &[c.as_ptr() as u64, mode])?;
        open_path(&name, flags)
    })();
    let _ = std::fs::remove_file(&name);
    made.map_err(|e| Error::new("EFILE", format!("device {}: {}", path, e.message)))
}

pub fn open_all(files: &[Json], pipes: &[Json]) -> Result<Opened> {
    let mut by_id = BTreeMap::new();
    let mut keep = Vec::new();
    let mut pipe_objs: BTreeMap<u64, (Fd, Fd)> = BTreeMap::new();
    let ptys = crate::tty::open_pairs(files)?;
    let pipe_data = |id: u64| -> Result<(Vec<u8>, u64)> {
        match pipes.iter().find(|p| p.u64_of("pipe_id") == Some(id)) {
            Some(p) => Ok((
                p.str_of("data").and_then(base64::decode).ok_or_else(|| Error::new("EIMAGE", "pipe data in the image is malformed"))?,
                p.u64_of("size").unwrap_or(65536),
            )),
            None => Ok((Vec::new(), 65536)),
        }
    };
    let r = open_each(files, &pipe_data, &ptys, &mut pipe_objs, &mut by_id).and_then(|_| crate::sockets::finish_opened(&by_id));
    if let Err(e) = r {
        crate::sockets::abandon_opened();
        return Err(e);
    }
    for (_, (a, b)) in pipe_objs {
        keep.push(a);
        keep.push(b);
    }
    ptys.relock()?;
    Ok(Opened { by_id, ptys, keep, proc_hosts: BTreeMap::new(), deferred: BTreeMap::new() })
}

fn open_each(
    files: &[Json],
    pipe_data: &dyn Fn(u64) -> Result<(Vec<u8>, u64)>,
    ptys: &crate::tty::Pairs,
    pipe_objs: &mut BTreeMap<u64, (Fd, Fd)>,
    by_id: &mut BTreeMap<u64, Fd>,
) -> Result<()> {
    for f in files {
        let id = f.u64_of("id").ok_or_else(|| Error::new("EIMAGE", "a file entry has no id"))?;
        let flags = open_flags(f);
        let path = f.str_of("path").unwrap_or("");
        if f.i64_of("proc_pid").is_some() {
            continue; // once the stubs exist: Opened::open_proc_entries
        }
        let fd = match f.str_of("kind").unwrap_or("") {
            "reg" if f.get("handle").is_some() => {
                let fd = open_by_handle(f, path, flags)?;
                if flags & sys::O_PATH == 0 {
                    sys::call(&format!("lseek {}", path), nr::LSEEK, &[fd.raw() as u64, f.u64_of("pos").unwrap_or(0), 0])?;
                }
                fd
            }
            "reg" => {
                let md = std::fs::metadata(path).map_err(|_| Error::new("EFILE", format!("file {} needed by the process is missing", path)))?;
                let pos = f.u64_of("pos").unwrap_or(0);
                let saved_size = f.get("stat").and_then(|s| s.u64_of("size"));
                // A file shorter than where the process was, or than it was at
                // the dump, has been truncated or replaced meanwhile (files that
                // only grew, like logs others append to, are fine).
                // (Files of /proc and /sys report size 0: not comparable.)
                let pseudo = path.starts_with("/proc/") || path.starts_with("/sys/");
                if !pseudo && (md.len() < pos || saved_size.map(|s| md.len() < s).unwrap_or(false)) {
                    return Err(Error::new(
                        "EFILE",
                        format!("file {} needed by the process has changed since the dump (it is {} bytes, was {})", path, md.len(), saved_size.unwrap_or(pos)),
                    ));
                }
                let fd = open_path(path, flags)?;
                // (An O_PATH descriptor has no offset: lseek fails with EBADF.)
                if flags & sys::O_PATH == 0 {
                    sys::call(&format!("lseek {}", path), nr::LSEEK, &[fd.raw() as u64, pos, 0])?;
                }
                fd
            }
            "dir" if path.ends_with(" (deleted)") => open_removed_dir(path, flags)?,
            "dir" => open_path(path, flags).map_err(|e| Error::new("EFILE", format!("directory {} needed by the process: {}", path, e.message)))?,
            "chr" if path.ends_with(" (deleted)") => open_removed_device(f, path, flags | O_NOCTTY)?,
            "chr" => open_path(path, flags | O_NOCTTY).map_err(|e| Error::new("EFILE", format!("device {} needed by the process: {}", path, e.message)))?,
            "pipe" if f.bool_of("external") => match reopen_external_pipe(f, flags) {
                Some(fd) => fd,
                None => open_path("/dev/null", flags & (O_ACCMODE | O_NONBLOCK))?,
            },
            "pipe" => {
                let pid_ = f.u64_of("pipe_id").unwrap_or(0);
                if !pipe_objs.contains_key(&pid_) {
                    let mut p = [0i32; 2];
                    sys::call("pipe2", 293, &[p.as_mut_ptr() as u64, O_CLOEXEC as u64])?;
                    let (r, w) = (Fd(p[0]), Fd(p[1]));
                    let (data, size) = pipe_data(pid_)?;
                    let _ = sys::call("F_SETPIPE_SZ", nr::FCNTL, &[w.raw() as u64, F_SETPIPE_SZ, size.max(data.len() as u64)]);
                    write_all(&w, &data)?;
                    pipe_objs.insert(pid_, (r, w));
                }
                let (r, w) = &pipe_objs[&pid_];
                let end = if flags & O_ACCMODE == O_WRONLY { w } else { r };
                let dup = Fd(sys::call("dup", nr::FCNTL, &[end.raw() as u64, 1030 /* F_DUPFD_CLOEXEC */, 0])? as i32);
                sys::call("F_SETFL", nr::FCNTL, &[dup.raw() as u64, F_SETFL, (flags & O_NONBLOCK) as u64])?;
                dup
            }
            "fifo" => {
                let pid_ = f.u64_of("pipe_id").unwrap_or(0);
                let unlinked = f.bool_of("unlinked");
                if !pipe_objs.contains_key(&pid_) {
                    let rw = if unlinked {
                        let owner = f.u64_of("uid").zip(f.u64_of("gid"));
                        crate::fifo::make_unlinked(path, f.u64_of("mode").unwrap_or(0o600), owner)?
                    } else {
                        open_path(path, O_RDWR | O_NONBLOCK).map_err(|e| Error::new("EFILE", format!("FIFO {} needed by the process: {}", path, e.message)))?
                    };
                    let (data, size) = pipe_data(pid_)?;
                    // A FIFO that still holds data is the very pipe the process
                    // had, still open elsewhere (a migration on one host, where
                    // the frozen source keeps it): its contents are already there.
                    let mut queued: i32 = 0;
                    const FIONREAD: u64 = 0x541b;
                    let _ = sys::call("FIONREAD", nr::IOCTL, &[rw.raw() as u64, FIONREAD, &mut queued as *mut i32 as u64]);
                    if queued == 0 {
                        let _ = sys::call("F_SETPIPE_SZ", nr::FCNTL, &[rw.raw() as u64, F_SETPIPE_SZ, size.max(data.len() as u64)]);
                        write_all(&rw, &data)?;
                    }
                    let dup = Fd(sys::call("dup", nr::FCNTL, &[rw.raw() as u64, 1030, 0])? as i32);
                    pipe_objs.insert(pid_, (rw, dup));
                }
                // A removed FIFO has no name to open: its descriptions are
                // opened through the one phaul keeps.
                let fd = if unlinked { crate::fifo::reopen(&pipe_objs[&pid_].0, flags | O_NONBLOCK)? } else { open_path(path, flags | O_NONBLOCK)? };
                sys::call("F_SETFL", nr::FCNTL, &[fd.raw() as u64, F_SETFL, (flags & O_NONBLOCK) as u64])?;
                fd
            }
            "pty_master" => ptys.master(f)?,
            "pty_slave" => ptys.slave(f)?,
            k if crate::sockets::handles(k) => crate::sockets::open(f)?,
            k if crate::anonfd::handles(k) => crate::anonfd::open(f)?,
            k => return Err(Error::new("EIMAGE", format!("file kind {:?} in the image is not known", k))),
        };
        by_id.insert(id, fd);
    }
    Ok(())
}

/// The soft RLIMIT_NOFILE of `pid` (1024 if it cannot be read).
fn nofile_limit(pid: Pid) -> u64 {
    let mut cur = [0u64; 2];
    match sys::call("prlimit(NOFILE)", nr::PRLIMIT64, &[pid as u64, 7, 0, cur.as_mut_ptr() as u64]) {
        Ok(_) => cur[0],
        Err(_) => 1024,
    }
}

/// Up to `n` descriptor numbers of `pid` below `limit` that are not open
/// and not in `avoid`, highest first.
fn free_below(pid: Pid, limit: u64, avoid: &BTreeSet<u64>, n: usize) -> Vec<u64> {
    let open: BTreeSet<u64> = proc::fds(pid).unwrap_or_default().into_iter().map(|f| f as u64).collect();
    (0..limit.min(1 << 20)).rev().filter(|f| !open.contains(f) && !avoid.contains(f)).take(n).collect()
}

/// A channel to pass descriptors into a stub: a datagram socketpair created
/// inside the stub, whose sending end phaul takes with pidfd_getfd.
pub struct FdChannel {
    sender: Fd,
    stub_end: u64,
}

impl FdChannel {
    pub fn open(inj: &mut Injector, pidfd: &Fd, park_at: u64) -> Result<FdChannel> {
        const AF_UNIX: u64 = 1;
        const SOCK_DGRAM: u64 = 2;
        let sv = inj.scratch(4096)? + 1024;
        inj.call("socketpair", nr::SOCKETPAIR, &[AF_UNIX, SOCK_DGRAM | O_CLOEXEC as u64, 0, sv])?;
        let b = inj.read_mem(sv, 8)?;
        let a = i32::from_le_bytes(b[0..4].try_into().unwrap_or([0; 4])) as u64;
        let w = i32::from_le_bytes(b[4..8].try_into().unwrap_or([0; 4]));
        let sender = sys::pidfd_getfd(pidfd, w)?;
        inj.call("close", nr::CLOSE, &[w as u64])?;
        // Park the receiving end above every descriptor the target uses;
        // past the descriptor limit (a process that uses numbers up to its
        // limit), in the highest free number below it.
        const EINVAL: i32 = 22;
        let parked = match inj.call("F_DUPFD_CLOEXEC", nr::FCNTL, &[a, 1030, park_at]) {
            Err(e) if e.errno == EINVAL => {
                let top = free_below(inj.pid, nofile_limit(inj.pid), &BTreeSet::new(), 1).first().copied();
                let top = top.ok_or_else(|| Error::new("EUNSUPPORTED", format!("process {} uses every descriptor its limit allows", inj.pid)))?;
                inj.call("dup3 (park)", 292, &[a, top, O_CLOEXEC as u64])?
            }
            r => r?,
        };
        inj.call("close", nr::CLOSE, &[a])?;
        Ok(FdChannel { sender, stub_end: parked })
    }

    /// Install `fd` (phaul's) as descriptor `target` in the stub, with
    /// single injected calls: usable while the stub's layout is being built,
    /// where a batch area could sit in the way of the target's mappings.
    pub fn install(&self, inj: &mut Injector, fd: &Fd, target: i32, cloexec: bool) -> Result<()> {
        send_fds(&self.sender, &[fd.raw()])?;
        let data = inj.scratch(4096)? + 1536;
        let got = self.receive(inj, data, 1, false)?[0];
        if got as i32 != target {
            inj.call("dup3", 292, &[got, target as u64, if cloexec { O_CLOEXEC as u64 } else { 0 }])?;
            inj.call("close", nr::CLOSE, &[got])?;
        } else if !cloexec {
            inj.call("F_SETFD", nr::FCNTL, &[got, 2, 0])?;
        }
        Ok(())
    }

    /// Pass `fd` into the stub for a moment: the descriptor number it got
    /// there (close-on-exec), for the caller to use and close.
    pub fn pass(&self, inj: &mut Injector, fd: &Fd) -> Result<u64> {
        send_fds(&self.sender, &[fd.raw()])?;
        let data = inj.scratch(4096)? + 1536;
        Ok(self.receive(inj, data, 1, false)?[0])
    }

    /// Install each `(fd, target, cloexec)`: the descriptors travel in one
    /// message per chunk, and the stub receives and places a chunk in two
    /// batches of injected calls (three calls per descriptor, each a round
    /// trip of its own, made a process with many files slow to restore).
    pub fn install_all(&self, inj: &mut Injector, items: &[(&Fd, i32, bool)]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        crate::batch::reserve(inj, 1)?;
        let data = crate::batch::data(inj, 0)?;
        let first_high = items.iter().map(|i| i.1 as u64).max().unwrap_or(0).max(self.stub_end) + 1;
        let limit = nofile_limit(inj.pid);
        let targets: BTreeSet<u64> = items.iter().map(|i| i.1 as u64).collect();
        for chunk in items.chunks(FDS_PER_MESSAGE) {
            let fds: Vec<i32> = chunk.iter().map(|i| i.0.raw()).collect();
            send_fds(&self.sender, &fds)?;
            let got = self.receive(inj, data, chunk.len(), true)?;
            let mut calls = Vec::new();
            let mut at: Vec<u64> = got.clone();
            // A received descriptor sitting on another's target moves away
            // first (dup3 would close it): above every target, or, for a
            // process that uses numbers up to its limit, to free numbers
            // below the limit that are nobody's target. (Each chunk's moved
            // descriptors are closed by the end of the chunk.)
            let moving: Vec<usize> = (0..at.len()).filter(|&k| chunk.iter().enumerate().any(|(j, it)| j != k && it.1 as u64 == at[k])).collect();
            let room: Vec<u64> = if first_high + moving.len() as u64 <= limit {
                (first_high..first_high + moving.len() as u64).collect()
            } else {
                free_below(inj.pid, limit, &targets, moving.len())
            };
            if room.len() < moving.len() {
                return Err(Error::new("EUNSUPPORTED", format!("process {} uses every descriptor its limit allows: no room to place them", inj.pid)));
            }
            for (&k, &spare) in moving.iter().zip(&room) {
                calls.push(Call::new("dup3 (out of the way)", 292, &[at[k], spare, O_CLOEXEC as u64]));
                calls.push(Call::new("close", nr::CLOSE, &[at[k]]));
                at[k] = spare;
            }
            for (k, &(_, target, cloexec)) in chunk.iter().enumerate() {
                if at[k] == target as u64 {
                    if !cloexec {
                        calls.push(Call::new("F_SETFD", nr::FCNTL, &[at[k], 2, 0]));
                    }
                    continue;
                }
                calls.push(Call::new(format!("dup3 to fd {}", target), 292, &[at[k], target as u64, if cloexec { O_CLOEXEC as u64 } else { 0 }]));
                calls.push(Call::new("close", nr::CLOSE, &[at[k]]));
            }
            crate::batch::run_checked(&mut [Job { inj: &mut *inj, slot: 0, calls }])?;
        }
        Ok(())
    }

    /// recvmsg of one message of `n` descriptors in the stub (`batched`: as
    /// a batch, in slot 0); their numbers. `data`: room for the message.
    fn receive(&self, inj: &mut Injector, data: u64, n: usize, batched: bool) -> Result<Vec<u64>> {
        // struct msghdr (56 bytes) + iovec (16) + 1 byte + cmsg buffer
        let (iov, byte, cmsg) = (data + 64, data + 96, data + 128);
        let clen = 16 + 4 * n as u64;
        let cspace = (clen + 7) & !7;
        let mut m = Vec::new();
        for v in [0u64, 0, iov, 1, cmsg, cspace, 0] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&byte.to_le_bytes());
        m.extend_from_slice(&1u64.to_le_bytes());
        inj.write_mem(data, &m)?;
        const MSG_CMSG_CLOEXEC: u64 = 0x40000000;
        if batched {
            let calls = vec![Call::new("recvmsg(fds)", nr::RECVMSG, &[self.stub_end, data, MSG_CMSG_CLOEXEC])];
            crate::batch::run_checked(&mut [Job { inj: &mut *inj, slot: 0, calls }])?;
        } else {
            inj.call("recvmsg(fd)", nr::RECVMSG, &[self.stub_end, data, MSG_CMSG_CLOEXEC])?;
        }
        let c = inj.read_mem(cmsg, clen as usize)?;
        let len = u64::from_le_bytes(c[0..8].try_into().unwrap_or([0; 8]));
        if len != clen {
            return Err(Error::new("EPROTO", format!("{} descriptors sent to the stub, a control message of {} bytes came", n, len)));
        }
        Ok((0..n).map(|k| i32::from_le_bytes(c[16 + 4 * k..20 + 4 * k].try_into().unwrap_or([0; 4])) as u64).collect())
    }

    pub fn close(self, inj: &mut Injector) -> Result<()> {
        inj.call("close", nr::CLOSE, &[self.stub_end])?;
        Ok(())
    }
}

/// Descriptors per message into a stub: SCM_RIGHTS carries up to 253, and
/// placing a chunk takes up to four calls per descriptor in one batch.
const FDS_PER_MESSAGE: usize = crate::batch::MAX_CALLS / 4;

fn send_fds(sock: &Fd, fds: &[i32]) -> Result<()> {
    let byte = [0u8; 1];
    let iov = [byte.as_ptr() as u64, 1u64];
    // cmsghdr: len (u64), level (i32), type (i32), then the fds, padded to 8.
    let clen = 16 + 4 * fds.len();
    let mut cmsg = vec![0u8; (clen + 7) & !7];
    cmsg[0..8].copy_from_slice(&(clen as u64).to_le_bytes());
    cmsg[8..12].copy_from_slice(&1i32.to_le_bytes()); // SOL_SOCKET
    cmsg[12..16].copy_from_slice(&1i32.to_le_bytes()); // SCM_RIGHTS
    for (k, fd) in fds.iter().enumerate() {
        cmsg[16 + 4 * k..20 + 4 * k].copy_from_slice(&fd.to_le_bytes());
    }
    let msg: [u64; 7] = [0, 0, iov.as_ptr() as u64, 1, cmsg.as_ptr() as u64, cmsg.len() as u64, 0];
    sys::call("sendmsg(fds)", nr::SENDMSG, &[sock.raw() as u64, msg.as_ptr() as u64, 0]).map(|_| ())
}

/// Descriptors a migration cannot carry and that tell themselves by
/// their link alone, refused before pre-copy (not after it, at the freeze
/// or on the destination). io_uring: a new instance's rings cannot be
/// placed where the process has them (the kernel takes no address for them).
pub fn refuse_unsupported_early(pid: Pid) -> Result<()> {
    for fd in proc::fds(pid)? {
        if proc::readlink(&format!("/proc/{}/fd/{}", pid, fd)).is_ok_and(|t| t == "anon_inode:[io_uring]") {
            return Err(Error::new("EUNSUPPORTED", format!("process {}: fd {}: io_uring is not supported", pid, fd)));
        }
    }
    Ok(())
}

/// A POSIX message queue descriptor: a regular file of the mqueue
/// filesystem, whose path (relative to that filesystem) names nothing here.
fn is_mqueue(pid: Pid, fd: i32) -> bool {
    const MQUEUE_MAGIC: i64 = 0x1980_0202;
    let path = format!("/proc/{}/fd/{}\0", pid, fd);
    let mut buf = [0i64; 16]; // struct statfs: f_type first
    matches!(unsafe { sys::raw(137 /* statfs */, &[path.as_ptr() as u64, buf.as_mut_ptr() as u64]) }, Ok(_) if buf[0] == MQUEUE_MAGIC)
}

/// The same pipe as an external end had, opened through /proc/PID/fd/N of
/// the process that held it, when that is on this host (same boot) and
/// still is that pipe. Opened non-blocking (a write end of a pipe with no
/// reader left would wait for one forever), then given the original flags.
fn reopen_external_pipe(f: &Json, flags: u32) -> Option<Fd> {
    let r = f.get("reopen")?;
    if r.str_of("boot_id")? != proc::boot_id() {
        return None;
    }
    let path = format!("/proc/{}/fd/{}", r.i64_of("pid")?, r.i64_of("fd")?);
    if std::fs::metadata(&path).ok()?.ino() != f.u64_of("pipe_id")? {
        return None;
    }
    let fd = open_path(&path, (flags & O_ACCMODE) | O_NONBLOCK).ok()?;
    if flags & O_NONBLOCK == 0 {
        sys::call("F_SETFL", nr::FCNTL, &[fd.raw() as u64, F_SETFL, 0]).ok()?;
    }
    Some(fd)
}
