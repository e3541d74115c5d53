//! userfaultfds: the context (its UFFDIO_API features) and the memory areas
//! registered with it (MISSING, WP, MINOR), with the pages write-protected.
//!
//! A userfaultfd belongs to the memory of the process that made it, and the
//! kernel shows neither that nor which context an area is registered with:
//! smaps only says an area is (VmFlags um, uw, ui). Both are found by
//! asking the kernel things that change nothing (see `dump`). Restore makes
//! the context inside the restored process (an injected userfaultfd(), so it
//! is of that process's memory) and registers each area once its pages are
//! written: a MISSING area must not fault on pages it had. Faults waiting
//! at the freeze need no care: a thread waiting in one is taken out of the
//! wait by the freeze itself and takes the fault again once it runs.
//! See docs/event-fds.md.

use super::{field, fd_of, registry, O_NONBLOCK};
use crate::dirty::pagemap_scan::{read_entries, PM_PRESENT};
use crate::files::{FileCtx, FileTable};
use crate::inject::Injector;
use crate::json::Json;
use crate::memory::{self, MAP_FIXED_NOREPLACE};
use crate::proc;
use crate::sys::{self, nr, Error, Fd, Pid, Result, PAGE_SIZE};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;

const UFFD_API: u64 = 0xAA;
/// Set by the kernel in the features fdinfo shows once UFFDIO_API is done.
const FEATURE_INITIALIZED: u64 = 1 << 31;
const UFFD_USER_MODE_ONLY: u64 = 1;

const MODE_MISSING: u64 = 1;
const MODE_WP: u64 = 2;
const MODE_MINOR: u64 = 4;
/// VmFlags mnemonic of each registration mode.
const MODES: [(&str, u64); 3] = [("um", MODE_MISSING), ("uw", MODE_WP), ("ui", MODE_MINOR)];

const UFFDIO_API: u64 = 0xc018_aa3f;
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
const UFFDIO_UNREGISTER: u64 = 0x8010_aa01;
const UFFDIO_WRITEPROTECT: u64 = 0xc018_aa06;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;

const EBUSY: i32 = 16;
const EINVAL: i32 = 22;
const ENOMEM: i32 = 12;
const EPERM: i32 = 1;
const MADV_POPULATE_READ: u64 = 22;
const MADV_DONTNEED: u64 = 4;
const DUP3: i64 = 292;
/// pagemap: the page (or the marker where none is) is write-protected by userfaultfd.
const PM_UFFD_WP: u64 = 1 << 57;

/// The probe page (see `same_memory`) goes in the first hole from here that
/// no process of the tree maps: far from where anything is usually mapped.
const PROBE_FROM: u64 = 0x1000_0000_0000;
const PROBE_TO: u64 = 0x7000_0000_0000;

pub fn is_userfaultfd(target: &str) -> bool {
    target == "anon_inode:[userfaultfd]"
}

/// The first descriptor of `pid` that is a userfaultfd.
pub fn held_by(pid: Pid) -> Option<i32> {
    proc::fds(pid).ok()?.into_iter().find(|fd| proc::readlink(&format!("/proc/{}/fd/{}", pid, fd)).is_ok_and(|t| is_userfaultfd(&t)))
}

/// Modes an area is registered in, from its VmFlags (0: none).
pub fn modes_of(flags: &str) -> u64 {
    flags.split_whitespace().filter_map(|f| MODES.iter().find(|m| m.0 == f)).fold(0, |a, m| a | m.1)
}

/// VmFlags without the registration mnemonics.
pub fn without_modes(flags: &str) -> String {
    flags.split_whitespace().filter(|f| !MODES.iter().any(|m| m.0 == *f)).collect::<Vec<_>>().join(" ")
}

fn ioctl(fd: &Fd, req: u64, arg: &mut [u64]) -> std::result::Result<(), i32> {
    unsafe { sys::raw(nr::IOCTL, &[fd.raw() as u64, req, arg.as_mut_ptr() as u64]) }.map(|_| ())
}

fn register(fd: &Fd, start: u64, end: u64, modes: u64) -> std::result::Result<(), i32> {
    ioctl(fd, UFFDIO_REGISTER, &mut [start, end - start, modes, 0])
}

