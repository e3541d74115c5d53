//! Reading /proc: maps, status, stat, task lists, children, fd info.

use crate::sys::{Context, Error, Pid, Result};
use std::collections::HashMap;
use std::fs;

#[derive(Clone, Debug)]
pub struct MapLine {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub shared: bool,
    pub pgoff: u64,
    pub dev: u64,
    pub ino: u64,
    pub path: String,
}

pub fn maps(pid: Pid) -> Result<Vec<MapLine>> {
    let text = fs::read_to_string(format!("/proc/{}/maps", pid)).ctx(format!("reading /proc/{}/maps", pid))?;
    Ok(text.lines().filter_map(parse_map_line).collect())
}

/// The VmFlags of every area, by start address. smaps is the only place the
/// kernel shows what madvise() and mlock() set on an area; it costs a page
/// table walk per area, so it is read for dumps only.
pub fn vm_flags(pid: Pid) -> Result<std::collections::HashMap<u64, String>> {
    let starts: Vec<u64> = maps(pid)?.iter().map(|m| m.start).collect();
    vm_flags_covering(pid, &starts)
}

/// `vm_flags`, for the areas starting at `starts` (read from maps by the
/// caller). smaps has been seen to end early without an error (a restored
/// workload reading its own, about once in 200 reads, the next read
/// whole): an area without flags means read again. A running process may
/// also have changed its areas in between: after four reads, what was read
/// is what there is.
pub fn vm_flags_covering(pid: Pid, starts: &[u64]) -> Result<std::collections::HashMap<u64, String>> {
    let mut flags = read_vm_flags(pid)?;
    for _ in 0..3 {
        if starts.iter().all(|s| flags.contains_key(s)) {
            break;
        }
        flags = read_vm_flags(pid)?;
    }
    Ok(flags)
}

fn read_vm_flags(pid: Pid) -> Result<std::collections::HashMap<u64, String>> {
    let text = fs::read_to_string(format!("/proc/{}/smaps", pid)).ctx(format!("reading /proc/{}/smaps", pid))?;
    let mut out = std::collections::HashMap::new();
    let mut start = None;
    for l in text.lines() {
        match l.strip_prefix("VmFlags:") {
            Some(f) => {
                if let Some(s) = start.take() {
                    out.insert(s, f.trim().to_string());
                }
            }
            None => {
                if let Some(m) = parse_map_line(l) {
                    start = Some(m.start);
                }
            }
        }
    }
    Ok(out)
}

pub fn parse_map_line(l: &str) -> Option<MapLine> {
    let mut it = l.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let off = it.next()?;
    let dev = it.next()?;
    let ino = it.next()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    let (maj, min) = dev.split_once(':')?;
    let mut prot = 0;
    if perms.first() == Some(&b'r') {
        prot |= 1;
    }
    if perms.get(1) == Some(&b'w') {
        prot |= 2;
    }
    if perms.get(2) == Some(&b'x') {
        prot |= 4;
    }
    let maj = u64::from_str_radix(maj, 16).ok()?;
    let min = u64::from_str_radix(min, 16).ok()?;
    Some(MapLine {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        prot,
        shared: perms.get(3) == Some(&b's'),
        pgoff: u64::from_str_radix(off, 16).ok()?,
        dev: makedev(maj, min),
        ino: ino.parse().ok()?,
        path,
    })
}

/// The kernel's encoding of a dev_t (as in stat's st_dev).
pub fn makedev(maj: u64, min: u64) -> u64 {
    ((maj & 0xfffff000) << 32) | ((maj & 0xfff) << 8) | ((min & 0xffffff00) << 12) | (min & 0xff)
}

pub fn tasks(pid: Pid) -> Result<Vec<Pid>> {
    let mut v: Vec<Pid> = fs::read_dir(format!("/proc/{}/task", pid))
        .ctx(format!("listing threads of {}", pid))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort();
    // The thread group leader first: it is created first on restore.
    if let Some(i) = v.iter().position(|&t| t == pid) {
        v.remove(i);
        v.insert(0, pid);
    }
    Ok(v)
}

