//! Descriptors in flight: sent with SCM_RIGHTS on a unix socket and not
//! received yet, so they sit in a receive queue rather than in a table.
//!
//! Dump: peeking a queue (sockets/unix.rs) installs a copy of each into
//! phaul's own table. The copies are kept here, one slot each, and at the
//! end of the dump files.rs describes them as descriptors of phaul's own
//! process: one also open in the tree, or in flight twice, is found to be
//! the same file description (kcmp) and keeps one file id; one that is a
//! unix socket has its own queue peeked in turn. The queue's "in_flight"
//! entries then name file ids instead of slots (`link`).
//! Restore opens them like every other file; sockets/unix.rs sends each
//! again with its message once every file is open.

use crate::json::Json;
use crate::proc::FdInfo;
use crate::sys::{Error, Fd, Pid, Result};
use std::cell::{Cell, RefCell};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Where descriptors were found: fd `.1` of process `.0`, whose queue (or
/// the queue of a socket in flight in it) holds them.
pub type Carrier = (Pid, i32);

#[derive(Default)]
pub struct Sink {
    found: RefCell<Vec<(Fd, Carrier)>>,
    carrier: Cell<Carrier>,
}

impl Sink {
    /// Descriptors taken from now on were found in the queue of `c`.
    pub fn set_carrier(&self, c: Carrier) {
        self.carrier.set(c);
    }

    /// Where descriptors taken now are found.
    pub fn carrier(&self) -> Carrier {
        self.carrier.get()
    }

    /// Keep `fd` (a copy peeked from a queue); returns its slot.
    pub fn take(&self, fd: Fd) -> u64 {
        let mut v = self.found.borrow_mut();
        v.push((fd, self.carrier.get()));
        (v.len() - 1) as u64
    }

    /// `f` applied to the descriptor of slot `i`.
    pub fn with_fd<R>(&self, i: usize, f: impl FnOnce(&Fd) -> R) -> Option<R> {
        self.found.borrow().get(i).map(|(fd, _)| f(fd))
    }

    /// The descriptor number (in phaul) and the carrier of slot `i`.
    pub fn get(&self, i: usize) -> Option<(i32, Carrier)> {
        self.found.borrow().get(i).map(|(fd, c)| (fd.raw(), *c))
    }
}

/// Why a descriptor cannot travel in flight, if it cannot. What phaul
/// restores from inside a process (epoll watches name descriptor numbers,
/// pidfds, O_ASYNC owners, file locks) or handles per process (pseudo-
/// terminal pairs, TCP/UDP sockets) has no process to be done in here.
pub fn refusal(fd: &Fd, target: &str, md: &std::fs::Metadata, info: &FdInfo) -> Option<String> {
    let ft = md.file_type();
    if info.flags & crate::fown::O_ASYNC != 0 {
        return Some(format!("{} with signal-driven I/O (O_ASYNC)", target));
    }
    if info.raw.lines().any(|l| l.starts_with("lock:")) {
        return Some(format!("{} holding a file lock or lease", target));
    }
    if ft.is_char_device() && (crate::tty::is_ptmx(md.rdev()) || crate::tty::is_pts(md.rdev())) {
        return Some(format!("pseudo-terminal {}", target));
    }
    if ft.is_socket() {
        return match crate::sockets::domain_of(fd) {
            crate::sockets::AF_UNIX => None,
            _ => Some(format!("{} (only unix sockets can be carried in flight)", target)),
        };
    }
    if ft.is_file() || ft.is_dir() || ft.is_fifo() || ft.is_char_device() || target == "anon_inode:[eventfd]" {
        return None;
    }
    Some(match target.strip_prefix("anon_inode:").map(|k| k.trim_matches(|c| c == '[' || c == ']')) {
        Some("eventpoll") => "epoll descriptor".to_string(),
        Some(k) => format!("{} descriptor", k),
        None => target.to_string(),
    })
}

/// Replace the slots named by every unix queue's "in_flight" entries with
/// the file ids `ids` (indexed by slot).
pub fn link(files: &mut [Json], ids: &[u64]) -> Result<()> {
    for f in files.iter_mut() {
        let s = match f.get("sock") {
            Some(s) if !s.arr_of("in_flight").is_empty() => s,
            _ => continue,
        };
        let entries = s
            .arr_of("in_flight")
            .iter()
            .map(|e| {
                let named = e
                    .arr_of("files")
                    .iter()
                    .map(|slot| slot.as_u64().and_then(|i| ids.get(i as usize)).map(|id| Json::from(*id)))
                    .collect::<Option<Vec<Json>>>()
                    .ok_or_else(|| Error::new("EINTERNAL", "a descriptor in flight was not described"))?;
                Ok(e.clone().with("files", named))
            })
            .collect::<Result<Vec<Json>>>()?;
        let s = s.clone().with("in_flight", entries);
        f.set("sock", s);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_file_ids() {
        let sock = Json::obj().with("in_flight", vec![Json::obj().with("msg", 1u64).with("files", vec![Json::from(0u64), Json::from(1u64), Json::from(0u64)])]);
        let mut files = vec![Json::obj().with("id", 3u64).with("kind", "reg"), Json::obj().with("id", 4u64).with("kind", "sock_unix").with("sock", sock)];
        link(&mut files, &[7, 9]).expect("link");
        let e = &files[1].get("sock").expect("sock").arr_of("in_flight")[0];
        assert_eq!(e.u64_of("msg"), Some(1));
        assert_eq!(e.arr_of("files").iter().filter_map(Json::as_u64).collect::<Vec<_>>(), vec![7, 9, 7]);
    }

    #[test]
    fn link_refuses_unknown_slots() {
        let sock = Json::obj().with("in_flight", vec![Json::obj().with("msg", 0u64).with("files", vec![Json::from(5u64)])]);
        let mut files = vec![Json::obj().with("id", 1u64).with("kind", "sock_unix").with("sock", sock)];
        assert!(link(&mut files, &[2]).is_err());
    }
}