pub fn describe(ctx: &FileCtx) -> Result<Json> {
    let raw = &ctx.info.raw;
    // In flight, a copy sits in phaul's own table: the context could only
    // be re-made for the memory of a process that holds it.
    if super::pid_of_pidfd(ctx.pidfd)? == sys::getpid() {
        return ctx.unsupported("userfaultfd in flight in a unix socket queue");
    }
    let total: u64 = field(raw, "total").and_then(|v| v.parse().ok()).unwrap_or(0);
    if total > 0 {
        // The freeze takes every thread of the tree out of its fault: these
        // wait elsewhere (a kernel access of another process, say).
        return ctx.unsupported(&format!("userfaultfd with {} fault(s) waiting outside the frozen threads", total));
    }
    let api = field(raw, "API").ok_or_else(|| Error::new("EPROC", format!("fd {}: userfaultfd without API in fdinfo", ctx.fd)))?;
    let features = api.split(':').nth(1).and_then(|v| u64::from_str_radix(v, 16).ok());
    let features = features.ok_or_else(|| Error::new("EPROC", format!("fd {}: userfaultfd API line {:?} not understood", ctx.fd, api)))?;
    Ok(ctx
        .base
        .clone()
        .with("kind", "userfaultfd")
        .with("uffd_api", features & FEATURE_INITIALIZED != 0)
        .with("uffd_features", features & !FEATURE_INITIALIZED))
}

/// A userfaultfd a process holds, as the dump sees it.
struct Held {
    file_id: u64,
    fd: i32,
    copy: Fd,
    api: bool,
}

/// What `dump` found in one process.
#[derive(Default)]
pub struct Registrations {
    /// The area's "uffd" entry, by start address.
    pub areas: HashMap<u64, Json>,
    /// VmFlags by start address when read here (exact, at the freeze).
    pub flags: Option<HashMap<u64, String>>,
    /// Starts of areas registered by phaul's own dirty tracking: not the
    /// process's, their VmFlags lose the mnemonic.
    pub phauls: Vec<u64>,
}

/// The userfaultfds of frozen process `pid` (its fd list `fds`, described
/// in `table`) and the areas registered with each.
///
/// Which context an area is registered with: UFFDIO_REGISTER of the area's
/// exact bounds in the modes its VmFlags show is a no-op for the context
/// that has it, and EBUSY for any other (the kernel lets one context own an
/// area). That holds only for contexts of this process's memory, and a
/// descriptor may be of another's (passed over a socket, made by a fork
/// event): each is first tried on a probe page phaul maps where no process
/// of the tree maps anything, which only a context of this memory accepts.
/// `read_before`: VmFlags read before the freeze (a migration), used when
/// the process holds no userfaultfd (then only phaul's tracking may have
/// registered areas); one that holds any is read again now.
pub fn dump(inj: &mut Injector, pid: Pid, pidfd: &Fd, fds: &[Json], table: &mut FileTable, read_before: Option<&HashMap<u64, String>>) -> Result<Registrations> {
    let mut held: Vec<Held> = Vec::new();
    for e in fds {
        let id = e.u64_of("file_id").unwrap_or(0);
        let fd = e.i64_of("fd").unwrap_or(-1) as i32;
        let f = match table.files.iter().find(|f| f.u64_of("id") == Some(id)) {
            Some(f) if f.str_of("kind") == Some("userfaultfd") => f,
            _ => continue,
        };
        let api = f.bool_of("uffd_api");
        match table.uffd_holders.get(&id) {
            Some(&other) if other != pid => {
                return Err(Error::new(
                    "EUNSUPPORTED",
                    format!("fd {}: userfaultfd shared with process {} (inherited across fork or passed over a socket) is not supported", fd, other),
                ))
            }
            _ => {
                table.uffd_holders.insert(id, pid);
            }
        }
        if held.iter().any(|h| h.file_id == id) {
            continue;
        }
        held.push(Held { file_id: id, fd, copy: sys::pidfd_getfd(pidfd, fd)?, api });
    }
    let (ours, armed) = match crate::dirty::uffd_wp::own_uffd(pid) {
        Some((fd, armed)) => (Some(fd), armed),
        None => (None, Vec::new()),
    };
    let mut out = Registrations::default();
    let flags = match read_before {
        Some(f) if held.is_empty() => f.clone(),
        _ => {
            let f = proc::vm_flags(pid)?;
            out.flags = Some(f.clone());
            f
        }
    };
    if held.iter().any(|h| h.api) {
        same_memory(inj, pid, &held, &table.tree)?;
    }
    let vmas = memory::vmas(pid)?;
    let registered: Vec<(&memory::Vma, u64)> = vmas.iter().map(|v| (v, flags.get(&v.start).map(|f| modes_of(f)).unwrap_or(0))).filter(|(_, m)| *m != 0).collect();
    if registered.is_empty() {
        return Ok(out);
    }
    let pagemap = File::open(format!("/proc/{}/pagemap", pid)).map_err(|e| Error::from(e).context(format!("opening /proc/{}/pagemap", pid)))?;
    for (v, modes) in registered {
        // An area exactly as phaul's tracking registered it, in a process
        // that holds no userfaultfd of its own, is phaul's: asking the
        // kernel (owner_of registers it again) cost the frozen window of a
        // JVM (209 areas) 9 ms.
        let owner = if held.is_empty() && armed.binary_search(&(v.start, v.end)).is_ok() {
            Owner::Phaul
        } else {
            // (Errors name the process where the caller adds it.)
            owner_of(v, modes, &held, ours.as_ref()).map_err(|e| Error::sys(format!("finding which userfaultfd area {:#x}-{:#x} is registered with", v.start, v.end), e))?
        };
        let h = match owner {
            Owner::Process(i) => &held[i],
            Owner::Phaul => {
                out.phauls.push(v.start);
                continue;
            }
            Owner::Unknown => {
                return Err(Error::new(
                    "EUNSUPPORTED",
                    format!(
                        "memory area {:#x}-{:#x} is registered with a userfaultfd the process does not hold (passed to another process, or made by a fork event): not supported",
                        v.start, v.end
                    ),
                ))
            }
        };
        let mut area = Json::obj().with("file_id", h.file_id).with("modes", modes);
        if modes & MODE_WP != 0 {
            area.set("wp", runs(&pagemap, v.start, v.end, |e| e & PM_UFFD_WP != 0)?);
        }
        if modes & MODE_MINOR != 0 {
            // Pages mapped here do not fault; the others of the file do.
            area.set("mapped", runs(&pagemap, v.start, v.end, |e| e & PM_PRESENT != 0)?);
        }
        out.areas.insert(v.start, area);
    }
    Ok(out)
}