pub fn children(pid: Pid) -> Vec<Pid> {
    let mut out = Vec::new();
    for t in tasks(pid).unwrap_or_default() {
        if let Ok(s) = fs::read_to_string(format!("/proc/{}/task/{}/children", pid, t)) {
            out.extend(s.split_whitespace().filter_map(|x| x.parse::<Pid>().ok()));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A field of /proc/PID/status, e.g. "Umask".
/// A field of one thread's status (/proc/PID/task/TID/status).
pub fn task_status_field(pid: Pid, tid: Pid, key: &str) -> Option<String> {
    field_of_status(&fs::read_to_string(format!("/proc/{}/task/{}/status", pid, tid)).ok()?, key)
}

/// One field of a /proc status text, trimmed.
pub fn field_of_status(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string()))
}

/// The pid of thread `tid` of `pid` as its own innermost pid namespace (the
/// tree's) sees it: the last of NSpid. Our view when /proc cannot tell.
pub fn innermost_pid(pid: Pid, tid: Pid) -> Pid {
    task_status_field(pid, tid, "NSpid").and_then(|v| v.split_whitespace().last().and_then(|x| x.parse().ok())).unwrap_or(tid)
}

pub fn status_field(pid: Pid, key: &str) -> Result<String> {
    let text = fs::read_to_string(format!("/proc/{}/status", pid)).ctx(format!("reading /proc/{}/status", pid))?;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix(key).and_then(|r| r.strip_prefix(':')) {
            return Ok(rest.trim().to_string());
        }
    }
    Err(Error::new("EPROC", format!("/proc/{}/status has no {}", pid, key)))
}

/// /proc/PID/stat split into fields; field 1 (comm) is returned whole.
pub fn stat(pid: Pid) -> Result<(String, Vec<String>)> {
    parse_stat(&fs::read_to_string(format!("/proc/{}/stat", pid)).ctx(format!("reading /proc/{}/stat", pid))?)
}

/// A stat text split into its comm and the fields after it.
pub fn parse_stat(text: &str) -> Result<(String, Vec<String>)> {
    let open = text.find('(').ok_or_else(|| Error::new("EPROC", "bad stat"))?;
    let close = text.rfind(')').ok_or_else(|| Error::new("EPROC", "bad stat"))?;
    let comm = text[open + 1..close].to_string();
    // fields[0] is field 3 (state) of proc(5).
    let fields = text[close + 2..].split_whitespace().map(String::from).collect();
    Ok((comm, fields))
}

/// Field number `n` (1-based, as in proc(5)) of /proc/PID/stat, n >= 3.
pub fn stat_u64(fields: &[String], n: usize) -> u64 {
    fields.get(n - 3).and_then(|s| s.parse::<i64>().ok()).map(|v| v as u64).unwrap_or(0)
}

/// The target of a link. A name that is not UTF-8 cannot go into the state
/// document as it is (a lossy copy would name another file): refused.
pub fn readlink(path: &str) -> Result<String> {
    let p = fs::read_link(path).ctx(format!("readlink {}", path))?;
    p.to_str().map(str::to_owned).ok_or_else(|| {
        Error::new("EUNSUPPORTED", format!("{} leads to {}, a name that is not UTF-8 (not supported)", path, p.to_string_lossy()))
    })
}

pub struct FdInfo {
    pub pos: u64,
    pub flags: u32,
    pub mnt_id: u64,
    pub ino: u64,
    pub raw: String,
}

