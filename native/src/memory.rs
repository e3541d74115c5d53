//! Memory: classifying VMAs, finding present pages, dumping them to a page
//! file, and rebuilding an address space in a stub process.

use crate::batch::Call;
use crate::inject::Injector;
use crate::json::Json;
use crate::proc::{self, MapLine};
use crate::sys::{nr, Context, Error, Pid, Result, PAGE_SIZE};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};

pub const PROT_READ: u32 = 1;
pub const PROT_WRITE: u32 = 2;

const MAP_SHARED: u64 = 0x01;
const MAP_PRIVATE: u64 = 0x02;
pub const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_GROWSDOWN: u64 = 0x0100;
const MAP_NORESERVE: u64 = 0x4000;
pub const MAP_FIXED_NOREPLACE: u64 = 0x100000;

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Anon,
    File,
    Heap,
    Stack,
    Vdso,
    Vvar,
    VvarVclock,
    Shmem,
    Vsyscall,
    /// A kernel AIO ring (io_setup): made again by aio.rs, not mapped.
    Aio,
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Anon => "anon",
            Kind::File => "file",
            Kind::Heap => "heap",
            Kind::Stack => "stack",
            Kind::Vdso => "vdso",
            Kind::Vvar => "vvar",
            Kind::VvarVclock => "vvar_vclock",
            Kind::Shmem => "shmem",
            Kind::Vsyscall => "vsyscall",
            Kind::Aio => "aio",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "anon" => Kind::Anon,
            "file" => Kind::File,
            "heap" => Kind::Heap,
            "stack" => Kind::Stack,
            "vdso" => Kind::Vdso,
            "vvar" => Kind::Vvar,
            "vvar_vclock" => Kind::VvarVclock,
            "shmem" => Kind::Shmem,
            "vsyscall" => Kind::Vsyscall,
            "aio" => Kind::Aio,
            _ => return None,
        })
    }
    /// Mappings the kernel provides itself; never stored nor mapped by us.
    pub fn is_special(&self) -> bool {
        matches!(self, Kind::Vdso | Kind::Vvar | Kind::VvarVclock | Kind::Vsyscall | Kind::Aio)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub shared: bool,
    pub kind: Kind,
    pub pgoff: u64,
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    /// VmFlags from smaps, as the kernel spells them ("rd wr mr mw me lo");
    /// read for dumps only, empty elsewhere.
    pub flags: String,
}

/// One madvise() setting that restore re-applies: the VmFlags mnemonic that
/// shows it and the advice that sets it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Madvice {
    pub flag: &'static str,
    pub name: &'static str,
    pub advice: u64,
    /// EINVAL means this kernel lacks the feature (no THP, no KSM): skipped.
    pub optional: bool,
}

const MADVISED: [Madvice; 6] = [
    Madvice { flag: "dc", name: "MADV_DONTFORK", advice: 10, optional: false },
    Madvice { flag: "wf", name: "MADV_WIPEONFORK", advice: 18, optional: false },
    Madvice { flag: "dd", name: "MADV_DONTDUMP", advice: 16, optional: false },
    Madvice { flag: "hg", name: "MADV_HUGEPAGE", advice: 14, optional: true },
    Madvice { flag: "nh", name: "MADV_NOHUGEPAGE", advice: 15, optional: true },
    Madvice { flag: "mg", name: "MADV_MERGEABLE", advice: 12, optional: true },
];

pub const MLOCK_ONFAULT: u64 = 1;

/// What madvise() and mlock() had set on an area.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Advice {
    pub madvise: Vec<Madvice>,
    /// mlock2 flags when the area is locked (MLOCK_ONFAULT for "lf").
    pub lock: Option<u64>,
}

pub fn classify(m: &MapLine) -> Kind {
    match m.path.as_str() {
        "[heap]" => Kind::Heap,
        "[stack]" => Kind::Stack,
        "[vdso]" => Kind::Vdso,
        "[vvar]" => Kind::Vvar,
        "[vvar_vclock]" => Kind::VvarVclock,
        "[vsyscall]" => Kind::Vsyscall,
        "" => Kind::Anon,
        p if m.shared && crate::aio::is_ring(p) => Kind::Aio,
        // A SysV segment's inode number is its id, and the first id is 0.
        p if m.shared && (p.starts_with("/SYSV") || (m.ino != 0 && (p.starts_with("/dev/zero") || p == "[shmem]"))) => Kind::Shmem,
        p if p.starts_with('[') => Kind::Anon, // [anon:name] and friends
        _ => Kind::File,
    }
}