enum Owner {
    Process(usize),
    Phaul,
    Unknown,
}

fn owner_of(v: &memory::Vma, modes: u64, held: &[Held], ours: Option<&Fd>) -> std::result::Result<Owner, i32> {
    let mut tries: Vec<(Owner, &Fd)> = held.iter().enumerate().filter(|(_, h)| h.api).map(|(i, h)| (Owner::Process(i), &h.copy)).collect();
    if let Some(o) = ours {
        tries.push((Owner::Phaul, o));
    }
    for (who, fd) in tries {
        match register(fd, v.start, v.end, modes) {
            Ok(()) => return Ok(who),
            // Owned by another; or a kind of area only another's features
            // allow (any file mapping with UFFD_FEATURE_WP_ASYNC, phaul's).
            Err(EBUSY) | Err(EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Owner::Unknown)
}

/// Refuse any initialized userfaultfd of `held` that is not of `pid`'s own
/// memory: registering a page phaul maps in `pid` for the purpose (in a
/// hole of every process of `tree`) succeeds only there. The page is
/// unregistered and unmapped again.
fn same_memory(inj: &mut Injector, pid: Pid, held: &[Held], tree: &[Pid]) -> Result<()> {
    let mut procs: Vec<Pid> = tree.to_vec();
    if !procs.contains(&pid) {
        procs.push(pid);
    }
    let at = probe_address(&procs).ok_or_else(|| Error::new("ENOMEM", "no room for a probe page to tell whose memory its userfaultfds are of"))?;
    let page = inj.call("mmap(userfaultfd probe)", nr::MMAP, &[at, PAGE_SIZE, 3, 0x22 | MAP_FIXED_NOREPLACE, u64::MAX, 0])?;
    let r = (|| {
        for h in held.iter().filter(|h| h.api) {
            match register(&h.copy, page, page + PAGE_SIZE, MODE_MISSING) {
                Ok(()) => {
                    ioctl(&h.copy, UFFDIO_UNREGISTER, &mut [page, PAGE_SIZE]).map_err(|e| Error::sys("UFFDIO_UNREGISTER of the probe page", e))?;
                }
                Err(ENOMEM) => return Err(Error::new("EUNSUPPORTED", format!("fd {}: userfaultfd of memory that no longer exists (its process exited or ran exec) is not supported", h.fd))),
                Err(_) => {
                    return Err(Error::new(
                        "EUNSUPPORTED",
                        format!("fd {}: userfaultfd of another process's memory (passed over a socket, or made by a fork event) is not supported", h.fd),
                    ))
                }
            }
        }
        Ok(())
    })();
    let un = inj.call("munmap(userfaultfd probe)", nr::MUNMAP, &[page, PAGE_SIZE]);
    r?;
    un.map(|_| ())
}

fn probe_address(procs: &[Pid]) -> Option<u64> {
    let mut used: Vec<(u64, u64)> = procs.iter().flat_map(|&p| proc::maps(p).unwrap_or_default()).map(|m| (m.start, m.end)).collect();
    used.sort_unstable();
    // One free page on each side: the probe must not merge with anything.
    let mut at = PROBE_FROM;
    for (s, e) in used {
        if s >= at + 3 * PAGE_SIZE {
            break;
        }
        at = at.max(e);
    }
    (at + 3 * PAGE_SIZE <= PROBE_TO).then_some(at + PAGE_SIZE)
}

/// Runs of pages of [s, e) whose pagemap entry passes `keep`, as [{start, end}].
fn runs(pagemap: &File, s: u64, e: u64, keep: impl Fn(u64) -> bool) -> Result<Vec<Json>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    read_entries(pagemap, s, e, |base, ents| {
        for (i, &en) in ents.iter().enumerate() {
            if !keep(en) {
                continue;
            }
            let a = base + i as u64 * PAGE_SIZE;
            match out.last_mut() {
                Some(r) if r.1 == a => r.1 += PAGE_SIZE,
                _ => out.push((a, a + PAGE_SIZE)),
            }
        }
    })?;
    Ok(out.into_iter().map(|(a, b)| Json::obj().with("start", a).with("end", b)).collect())
}

/// A userfaultfd carried in a unix socket queue as well as held: the queue
/// would get the placeholder `open` installs, not the context.
pub fn check_in_flight(files: &[Json]) -> Result<()> {
    let uffds: Vec<u64> = files.iter().filter(|f| f.str_of("kind") == Some("userfaultfd")).filter_map(|f| f.u64_of("id")).collect();
    for f in files {
        for m in f.get("sock").map(|s| s.arr_of("in_flight")).unwrap_or(&[]) {
            if m.arr_of("files").iter().filter_map(Json::as_u64).any(|id| uffds.contains(&id)) {
                return Err(Error::new("EUNSUPPORTED", "a userfaultfd in flight in a unix socket queue is not supported"));
            }
        }
    }
    Ok(())
}

// ---- restore ----

/// The placeholder, replaced in `after_install`.
pub fn open(_f: &Json) -> Result<Fd> {
    let p = sys::cstr("/dev/null")?;
    Ok(fd_of(sys::call("open /dev/null", nr::OPEN, &[p.as_ptr() as u64, sys::O_CLOEXEC as u64, 0])?))
}

/// The process's userfaultfds by file id: the first descriptor number of each.
fn numbers(p: &Json) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    for e in p.arr_of("fds") {
        let id = e.u64_of("file_id").unwrap_or(0);
        if registry().files.get(&id).and_then(|f| f.str_of("kind")) == Some("userfaultfd") {
            out.entry(id).or_insert(e.u64_of("fd").unwrap_or(0));
        }
    }
    out
}