pub fn fdinfo(pid: Pid, fd: i32) -> Result<FdInfo> {
    let raw = fs::read_to_string(format!("/proc/{}/fdinfo/{}", pid, fd)).ctx(format!("reading fdinfo of fd {}", fd))?;
    let mut fi = FdInfo { pos: 0, flags: 0, mnt_id: 0, ino: 0, raw: String::new() };
    for l in raw.lines() {
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            match k {
                "pos" => fi.pos = v.parse().unwrap_or(0),
                "flags" => fi.flags = u32::from_str_radix(v, 8).unwrap_or(0),
                "mnt_id" => fi.mnt_id = v.parse().unwrap_or(0),
                "ino" => fi.ino = v.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    fi.raw = raw;
    Ok(fi)
}

pub fn fds(pid: Pid) -> Result<Vec<i32>> {
    let mut v: Vec<i32> = fs::read_dir(format!("/proc/{}/fd", pid))
        .ctx(format!("listing fds of {}", pid))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort();
    Ok(v)
}

/// This boot's id: the same string on one host until it reboots.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().to_string()
}

/// The network namespace of `pid` (None: this process) as "dev:inode",
/// the same string for every process in one network stack.
pub fn net_ns_id(pid: Option<Pid>) -> String {
    use std::os::unix::fs::MetadataExt;
    let path = match pid {
        Some(p) => format!("/proc/{}/ns/net", p),
        None => "/proc/thread-self/ns/net".to_string(),
    };
    fs::metadata(path).map(|m| format!("{}:{}", m.dev(), m.ino())).unwrap_or_default()
}

/// Exited (a zombie, or reaped): no longer a live process.
pub fn exited(pid: Pid) -> bool {
    stat(pid).map(|(_, f)| stat_exited(&f)).unwrap_or(true)
}

/// Do these stat fields show a zombie (or a task being reaped)?
fn stat_exited(fields: &[String]) -> bool {
    matches!(fields.first().map(String::as_str), Some("Z") | Some("X"))
}

pub fn exists(pid: Pid) -> bool {
    std::path::Path::new(&format!("/proc/{}", pid)).exists()
}

/// A process that keeps a pid taken although no process has it: a pid stays
/// in use while some process has it as its group or session id.
pub struct GroupHolder {
    pub pid: Pid,
    /// "process group" or "session".
    pub what: &'static str,
    /// Exited (an orphan zombie): the id is freed once it is reaped.
    pub dead: bool,
}

/// Why `pid` is taken when no process has it ("" when one does).
pub fn why_taken(pid: Pid) -> String {
    match group_ids_in_use().remove(&pid).filter(|_| !exists(pid)) {
        Some(h) => format!(": it is the {} id of process {}", h.what, h.pid),
        None => String::new(),
    }
}

/// Every group and session id in use on this host, with a process holding it.
pub fn group_ids_in_use() -> HashMap<Pid, GroupHolder> {
    let mut ids = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else { return ids };
    for p in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<Pid>().ok()) {
        let Ok((_, f)) = stat(p) else { continue };
        let dead = stat_exited(&f);
        for (n, what) in [(5, "process group"), (6, "session")] {
            let id = stat_u64(&f, n) as Pid;
            // A live holder is the one worth naming.
            if !ids.get(&id).is_some_and(|h: &GroupHolder| !h.dead) {
                ids.insert(id, GroupHolder { pid: p, what, dead });
            }
        }
    }
    ids
}

/// The PF_* flags of a task (its stat's ninth field; 0 if it is gone).
fn task_flags(tid: Pid) -> u64 {
    stat(tid).map(|(_, f)| stat_u64(&f, 9)).unwrap_or(0)
}

/// Is this thread an io_uring worker (PF_IO_WORKER)?
pub fn is_io_worker(tid: Pid) -> bool {
    task_flags(tid) & 0x10 != 0
}

/// Is this a kernel thread (PF_KTHREAD in the stat flags)?
pub fn is_kernel_thread(pid: Pid) -> bool {
    task_flags(pid) & 0x0020_0000 != 0
}

/// A path of /proc/PID/mountinfo, whose spaces and such are octal escapes.
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod mountinfo_tests {
    use super::unescape_mountinfo;

    #[test]
    fn mountinfo_names_unescaped() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\04"), "/end\\04");
    }
}