pub fn vmas(pid: Pid) -> Result<Vec<Vma>> {
    Ok(vmas_of_maps(&proc::maps(pid)?))
}

pub fn vmas_of_maps(maps: &[MapLine]) -> Vec<Vma> {
    maps.iter()
        .map(|m| Vma {
            start: m.start,
            end: m.end,
            prot: m.prot,
            shared: m.shared,
            kind: classify(m),
            pgoff: m.pgoff,
            path: m.path.clone(),
            dev: m.dev,
            ino: m.ino,
            flags: String::new(),
        })
        .collect()
}

/// The areas without the parts phaul mapped in the target (injector
/// scratch and batch areas). An anonymous area of ours may have merged with a
/// neighbour of the same protection, so parts are cut out, not whole areas
/// dropped.
pub fn without_ranges(vmas: Vec<Vma>, ours: &[(u64, u64)]) -> Vec<Vma> {
    let mut out = Vec::with_capacity(vmas.len());
    for v in vmas {
        let mut pieces = vec![v];
        for &(a, b) in ours {
            let mut next = Vec::new();
            for p in pieces {
                if b <= p.start || p.end <= a {
                    next.push(p);
                    continue;
                }
                if p.start < a {
                    next.push(Vma { end: a, ..p.clone() });
                }
                if b < p.end {
                    let pgoff = if p.kind == Kind::Anon { p.pgoff } else { p.pgoff + (b - p.start) };
                    next.push(Vma { start: b, pgoff, ..p });
                }
            }
            pieces = next;
        }
        out.extend(pieces);
    }
    out
}

/// The areas with their VmFlags, for a dump: restore re-applies the
/// madvise and mlock settings among them (Vma::advice). `read_before`: the
/// flags by start address, read earlier; None reads smaps now.
/// `maps`: the process's maps, read already.
pub fn vmas_with_flags(pid: Pid, maps: &[MapLine], read_before: Option<&std::collections::HashMap<u64, String>>) -> Result<Vec<Vma>> {
    let mut vmas = vmas_of_maps(maps);
    let now;
    let flags = match read_before {
        Some(f) => f,
        None => {
            now = proc::vm_flags_covering(pid, &vmas.iter().map(|v| v.start).collect::<Vec<_>>())?;
            &now
        }
    };
    for v in vmas.iter_mut() {
        v.flags = flags.get(&v.start).cloned().unwrap_or_default();
    }
    Ok(vmas)
}

thread_local! {
    /// Identities already read in this thread's current dump (see
    /// `identities_memoized`), by path.
    static IDENTITIES: std::cell::RefCell<Option<std::collections::HashMap<String, Json>>> = const { std::cell::RefCell::new(None) };
}

/// Run `f` with every file's identity read once: a library is mapped four
/// or five times per process and by every process of a tree (postgres: 7
/// processes of 247 areas, 58 files, took about 2,600 stats per final
/// round). Within one dump the files do not change in a way that matters.
pub fn identities_memoized<R>(f: impl FnOnce() -> R) -> R {
    // Dropped even if `f` panics: a later dump must not see stale entries.
    struct Scope(bool);
    impl Drop for Scope {
        fn drop(&mut self) {
            if self.0 {
                IDENTITIES.with(|c| *c.borrow_mut() = None);
            }
        }
    }
    let outer = IDENTITIES.with(|c| c.borrow().is_some());
    if !outer {
        IDENTITIES.with(|c| *c.borrow_mut() = Some(std::collections::HashMap::new()));
    }
    let _scope = Scope(!outer);
    f()
}

pub fn file_identity(path: &str) -> Json {
    if let Some(j) = IDENTITIES.with(|c| c.borrow().as_ref().and_then(|m| m.get(path).cloned())) {
        return j;
    }
    let j = match std::fs::metadata(path) {
        Ok(md) => Json::obj()
            .with("dev", md.dev())
            .with("ino", md.ino())
            .with("size", md.size())
            .with("mtime_ns", (md.mtime() as i64 * 1_000_000_000 + md.mtime_nsec()) as u64),
        Err(_) => Json::Null,
    };
    IDENTITIES.with(|c| {
        if let Some(m) = c.borrow_mut().as_mut() {
            m.insert(path.to_string(), j.clone());
        }
    });
    j
}

