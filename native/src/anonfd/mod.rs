//! Descriptors without a usable path: eventfd, timerfd, signalfd, epoll,
//! inotify, fanotify, pidfd, userfaultfd, memfd and regular files unlinked while open; plus per-process
//! kernel state that hangs off no descriptor: POSIX timers and file locks.
//!
//! Dump: `describe` reads fdinfo (and a stolen copy of the descriptor, taken
//! with pidfd_getfd) and returns the file description as JSON.
//! Restore: `open` re-creates the object inside phaul; files.rs passes it
//! into the stub with SCM_RIGHTS. What needs the target's own descriptor
//! numbers (epoll watches, locks) or its own identity (POSIX timers) is done
//! by injected syscalls in `after_install`. See docs/event-fds.md.

use crate::files::FileCtx;
use crate::inject::Injector;
use crate::json::Json;
use crate::sys::{self, Error, Fd, Pid, Result};
use std::collections::BTreeMap;
use std::sync::Mutex;

pub mod epoll;
pub mod eventfd;
pub mod fanotify;
pub mod inotify;
pub mod locks;
pub mod memfd;
pub mod pidfd;
pub mod posix_timers;
pub mod signalfd;
pub mod timerfd;
pub mod unlinked;
pub mod userfaultfd;

pub(crate) use crate::sys::{O_CLOEXEC, O_CREAT, O_EXCL, O_NOCTTY, O_NONBLOCK, O_TRUNC};

/// Contents kept in the image for memfds and unlinked files, at most.
pub const MAX_CONTENTS: u64 = 64 << 20;

/// x86_64 syscall numbers used only here.
pub(crate) mod nr {
    pub const FLOCK: i64 = 73;
    pub const FTRUNCATE: i64 = 77;
    pub const UNLINK: i64 = 87;
    pub const FCHMOD: i64 = 91;
    pub const FCHOWN: i64 = 93;
    pub const CLOCK_GETTIME: i64 = 228;
    pub const EPOLL_CTL: i64 = 233;
    pub const INOTIFY_ADD_WATCH: i64 = 254;
    pub const INOTIFY_RM_WATCH: i64 = 255;
    pub const TIMERFD_CREATE: i64 = 283;
    pub const TIMERFD_SETTIME: i64 = 286;
    pub const TIMERFD_GETTIME: i64 = 287;
    pub const SIGNALFD4: i64 = 289;
    pub const EVENTFD2: i64 = 290;
    pub const EPOLL_CREATE1: i64 = 291;
    pub const INOTIFY_INIT1: i64 = 294;
    pub const OPEN_BY_HANDLE_AT: i64 = 304;
    pub const MEMFD_CREATE: i64 = 319;
}

pub fn handles(kind: &str) -> bool {
    matches!(kind, "eventfd" | "epoll" | "timerfd" | "signalfd" | "inotify" | "fanotify" | "memfd" | "unlinked" | "pidfd" | "userfaultfd")
}

pub fn describe(ctx: &FileCtx) -> Result<Json> {
    let t = ctx.target;
    if t.starts_with("/memfd:") {
        return memfd::describe(ctx);
    }
    if t.ends_with(" (deleted)") && ctx.md.file_type().is_file() {
        return unlinked::describe(ctx);
    }
    if pidfd::is_pidfd(t) {
        return pidfd::describe(ctx);
    }
    match t {
        "anon_inode:[eventfd]" => eventfd::describe(ctx),
        "anon_inode:[timerfd]" => timerfd::describe(ctx),
        "anon_inode:[signalfd]" => signalfd::describe(ctx),
        "anon_inode:[eventpoll]" => epoll::describe(ctx),
        "anon_inode:inotify" => inotify::describe(ctx),
        "anon_inode:[fanotify]" => fanotify::describe(ctx),
        t if userfaultfd::is_userfaultfd(t) => userfaultfd::describe(ctx),
        _ => ctx.unsupported(t.strip_prefix("anon_inode:").unwrap_or(t)),
    }
}