/// Make each userfaultfd inside the restored process (its context is then
/// of that process's memory), with its features, on its descriptor
/// numbers. Before epoll's watches, which may name one.
///
/// UFFD_USER_MODE_ONLY is not shown by the kernel: the context is made
/// without it where allowed (faults the kernel takes on the process's
/// behalf reach the handler rather than fail), with it where not.
pub fn after_install(inj: &mut Injector, p: &Json) -> Result<()> {
    let first = numbers(p);
    if first.is_empty() {
        return Ok(());
    }
    let pidfd = sys::pidfd_open(inj.pid)?;
    for e in p.arr_of("fds") {
        let id = e.u64_of("file_id").unwrap_or(0);
        let Some(&made_at) = first.get(&id) else { continue };
        let fd = e.u64_of("fd").unwrap_or(0);
        let cloexec = if e.bool_of("cloexec") { sys::O_CLOEXEC as u64 } else { 0 };
        if made_at != fd {
            // Another number of a description made already.
            inj.call("dup3(userfaultfd)", DUP3, &[made_at, fd, cloexec])?;
            continue;
        }
        let f = registry().files.get(&id).cloned().unwrap_or(Json::Null);
        let flags = sys::O_CLOEXEC as u64 | (f.u64_of("flags").unwrap_or(0) & O_NONBLOCK as u64);
        let t = match inj.raw(nr::USERFAULTFD, &[flags])? {
            r if r >= 0 => r as u64,
            r if r == -(EPERM as i64) => inj.call("userfaultfd(UFFD_USER_MODE_ONLY)", nr::USERFAULTFD, &[flags | UFFD_USER_MODE_ONLY])?,
            r => return Err(Error::sys(format!("fd {}: userfaultfd", fd), -r as i32)),
        };
        let r = (|| {
            if f.bool_of("uffd_api") {
                let copy = sys::pidfd_getfd(&pidfd, t as i32)?;
                let features = f.u64_of("uffd_features").unwrap_or(0);
                ioctl(&copy, UFFDIO_API, &mut [UFFD_API, features, 0]).map_err(|e| Error::sys(format!("fd {}: UFFDIO_API with features {:#x}", fd, features), e))?;
            }
            inj.call("dup3(userfaultfd)", DUP3, &[t, fd, cloexec]).map(|_| ())
        })();
        inj.call("close", nr::CLOSE, &[t])?;
        r?;
    }
    Ok(())
}