impl Vma {
    pub fn to_json(&self) -> Json {
        let mut o = Json::obj()
            .with("start", self.start)
            .with("end", self.end)
            .with("prot", self.prot)
            .with("shared", self.shared)
            .with("kind", self.kind.name())
            .with("pgoff", self.pgoff)
            .with("growsdown", self.kind == Kind::Stack);
        if matches!(self.kind, Kind::File | Kind::Shmem) {
            o.set("path", self.path.as_str());
        }
        if self.kind == Kind::File {
            // Identity of the file as it is mapped: the mapping's dev/ino come
            // from the maps line; size and mtime from the path (checked on restore).
            let mut id = file_identity(&self.path);
            if let Json::Obj(_) = id {
                id.set("dev", self.dev).set("ino", self.ino);
            }
            o.set("file", id);
        }
        if self.kind == Kind::Shmem {
            o.set("shmem_id", self.ino);
        }
        if !self.flags.is_empty() {
            o.set("flags", self.flags.as_str());
        }
        o
    }

    pub fn from_json(j: &Json) -> Result<Vma> {
        let bad = || Error::new("EIMAGE", "a memory area in the image is incomplete");
        let start = j.u64_of("start").ok_or_else(bad)?;
        let end = j.u64_of("end").ok_or_else(bad)?;
        if start >= end || start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 || end > (1u64 << 47) && j.str_of("kind") != Some("vsyscall") {
            return Err(Error::new("EIMAGE", format!("memory area {:#x}-{:#x} in the image is not valid", start, end)));
        }
        Ok(Vma {
            start,
            end,
            prot: j.u64_of("prot").unwrap_or(0) as u32 & 7,
            shared: j.bool_of("shared"),
            kind: Kind::parse(j.str_of("kind").unwrap_or("")).ok_or_else(bad)?,
            pgoff: j.u64_of("pgoff").unwrap_or(0),
            path: j.str_of("path").unwrap_or("").to_string(),
            dev: j.get("file").and_then(|f| f.u64_of("dev")).unwrap_or(0),
            ino: j.get("file").and_then(|f| f.u64_of("ino")).or_else(|| j.u64_of("shmem_id")).unwrap_or(0),
            flags: j.str_of("flags").unwrap_or("").to_string(),
        })
    }

    /// The madvise/mlock settings to re-apply on restore. Kernel-provided
    /// areas are left as the kernel makes them; other VmFlags (rd, ac, gd,
    /// ...) follow from how the area is mapped, or cannot be set by a process.
    pub fn advice(&self) -> Advice {
        if self.kind.is_special() {
            return Advice::default();
        }
        let has = |m: &str| self.flags.split_whitespace().any(|f| f == m);
        Advice {
            madvise: MADVISED.iter().copied().filter(|a| has(a.flag)).collect(),
            lock: has("lo").then(|| if has("lf") { MLOCK_ONFAULT } else { 0 }),
        }
    }

    /// Do we keep this area's page contents in the image? Shared file
    /// mappings live in their file; kernel-provided areas are re-created.
    pub fn stores_pages(&self) -> bool {
        !self.kind.is_special() && !(self.kind == Kind::File && self.shared)
    }
}

/// Page numbers (virtual addresses) of `vma` whose contents must be saved.
/// For private file mappings only the copy-on-write (anonymous) pages count:
/// the others are read back from the file.
pub fn present_pages(pagemap: &File, vma: &Vma, out: &mut Vec<u64>) -> Result<()> {
    crate::dirty::pagemap_scan::present_in(pagemap, vma.start, vma.end, vma.kind == Kind::File && !vma.shared, out)
}

/// One run of consecutive pages stored at `offset` in the page file.
#[derive(Clone, Copy, Debug)]
pub struct PageRun {
    pub vaddr: u64,
    pub nr_pages: u64,
    pub offset: u64,
}

pub fn runs_of(pages: &[u64]) -> Vec<PageRun> {
    let mut runs: Vec<PageRun> = Vec::new();
    let mut off = 0;
    for &p in pages {
        match runs.last_mut() {
            Some(r) if r.vaddr + r.nr_pages * PAGE_SIZE == p => r.nr_pages += 1,
            _ => runs.push(PageRun { vaddr: p, nr_pages: 1, offset: off }),
        }
        off += PAGE_SIZE;
    }
    runs
}