pub fn open(f: &Json) -> Result<Fd> {
    let kind = f.str_of("kind").unwrap_or("");
    let fd = match kind {
        "eventfd" => eventfd::open(f)?,
        "timerfd" => timerfd::open(f)?,
        "signalfd" => signalfd::open(f)?,
        "epoll" => epoll::open(f)?,
        "inotify" => inotify::open(f)?,
        "fanotify" => fanotify::open(f)?,
        "memfd" => memfd::open(f)?,
        "unlinked" => unlinked::open(f)?,
        "pidfd" => pidfd::open(f)?,
        "userfaultfd" => userfaultfd::open(f)?,
        k => return Err(Error::new("EIMAGE", format!("descriptor kind {:?} cannot be restored", k))),
    };
    if let Some(id) = f.u64_of("id") {
        registry().files.insert(id, f.clone());
    }
    Ok(fd)
}

/// After every descriptor of a process is installed (epoll watches name
/// target descriptor numbers, so they are added from inside the target).
/// Also restores the per-process extras (POSIX timers, file locks).
pub fn after_install(inj: &mut Injector, p: &Json) -> Result<()> {
    pidfd::after_install(inj, p, false)?; // before epoll: a watch may name one
    userfaultfd::after_install(inj, p)?; // the same
    epoll::after_install(inj, p)?;
    restore_process_extras(inj, p)
}

/// Per-process state read by injecting into the frozen process: fields to
/// add to the process document ("posix_timers", "file_locks").
pub fn dump_process_extras(inj: &mut Injector, pid: Pid) -> Result<Vec<(&'static str, Json)>> {
    let mut out = Vec::new();
    let timers = posix_timers::dump(inj, pid)?;
    if !timers.is_empty() {
        out.push(("posix_timers", Json::from(timers)));
    }
    let locks = locks::dump(pid)?;
    if !locks.is_empty() {
        out.push(("file_locks", Json::from(locks)));
    }
    Ok(out)
}

/// The restore side of `dump_process_extras` (called from `after_install`,
/// once every descriptor of the process is in place).
/// (POSIX timers wait for the threads: restore::finish_tree.)
pub fn restore_process_extras(inj: &mut Injector, p: &Json) -> Result<()> {
    locks::restore(inj, p)
}

/// The restored object (memfd, unlinked file) area `v` maps, duplicated;
/// None when it maps none.
pub fn object_of(v: &crate::memory::Vma) -> Option<Result<Fd>> {
    if v.path.starts_with("/memfd:") {
        return Some(memfd::object_for(v));
    }
    if v.path.ends_with(" (deleted)") {
        return unlinked::object_for(v);
    }
    None
}

/// Map each area from its object. The objects go in through one channel
/// (opening one per area cost 10 injected calls an area: a Python
/// multiprocessing worker with six semaphores took 4.5 ms of frozen time).
pub fn map_objects(inj: &mut Injector, areas: Vec<(crate::memory::Vma, Fd)>) -> Result<()> {
    if areas.is_empty() {
        return Ok(());
    }
    let pidfd = sys::pidfd_open(inj.pid)?;
    let chan = crate::files::FdChannel::open(inj, &pidfd, 1000)?;
    let r = (|| {
        for (v, fd) in &areas {
            let at = chan.pass(inj, fd)?;
            let flags = if v.shared { 0x01 } else { 0x02 } | 0x10; // MAP_SHARED/PRIVATE | MAP_FIXED
            let r = inj.call(&format!("mmap {} at {:#x}", v.path, v.start), crate::sys::nr::MMAP, &[v.start, v.end - v.start, v.prot as u64, flags, at, v.pgoff]);
            inj.call("close", crate::sys::nr::CLOSE, &[at])?;
            r?;
        }
        Ok(())
    })();
    chan.close(inj)?;
    r
}

// ---- shared helpers ----

/// Objects restored by `open`, for later steps of the same restore
/// (the engine runs each session in a process of its own).
pub(crate) struct Registry {
    /// file id -> its image entry
    pub files: BTreeMap<u64, Json>,
    /// memfd_id / unlinked_id -> (name or path, the object)
    pub objects: BTreeMap<(u8, u64), (String, Fd)>,
    /// epoll file ids whose watches were added already
    pub epoll_done: Vec<u64>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

pub(crate) fn registry() -> RegistryGuard {
    let mut g = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(Registry { files: BTreeMap::new(), objects: BTreeMap::new(), epoll_done: Vec::new() });
    }
    RegistryGuard(g)
}

pub(crate) struct RegistryGuard(std::sync::MutexGuard<'static, Option<Registry>>);
impl std::ops::Deref for RegistryGuard {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        self.0.as_ref().expect("registry")
    }
}
impl std::ops::DerefMut for RegistryGuard {
    fn deref_mut(&mut self) -> &mut Registry {
        self.0.as_mut().expect("registry")
    }
}

