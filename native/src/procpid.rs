//! Descriptors and working directories under /proc/PID: they name one
//! process, by its pid.
//!
//! Dump: an entry of a live process names it. An entry of a process that
//! has exited and been reaped (its path shows " (deleted)") is kept as a
//! dead entry: the restore makes a short-lived helper process with that
//! pid, opens the entry (or enters it) under it, and lets the helper die,
//! so the process holds an entry of a dead process again, as before.
//! Refused: an entry whose pid now leads to another process (reused; its
//! helper could not have the pid), a dead entry naming a descriptor (the
//! helper has none), and one of a thread that is not a process's main
//! thread (threads are made after the descriptors).
//! Restore: the entry of a process of the tree is opened once the stubs
//! exist, under the pid phaul sees the restored process with (its host pid,
//! when the tree gets a pid namespace of its own); opened any earlier, it
//! would be missing, or be the frozen source's on a migration to this host.
//! An entry naming a descriptor (/proc/PID/fdinfo/N) opens later still,
//! once the process's other descriptors are installed.

use crate::sys::{Error, Pid, Result};
use std::os::unix::fs::MetadataExt;

/// A path "/proc/PID[/task/TID][REST]".
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub pid: Pid,
    pub tid: Option<Pid>,
    /// What follows, "" or starting with '/'.
    pub rest: String,
}

fn pid_part(s: &str) -> Option<(Pid, &str)> {
    let end = s.find('/').unwrap_or(s.len());
    let n: Pid = s[..end].parse().ok().filter(|&n: &Pid| n > 0)?;
    if !s[..end].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((n, &s[end..]))
}

pub fn parse(path: &str) -> Option<Entry> {
    let (pid, rest) = pid_part(path.strip_prefix("/proc/")?)?;
    if let Some((tid, rest)) = rest.strip_prefix("/task/").and_then(pid_part) {
        return Some(Entry { pid, tid: Some(tid), rest: rest.to_string() });
    }
    Some(Entry { pid, tid: None, rest: rest.to_string() })
}

/// An entry naming one descriptor ("/proc/PID/fd/N", "/proc/PID/fdinfo/N"):
/// it opens only once descriptor N is installed.
pub fn names_descriptor(path: &str) -> bool {
    parse(path).is_some_and(|e| {
        let r = e.rest.trim_start_matches('/');
        r.strip_prefix("fd/").or_else(|| r.strip_prefix("fdinfo/")).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// `path` (an entry of process `pid`) under the pid `host` instead.
pub fn on_host(path: &str, pid: Pid, host: Pid) -> String {
    match parse(path) {
        Some(e) if e.pid == pid => {
            let task = match e.tid {
                Some(t) if t == pid => format!("/task/{}", host),
                Some(t) => format!("/task/{}", t),
                None => String::new(),
            };
            format!("/proc/{}{}{}", host, task, e.rest)
        }
        _ => path.to_string(),
    }
}

/// The process a /proc entry names.
#[derive(Debug, PartialEq, Eq)]
pub struct Named {
    pub pid: Pid,
    /// Exited and reaped: the restore makes a helper with its pid (above).
    pub dead: bool,
}

/// A working directory or path of a dead entry: the path without its
/// " (deleted)", with the pid it names.
pub fn dead_entry(path: &str) -> Option<(Pid, &str)> {
    let p = path.strip_suffix(" (deleted)")?;
    parse(p).map(|e| (e.pid, p))
}

/// If `target` (as `owner` sees it; `md`: what it opens) is an entry of a
/// process under /proc, the process it names; refused when it cannot be
/// made again (above). `what` names it in messages ("fd 5").
pub fn check(owner: Pid, what: &str, target: &str, md: &std::fs::Metadata) -> Result<Option<Named>> {
    let (path, deleted) = match target.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (target, false),
    };
    let Some(e) = parse(path) else { return Ok(None) };
    // Looked up in the owner's own file system view: its root, its /proc.
    let root = format!("/proc/{}/root", owner);
    match std::fs::metadata(format!("{}/proc", root)) {
        Ok(p) if p.dev() == md.dev() => {}
        _ => return Ok(None), // not on the /proc it has: an ordinary path
    }
    // An open entry keeps its dentry: while its process lives, a lookup
    // finds that very inode again; once it is reaped the dentry is dropped
    // from the cache and the path reads " (deleted)".
    let now = std::fs::metadata(format!("{}{}", root, path));
    if deleted || now.is_err() {
        if e.tid.is_some_and(|t| t != e.pid) || names_descriptor(path) {
            return Err(Error::new(
                "EUNSUPPORTED",
                format!("{}: {} is an entry of process {}, which has exited: not supported for a thread's entry or one naming a descriptor", what, path, e.pid),
            ));
        }
        return Ok(Some(Named { pid: e.pid, dead: true }));
    }
    if now.is_ok_and(|n| n.ino() != md.ino()) {
        return Err(Error::new(
            "EUNSUPPORTED",
            format!("{}: {} is an entry of process {}, which has exited, and its pid is now another process's: it cannot be restored", what, path, e.pid),
        ));
    }
    let tgid = std::fs::read_to_string(format!("{}/proc/{}/status", root, e.pid))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Tgid:").and_then(|v| v.trim().parse::<Pid>().ok())));
    let thread = match e.tid {
        Some(t) if t != e.pid => Some(t),
        _ if tgid.is_some_and(|g| g != e.pid) => Some(e.pid),
        _ => None,
    };
    if let Some(t) = thread {
        return Err(Error::new("EUNSUPPORTED", format!("{}: {} is an entry of thread {}, not of a process's main thread: not supported", what, path, t)));
    }
    Ok(Some(Named { pid: e.pid, dead: false }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries() {
        assert_eq!(parse("/proc/12"), Some(Entry { pid: 12, tid: None, rest: String::new() }));
        assert_eq!(parse("/proc/12/status"), Some(Entry { pid: 12, tid: None, rest: "/status".into() }));
        assert_eq!(parse("/proc/12/task/13/stat"), Some(Entry { pid: 12, tid: Some(13), rest: "/stat".into() }));
        assert_eq!(parse("/proc/12/taskx/13"), Some(Entry { pid: 12, tid: None, rest: "/taskx/13".into() }));
        assert_eq!(parse("/proc/12/task"), Some(Entry { pid: 12, tid: None, rest: "/task".into() }));
        assert_eq!(parse("/proc/self/status"), None);
        assert_eq!(parse("/proc/meminfo"), None);
        assert_eq!(parse("/proc/12x/status"), None);
        assert_eq!(parse("/proc/+12"), None);
        assert_eq!(parse("/proc/0"), None);
        assert_eq!(parse("/procx/12"), None);
    }

    #[test]
    fn moves_to_the_host_pid() {
        assert_eq!(on_host("/proc/12", 12, 4012), "/proc/4012");
        assert_eq!(on_host("/proc/12/fd", 12, 4012), "/proc/4012/fd");
        assert_eq!(on_host("/proc/12/task/12/status", 12, 4012), "/proc/4012/task/4012/status");
        assert_eq!(on_host("/proc/13/status", 12, 4012), "/proc/13/status");
    }

    #[test]
    fn reads_dead_entries() {
        assert_eq!(dead_entry("/proc/12 (deleted)"), Some((12, "/proc/12")));
        assert_eq!(dead_entry("/proc/12/mountinfo (deleted)"), Some((12, "/proc/12/mountinfo")));
        assert_eq!(dead_entry("/proc/12/mountinfo"), None);
        assert_eq!(dead_entry("/tmp/x (deleted)"), None);
    }
}