/// Copy the given runs out of `pid`'s memory into `sink`. /proc/PID/mem reads
/// through protections (PROT_NONE guard areas with data in them included).
pub fn copy_runs(mem: &File, runs: &[PageRun], sink: &mut dyn Write) -> Result<u64> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut total = 0;
    for r in runs {
        let mut a = r.vaddr;
        let end = r.vaddr + r.nr_pages * PAGE_SIZE;
        while a < end {
            let l = (end - a).min(CHUNK) as usize;
            let b = &mut buf[..l];
            if let Err(e) = mem.read_exact_at(b, a) {
                // A page that vanished (MADV_DONTNEED racing) reads as zeros.
                if e.raw_os_error() == Some(14) || e.raw_os_error() == Some(5) {
                    b.fill(0);
                } else {
                    return Err(Error::from(e).context(format!("reading memory at {:#x}", a)));
                }
            }
            sink.write_all(b).ctx("writing the page file")?;
            a += l as u64;
            total += l as u64;
        }
    }
    Ok(total)
}

pub fn runs_to_json(file: &str, runs: &[PageRun]) -> Json {
    Json::obj().with("file", file).with(
        "entries",
        runs.iter()
            .map(|r| Json::obj().with("vaddr", r.vaddr).with("nr_pages", r.nr_pages).with("offset", r.offset))
            .collect::<Vec<_>>(),
    )
}

pub fn runs_from_json(j: &Json) -> Result<Vec<PageRun>> {
    j.arr_of("entries")
        .iter()
        .map(|e| {
            Ok(PageRun {
                vaddr: e.u64_of("vaddr").ok_or_else(|| Error::new("EIMAGE", "page entry without vaddr"))?,
                nr_pages: e.u64_of("nr_pages").ok_or_else(|| Error::new("EIMAGE", "page entry without nr_pages"))?,
                offset: e.u64_of("offset").ok_or_else(|| Error::new("EIMAGE", "page entry without offset"))?,
            })
        })
        .collect()
}

// ---- restore side ----

/// Map `areas` into the target (a stub being laid out). A file with
/// several areas (a library's text, data, relro...) is opened once for
/// them, and the calls go in batches (`batch.rs`): each injected call costs
/// two stops of the target, and a process born during pre-copy is laid out
/// in the frozen window (a PostgreSQL backend has about 250 areas). Two
/// areas side by side never share a descriptor: mapped through one open
/// file the kernel may merge them into one area, where the source had two.
/// Areas mapped from restored objects (anonfd::object_of) are not for
/// here: the caller maps those through anonfd::map_objects.
pub fn map_vmas(inj: &mut Injector, areas: &[Vma]) -> Result<()> {
    let (batched, single): (Vec<&Vma>, Vec<&Vma>) = areas.iter().partition(|v| matches!(v.kind, Kind::Anon | Kind::Heap | Kind::Stack | Kind::File));
    for v in single {
        map_vma(inj, v)?;
    }
    if batched.is_empty() {
        return Ok(());
    }
    // The batch area goes where neither the stub nor these areas are.
    let mut taken = vmas(inj.pid)?;
    taken.extend(batched.iter().map(|v| (*v).clone()));
    inj.batch_area_at(free_spot(&taken, 1 << 20), 4096 + crate::batch::SLOT, &crate::arch::BATCH_CODE)?;
    let r = map_batched(inj, &batched);
    let dropped = inj.drop_batch_area();
    r.and(dropped)
}