/// Register the process's areas with their userfaultfds and write-protect
/// the pages that were. Last of a process: every page is written by now
/// (a MISSING area would otherwise fault on them) and mlock has faulted in
/// what it locks.
pub fn register_areas(inj: &mut Injector, p: &Json) -> Result<()> {
    let first = numbers(p);
    let mut copies: BTreeMap<u64, Fd> = BTreeMap::new();
    let mut pidfd = None;
    for v in p.arr_of("vmas") {
        let Some(u) = v.get("uffd") else { continue };
        let (start, end) = (v.u64_of("start").unwrap_or(0), v.u64_of("end").unwrap_or(0));
        let id = u.u64_of("file_id").unwrap_or(0);
        let what = format!("memory area {:#x}-{:#x}", start, end);
        let fd = *first.get(&id).ok_or_else(|| Error::new("EIMAGE", format!("{} is registered with a userfaultfd the process does not hold", what)))?;
        let copy = match copies.entry(id) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                if pidfd.is_none() {
                    pidfd = Some(sys::pidfd_open(inj.pid)?);
                }
                let pf = pidfd.as_ref().ok_or_else(|| Error::new("EINTERNAL", "no pidfd"))?;
                e.insert(sys::pidfd_getfd(pf, fd as i32)?)
            }
        };
        let modes = u.u64_of("modes").unwrap_or(0);
        if modes & MODE_MINOR != 0 {
            map_as_before(inj, start, end, u.arr_of("mapped"))?;
        }
        register(copy, start, end, modes).map_err(|e| Error::sys(format!("fd {}: UFFDIO_REGISTER of {} (modes {:#x})", fd, what, modes), e))?;
        for r in u.arr_of("wp") {
            let (a, b) = (r.u64_of("start").unwrap_or(0), r.u64_of("end").unwrap_or(0));
            ioctl(copy, UFFDIO_WRITEPROTECT, &mut [a, b.saturating_sub(a), UFFDIO_WRITEPROTECT_MODE_WP]).map_err(|e| Error::sys(format!("fd {}: UFFDIO_WRITEPROTECT of {:#x}-{:#x}", fd, a, b), e))?;
        }
    }
    Ok(())
}

/// A MINOR area's pages take a minor fault where they are not mapped: map
/// the pages that were, and only those (a read fault maps its neighbours
/// too, unless the area is registered already).
fn map_as_before(inj: &mut Injector, start: u64, end: u64, mapped: &[Json]) -> Result<()> {
    let mut at = start;
    for r in mapped {
        let (a, b) = (r.u64_of("start").unwrap_or(0).clamp(start, end), r.u64_of("end").unwrap_or(0).clamp(start, end));
        if a >= b {
            continue;
        }
        inj.call(&format!("madvise MADV_POPULATE_READ {:#x}-{:#x}", a, b), nr::MADVISE, &[a, b - a, MADV_POPULATE_READ])?;
        if at < a {
            inj.call(&format!("madvise MADV_DONTNEED {:#x}-{:#x}", at, a), nr::MADVISE, &[at, a - at, MADV_DONTNEED])?;
        }
        at = b;
    }
    if at < end {
        inj.call(&format!("madvise MADV_DONTNEED {:#x}-{:#x}", at, end), nr::MADVISE, &[at, end - at, MADV_DONTNEED])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_from_vm_flags() {
        assert_eq!(modes_of("rd wr mr mw me um ac"), MODE_MISSING);
        assert_eq!(modes_of("rd wr mr mw me uw um ac"), MODE_MISSING | MODE_WP);
        assert_eq!(modes_of("rd mr mw me sd ui"), MODE_MINOR);
        assert_eq!(modes_of("rd wr mr mw me ac"), 0);
        assert_eq!(without_modes("rd wr mr mw me uw ac"), "rd wr mr mw me ac");
    }
}