/// The value after "key:" on a line of fdinfo text.
pub(crate) fn field<'a>(raw: &'a str, key: &str) -> Option<&'a str> {
    raw.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')).map(str::trim))
}

pub(crate) fn hex_field(raw: &str, key: &str) -> Option<u64> {
    field(raw, key).and_then(|v| u64::from_str_radix(v, 16).ok())
}

/// "key1:v1 key2:v2 ..." tokens of one fdinfo line.
pub(crate) fn tokens(line: &str) -> BTreeMap<&str, &str> {
    let mut m = BTreeMap::new();
    let mut it = line.split_whitespace().peekable();
    while let Some(t) = it.next() {
        if let Some((k, v)) = t.split_once(':') {
            if v.is_empty() {
                // "tfd:      5": the value is the next token
                if let Some(v) = it.next() {
                    m.insert(k, v);
                }
            } else {
                m.insert(k, v);
            }
        }
    }
    m
}

pub(crate) fn pid_of_pidfd(pidfd: &Fd) -> Result<Pid> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.raw())).map_err(Error::from)?;
    field(&info, "Pid").and_then(|v| v.parse().ok()).ok_or_else(|| Error::new("EPROC", "pidfd has no pid"))
}

/// The file behind memory area `v` of `pid` (/proc/PID/map_files), opened
/// read-only, with its metadata; `what` names the area in errors. Refused
/// above MAX_CONTENTS.
pub(crate) fn open_mapped(pid: Pid, v: &crate::memory::Vma, what: &str) -> Result<(Fd, std::fs::Metadata)> {
    let link = sys::cstr(&format!("/proc/{}/map_files/{:x}-{:x}", pid, v.start, v.end))?;
    let fd = fd_of(sys::call("open map_files", crate::sys::nr::OPEN, &[link.as_ptr() as u64, O_CLOEXEC as u64, 0]).map_err(|e| Error::new("EUNSUPPORTED", format!("{}: cannot be opened: {}", what, e.message)))?);
    let md = std::fs::metadata(format!("/proc/self/fd/{}", fd.raw())).map_err(|e| Error::new("EUNSUPPORTED", format!("{}: {}", what, e)))?;
    Ok((fd, md))
}

/// The common fields of an entry for a file that only mappings refer to:
/// opened read-only at offset 0 (the areas are mapped from the restored
/// object, each with the access it needs; a writable description held
/// open would keep a removed executable from being one again).
pub(crate) fn mapped_base(id: u64) -> Json {
    Json::obj().with("id", id).with("flags", 0u64).with("pos", 0u64)
}

pub(crate) fn open_flags(f: &Json) -> u32 {
    f.u64_of("flags").unwrap_or(0) as u32 & !(O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC | O_NOCTTY)
}

pub(crate) fn fd_of(r: i64) -> Fd {
    Fd(r as i32)
}