/// The batched part of `map_vmas`: opens, then mmaps, then closes.
fn map_batched(inj: &mut Injector, areas: &[&Vma]) -> Result<()> {
    use crate::batch::{self, Job, DATA_LEN, MAX_CALLS};
    // Which opened file each file area maps from: (path, write, areas).
    let mut files: Vec<(String, bool, Vec<(u64, u64)>)> = Vec::new();
    let mut file_of: Vec<Option<usize>> = Vec::with_capacity(areas.len());
    for v in areas {
        if v.kind != Kind::File {
            file_of.push(None);
            continue;
        }
        let path = v.path.strip_suffix(" (deleted)").unwrap_or(&v.path);
        let write = v.shared && v.prot & PROT_WRITE != 0;
        let touches = |r: &(u64, u64)| r.1 >= v.start && r.0 <= v.end;
        let i = match files.iter().position(|f| f.0 == path && f.1 == write && !f.2.iter().any(touches)) {
            Some(i) => i,
            None => {
                files.push((path.to_string(), write, Vec::new()));
                files.len() - 1
            }
        };
        files[i].2.push((v.start, v.end));
        file_of.push(Some(i));
    }
    let data = batch::data(inj, 0)?;
    let run = |inj: &mut Injector, calls: Vec<Call>| -> Result<Vec<i64>> {
        let mut jobs = [Job { inj, slot: 0, calls }];
        Ok(batch::run(&mut jobs)?.pop().unwrap_or_default())
    };
    // Opens, as many paths as the data area holds at a time.
    let mut fds: Vec<u64> = Vec::with_capacity(files.len());
    let mut failed = None;
    let mut i = 0;
    while i < files.len() && failed.is_none() {
        let (mut bytes, mut calls) = (Vec::new(), Vec::new());
        while i < files.len() && calls.len() < MAX_CALLS && bytes.len() + files[i].0.len() + 1 <= DATA_LEN as usize {
            let at = data + bytes.len() as u64;
            bytes.extend_from_slice(files[i].0.as_bytes());
            bytes.push(0);
            calls.push(Call::new(format!("open {}", files[i].0), nr::OPEN, &[at, if files[i].1 { 2 } else { 0 } | 0o2000000, 0]));
            i += 1;
        }
        if calls.is_empty() {
            // one path longer than the data area: opened on its own
            fds.push(open_mapped_file(inj, &files[i].0, files[i].1)?);
            i += 1;
            continue;
        }
        inj.write_mem(data, &bytes)?;
        let first = fds.len();
        for (k, r) in run(inj, calls)?.into_iter().enumerate() {
            if (-4095..0).contains(&r) {
                failed.get_or_insert(Error::new("EFILE", format!("cannot open mapped file {}: {}", files[first + k].0, Error::sys("open", (-r) as i32).message)));
            } else {
                fds.push(r as u64);
            }
        }
    }
    let mut res = match failed {
        Some(e) => Err(e),
        None => Ok(()),
    };
    if res.is_ok() {
        let mut calls: Vec<(Call, usize)> = Vec::with_capacity(areas.len());
        for (k, v) in areas.iter().enumerate() {
            let (flags, fd, off) = match file_of[k] {
                Some(f) => (if v.shared { MAP_SHARED } else { MAP_PRIVATE } | MAP_FIXED, fds[f], v.pgoff),
                None => (anon_flags(v), u64::MAX, 0),
            };
            let (prot, then) = if file_of[k].is_none() { first_prot(v, v.start) } else { (v.prot as u64, Vec::new()) };
            calls.push((Call::new(format!("mmap {:#x}", v.start), nr::MMAP, &[v.start, v.end - v.start, prot, flags, fd, off]), k));
            calls.extend(then.into_iter().map(|c| (c, k)));
        }
        let mut rest = calls.into_iter().peekable();
        'chunks: while rest.peek().is_some() {
            let chunk: Vec<(Call, usize)> = rest.by_ref().take(MAX_CALLS).collect();
            let which: Vec<usize> = chunk.iter().map(|c| c.1).collect();
            let out = run(inj, chunk.into_iter().map(|c| c.0).collect())?;
            for (r, &k) in out.iter().zip(&which) {
                if !(-4095..0).contains(r) {
                    continue;
                }
                // An anonymous area whose commit charge is refused is mapped
                // with MAP_NORESERVE, as map_vma does.
                let v = areas[k];
                if *r == -12 && file_of[k].is_none() {
                    if let Err(e) = map_vma(inj, v) {
                        res = Err(e);
                        break 'chunks;
                    }
                    continue;
                }
                res = Err(Error::sys(format!("mmap {:#x}-{:#x} {}", v.start, v.end, v.path), (-*r) as i32));
                break 'chunks;
            }
        }
    }
    let closes: Vec<Call> = fds.iter().map(|&fd| Call::new("close", nr::CLOSE, &[fd])).collect();
    for chunk in closes.chunks(MAX_CALLS) {
        run(inj, chunk.iter().map(|c| Call::new(c.what.clone(), c.nr, &c.args)).collect())?;
    }
    res
}

/// The VmFlags that tell how a private anonymous area's memory is
/// committed: "nr" (mapped with MAP_NORESERVE) or "ac" (charged: it was
/// writable at some time). Neither differs between areas side by side
/// that the kernel would otherwise merge into one, and smaps shows both.
pub fn commit_flags(vm_flags: &str) -> String {
    vm_flags.split_whitespace().filter(|f| matches!(*f, "nr" | "ac")).collect::<Vec<_>>().join(" ")
}

/// The protection a private anonymous area is mapped with first, and the
/// calls that must follow to give it its own: one charged ("ac") but not
/// writable now (made PROT_NONE after use, say) is charged only if it is
/// mapped writable, and keeps the charge through the mprotect only if it
/// has had a page (the kernel drops it from an area never faulted in): a
/// page is faulted in and dropped again, which leaves the area as empty.
/// `at`: where the area is mapped now (its own start, or a place it moves
/// from).
pub fn first_prot(v: &Vma, at: u64) -> (u64, Vec<Call>) {
    const MADV_DONTNEED: u64 = 4;
    const MADV_POPULATE_WRITE: u64 = 23;
    let charged = !v.shared && v.prot & PROT_WRITE == 0 && v.flags.split_whitespace().any(|f| f == "ac");
    if !charged {
        return (v.prot as u64, Vec::new());
    }
    let then = vec![
        Call::new(format!("madvise {:#x} (populate)", at), nr::MADVISE, &[at, PAGE_SIZE, MADV_POPULATE_WRITE]),
        Call::new(format!("madvise {:#x} (drop)", at), nr::MADVISE, &[at, PAGE_SIZE, MADV_DONTNEED]),
        Call::new(format!("mprotect {:#x}", at), nr::MPROTECT, &[at, v.end - v.start, v.prot as u64]),
    ];
    ((v.prot | PROT_READ | PROT_WRITE) as u64, then)
}

/// mmap flags of a private anonymous area, as map_vma maps it first.
pub fn anon_flags(v: &Vma) -> u64 {
    let mut flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
    if v.kind == Kind::Stack {
        flags |= MAP_GROWSDOWN;
    }
    if v.flags.split_whitespace().any(|f| f == "nr") {
        flags |= MAP_NORESERVE;
    }
    flags
}

fn open_mapped_file(inj: &mut Injector, path: &str, write: bool) -> Result<u64> {
    let p = inj.put_str(path, 0)?;
    inj.call(&format!("open {}", path), nr::OPEN, &[p, if write { 2 } else { 0 } | 0o2000000, 0])
        .map_err(|e| Error::new("EFILE", format!("cannot open mapped file {}: {}", path, e.message)))
}

/// A 256 MiB-aligned address with `len` bytes free of every area of `taken`.
pub fn free_spot(taken: &[Vma], len: u64) -> u64 {
    let mut a: u64 = 0x10000000;
    loop {
        if !taken.iter().any(|v| v.start < a + len && a < v.end) {
            return a;
        }
        a += 0x10000000;
    }
}

/// Map one area that is not a file's into the stub (files: map_vmas).
fn map_vma(inj: &mut Injector, v: &Vma) -> Result<()> {
    let len = v.end - v.start;
    // Mapped writable first only when the page data must be written through
    // process_vm_writev-like paths; /proc/PID/mem writes through protections,
    // so the final protection is used from the start.
    let prot = v.prot as u64;
    match v.kind {
        Kind::Anon | Kind::Heap | Kind::Stack => {
            let mut flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
            if v.kind == Kind::Stack {
                flags |= MAP_GROWSDOWN;
            }
            // MAP_NORESERVE as the source had it ("nr"), or when the commit
            // charge is refused: a big reservation (a runtime's heap, a
            // sanitizer's shadow) mapped with it would not fit otherwise.
            // Pre-copy layouts carry no VmFlags; the plain mapping comes first.
            let noreserve = v.flags.split_whitespace().any(|f| f == "nr");
            let what = format!("mmap {:#x}", v.start);
            let (first, then) = first_prot(v, v.start);
            match inj.call(&what, nr::MMAP, &[v.start, len, first, flags | if noreserve { MAP_NORESERVE } else { 0 }, u64::MAX, 0]) {
                Err(e) if e.errno == 12 /* ENOMEM */ && !noreserve => {
                    inj.call(&what, nr::MMAP, &[v.start, len, prot, flags | MAP_NORESERVE, u64::MAX, 0])?;
                }
                r => {
                    r?;
                    for c in then {
                        inj.call(&c.what, c.nr, &c.args)?;
                    }
                }
            }
        }
        Kind::Shmem => map_shared_anon(inj, v, prot)?,
        _ => {}
    }
    Ok(())
}

/// The ranges of `sorted` (sorted, disjoint) that overlap [a, b): a
/// binary search, for processes with thousands of areas.
pub fn ranges_overlapping(sorted: &[(u64, u64)], a: u64, b: u64) -> &[(u64, u64)] {
    let lo = sorted.partition_point(|r| r.1 <= a);
    let hi = lo + sorted[lo..].partition_point(|r| r.0 < b);
    &sorted[lo..hi]
}