/// Read up to `len` bytes of a file from offset `at`.
fn read_at(fd: &Fd, at: u64, len: u64) -> Result<Vec<u8>> {
    let mut data = vec![0u8; len as usize];
    let mut got = 0usize;
    while got < data.len() {
        let n = sys::call("pread", crate::sys::nr::PREAD64, &[fd.raw() as u64, data[got..].as_mut_ptr() as u64, (data.len() - got) as u64, at + got as u64])?;
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    data.truncate(got);
    Ok(data)
}

pub(crate) fn write_contents(fd: &Fd, data: &[u8]) -> Result<()> {
    write_at(fd, data, 0)
}

fn write_at(fd: &Fd, data: &[u8], at: u64) -> Result<()> {
    let mut off = 0usize;
    while off < data.len() {
        let n = sys::call("pwrite", crate::sys::nr::PWRITE64, &[fd.raw() as u64, data[off..].as_ptr() as u64, (data.len() - off) as u64, at + off as u64])?;
        if n <= 0 {
            return Err(Error::new("EIO", "short write restoring file contents"));
        }
        off += n as usize;
    }
    Ok(())
}

/// The data ranges (offset, length) of a file of `size` bytes, from
/// SEEK_DATA / SEEK_HOLE: one range from 0 to `size` on a file system that
/// does not tell holes apart.
pub(crate) fn data_ranges(fd: &Fd, size: u64) -> Vec<(u64, u64)> {
    const SEEK_DATA: u64 = 3;
    const SEEK_HOLE: u64 = 4;
    let seek = |at: u64, how: u64| unsafe { sys::raw(crate::sys::nr::LSEEK, &[fd.raw() as u64, at, how]) }.ok().map(|v| v as u64);
    let mut out = Vec::new();
    let mut at = 0;
    while at < size {
        let Some(start) = seek(at, SEEK_DATA) else { break }; // ENXIO: only a hole is left
        let end = seek(start, SEEK_HOLE).unwrap_or(size).min(size);
        if end <= start {
            break;
        }
        out.push((start, end - start));
        at = end;
    }
    if out.is_empty() && size > 0 && seek(0, SEEK_HOLE).is_none() {
        out.push((0, size)); // no hole support: all of it
    }
    out
}

/// `base` with a file's contents, read through a read-only description of
/// its own (`fd` may be write-only): "extents" ({offset, data}) when it has
/// holes, else "data"; `size` gives its length. Refused when its data (not
/// its size) passes MAX_CONTENTS.
pub(crate) fn with_contents(base: Json, fd: &Fd, size: u64, what: &str) -> Result<Json> {
    let fd = &reopen(fd, 0, 0)?;
    let ranges = data_ranges(fd, size);
    let bytes: u64 = ranges.iter().map(|r| r.1).sum();
    if bytes > MAX_CONTENTS {
        return Err(Error::new("EUNSUPPORTED", format!("{}: {} bytes of data (more than {} MiB) is not supported", what, bytes, MAX_CONTENTS >> 20)));
    }
    if ranges.len() == 1 && ranges[0] == (0, size) {
        return Ok(base.with("data", crate::base64::encode(&read_at(fd, 0, size)?)));
    }
    let extents = ranges
        .into_iter()
        .map(|(off, len)| Ok(Json::obj().with("offset", off).with("data", crate::base64::encode(&read_at(fd, off, len)?))))
        .collect::<Result<Vec<Json>>>()?;
    Ok(base.with("extents", extents))
}

/// Write what `with_contents` read (its fields in `f`) into `fd`.
pub(crate) fn write_contents_json(fd: &Fd, f: &Json, what: &str) -> Result<()> {
    let bad = || Error::new("EIMAGE", format!("contents of {} in the image are malformed", what));
    if let Some(d) = f.str_of("data") {
        return write_contents(fd, &crate::base64::decode(d).ok_or_else(bad)?);
    }
    for e in f.arr_of("extents") {
        let data = e.str_of("data").and_then(crate::base64::decode).ok_or_else(bad)?;
        write_at(fd, &data, e.u64_of("offset").ok_or_else(bad)?)?;
    }
    Ok(())
}

/// Open another description of the object behind `fd` (via /proc/self/fd)
/// with `flags`, at offset `pos`.
pub(crate) fn reopen(fd: &Fd, flags: u32, pos: u64) -> Result<Fd> {
    let p = sys::cstr(&format!("/proc/self/fd/{}", fd.raw()))?;
    let nfd = fd_of(sys::call("reopen", crate::sys::nr::OPEN, &[p.as_ptr() as u64, (flags | O_CLOEXEC) as u64, 0])?);
    if pos != 0 && flags & sys::O_PATH == 0 {
        sys::call("lseek", crate::sys::nr::LSEEK, &[nfd.raw() as u64, pos, 0])?;
    }
    Ok(nfd)
}

/// Pass `fd` into the process behind `inj` as descriptor number `at`
/// (used before its descriptor table is restored, for mappings).
pub(crate) fn pass_fd(inj: &mut Injector, fd: &Fd, at: i32) -> Result<()> {
    let pidfd = sys::pidfd_open(inj.pid)?;
    let chan = crate::files::FdChannel::open(inj, &pidfd, at as u64 + 1)?;
    let r = chan.install(inj, fd, at, true);
    chan.close(inj)?;
    r
}

pub(crate) fn timespec_ns(b: &[u8]) -> u64 {
    let s = i64::from_le_bytes(b[0..8].try_into().unwrap_or([0; 8])).max(0) as u64;
    let ns = i64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8])).max(0) as u64;
    s.saturating_mul(1_000_000_000).saturating_add(ns)
}

pub(crate) fn ns_timespec(ns: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&((ns / 1_000_000_000) as i64).to_le_bytes());
    out.extend_from_slice(&((ns % 1_000_000_000) as i64).to_le_bytes());
}