/// `pages` (sorted, without duplicates) with `more` added.
pub fn add_pages(pages: &mut Vec<u64>, more: Vec<u64>) {
    if !more.is_empty() {
        pages.extend(more);
        pages.sort_unstable();
        pages.dedup();
    }
}

/// What is left of `range` once `holes` are taken out of it.
pub fn subtract(range: (u64, u64), holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = vec![range];
    for &(hs, he) in holes {
        let mut next = Vec::new();
        for (s, e) in out {
            if he <= s || hs >= e {
                next.push((s, e));
                continue;
            }
            if s < hs {
                next.push((s, hs));
            }
            if he < e {
                next.push((he, e));
            }
        }
        out = next;
    }
    out
}

/// The areas of `sorted` (sorted by start, disjoint) that overlap [a, b).
pub fn areas_overlapping(sorted: &[Vma], a: u64, b: u64) -> &[Vma] {
    let lo = sorted.partition_point(|v| v.end <= a);
    let hi = lo + sorted[lo..].partition_point(|v| v.start < b);
    &sorted[lo..hi]
}

/// Re-apply an area's madvise and mlock settings. Called once its pages are
/// in (mlock would fault an empty area in) and the stub's children are
/// forked (DONTFORK and WIPEONFORK would take the area from them).
/// Put back the madvise and mlock settings of `vmas`. The madvise calls
/// run as batches (glibc marks every thread stack and its guard page
/// MADV_NOHUGEPAGE: 128 calls for 64 threads, one stop each before).
pub fn apply_advice(inj: &mut Injector, vmas: &[Vma]) -> Result<()> {
    let mut calls = Vec::new();
    for v in vmas {
        for m in &v.advice().madvise {
            let what = format!("madvise {} ({}) of area {:#x}-{:#x}", m.name, m.flag, v.start, v.end);
            calls.push((Call::new(what, nr::MADVISE, &[v.start, v.end - v.start, m.advice]), m.optional));
        }
    }
    while !calls.is_empty() {
        let rest = calls.split_off(calls.len().min(crate::batch::MAX_CALLS));
        let (batch, optional): (Vec<Call>, Vec<bool>) = std::mem::replace(&mut calls, rest).into_iter().unzip();
        let mut jobs = [crate::batch::Job { inj: &mut *inj, slot: 0, calls: batch }];
        let res = crate::batch::run(&mut jobs)?;
        for ((c, r), opt) in jobs[0].calls.iter().zip(&res[0]).zip(optional) {
            if (-4095..0).contains(r) && !(*r == -22 /* EINVAL */ && opt) {
                return Err(Error::sys(format!("{} in process {}", c.what, jobs[0].inj.pid), (-r) as i32));
            }
        }
    }
    for v in vmas {
        if let Some(f) = v.advice().lock {
            lock_area(inj, v, f)?;
        }
    }
    Ok(())
}

/// mlock2 marks the area locked first, then faults its pages in; pages that
/// cannot be (a PROT_NONE area, a file mapping past the file's end) fail it
/// with ENOMEM although the area is locked. mlockall() ignores those, so a
/// process that used it has such areas: they are fine once smaps says "lo".
fn lock_area(inj: &mut Injector, v: &Vma, flags: u64) -> Result<()> {
    let what = format!("mlock2 ({}) of area {:#x}-{:#x}", if flags & MLOCK_ONFAULT != 0 { "lo lf" } else { "lo" }, v.start, v.end);
    match inj.call(&what, nr::MLOCK2, &[v.start, v.end - v.start, flags]) {
        Err(e) if e.errno == 12 /* ENOMEM */ && is_locked(inj.pid, v.start) => Ok(()),
        r => r.map(|_| ()),
    }
}

fn is_locked(pid: Pid, start: u64) -> bool {
    proc::vm_flags(pid).ok().and_then(|f| f.get(&start).map(|s| s.split_whitespace().any(|x| x == "lo"))).unwrap_or(false)
}

/// Write stored page runs from the page file into the stub's memory.
pub fn fill_from_file(mem: &File, pages: &File, runs: &[PageRun]) -> Result<u64> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut total = 0;
    for r in runs {
        let mut done = 0;
        let len = r.nr_pages * PAGE_SIZE;
        while done < len {
            let l = (len - done).min(CHUNK) as usize;
            let b = &mut buf[..l];
            pages.read_exact_at(b, r.offset + done).map_err(|e| {
                Error::new("EIMAGE", format!("page file is truncated or unreadable at offset {}: {}", r.offset + done, e))
            })?;
            mem.write_all_at(b, r.vaddr + done).ctx(format!("writing restored memory at {:#x}", r.vaddr + done))?;
            done += l as u64;
            total += l as u64;
        }
    }
    Ok(total)
}

/// Shared anonymous memory seen in this restore: object id -> (host pid, start, end, pgoff)
/// of its first mapping, so that later processes map the very same object.
fn shared_objects() -> &'static std::sync::Mutex<std::collections::HashMap<u64, (Pid, u64, u64, u64)>> {
    static S: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<u64, (Pid, u64, u64, u64)>>> = std::sync::OnceLock::new();
    S.get_or_init(Default::default)
}

/// A MAP_SHARED|MAP_ANONYMOUS area (nginx's shared zones, a parent and its
/// forked children): the first process creates the object; the others map
/// it through /proc/PID/map_files of the first, so writes stay shared and
/// /proc/PID/maps still reads "/dev/zero (deleted)".
fn map_shared_anon(inj: &mut Injector, v: &Vma, prot: u64) -> Result<()> {
    let len = v.end - v.start;
    let first = shared_objects().lock().ok().and_then(|m| m.get(&v.ino).copied());
    match first {
        Some((host, s, e, pgoff)) if host != inj.pid || !(s <= v.start && v.end <= e) => {
            let path = format!("/proc/{}/map_files/{:x}-{:x}", host, s, e);
            let p = inj.put_str(&path, 0)?;
            let fd = inj.call(&format!("open {}", path), nr::OPEN, &[p, 2 | 0o2000000, 0])?;
            let off = v.pgoff.saturating_sub(pgoff);
            let r = inj.call(&format!("mmap shared {:#x}", v.start), nr::MMAP, &[v.start, len, prot, MAP_SHARED | MAP_FIXED, fd, off]);
            inj.call("close", nr::CLOSE, &[fd])?;
            r?;
        }
        _ => {
            inj.call(&format!("mmap {:#x}", v.start), nr::MMAP, &[v.start, len, prot, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, u64::MAX, 0])?;
            if let Ok(mut m) = shared_objects().lock() {
                m.entry(v.ino).or_insert((inj.pid, v.start, v.end, v.pgoff));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_ranges() {
        assert_eq!(subtract((0, 100), &[(10, 20), (50, 60)]), vec![(0, 10), (20, 50), (60, 100)]);
        assert_eq!(subtract((0, 10), &[(0, 10)]), vec![]);
    }

    fn area(kind: Kind, flags: &str) -> Vma {
        Vma { start: 0x1000, end: 0x3000, prot: 3, shared: false, kind, pgoff: 0, path: String::new(), dev: 0, ino: 0, flags: flags.to_string() }
    }

    fn names(a: &Advice) -> Vec<&'static str> {
        a.madvise.iter().map(|m| m.name).collect()
    }

    #[test]
    fn advice_from_vm_flags() {
        let a = area(Kind::Anon, "rd wr mr mw me dc wf dd hg nh mg ac").advice();
        assert_eq!(names(&a), ["MADV_DONTFORK", "MADV_WIPEONFORK", "MADV_DONTDUMP", "MADV_HUGEPAGE", "MADV_NOHUGEPAGE", "MADV_MERGEABLE"]);
        assert_eq!(a.lock, None);
        assert_eq!(area(Kind::Heap, "rd wr mr mw me lo ac").advice().lock, Some(0));
        assert_eq!(area(Kind::File, "rd mr mw me lo lf").advice().lock, Some(MLOCK_ONFAULT));
        // Whole words only: "ac", "sd", "gd" and friends are no advice.
        assert_eq!(area(Kind::Stack, "rd wr mr mw me gd ac sd").advice(), Advice::default());
    }

    #[test]
    fn kernel_areas_get_no_advice() {
        assert_eq!(area(Kind::Vvar, "rd mr pf io de dd").advice(), Advice::default());
        assert_eq!(area(Kind::Vdso, "rd ex mr mw me dc lo").advice(), Advice::default());
    }

    #[test]
    fn flags_survive_the_image() {
        let v = area(Kind::Anon, "rd wr mr mw me lo lf ac");
        assert_eq!(Vma::from_json(&v.to_json()).map(|w| w.flags).ok().as_deref(), Some("rd wr mr mw me lo lf ac"));
        assert!(area(Kind::Anon, "").to_json().get("flags").is_none());
    }
}
