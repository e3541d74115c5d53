//! Stand-in processes: short-lived processes that take the place of ones
//! that had exited before the dump, so that what the tree holds of them
//! comes back as it was. A descriptor or working directory on /proc/PID of
//! a reaped process (procpid.rs) is opened under a stand-in with that pid;
//! a pidfd of a reaped process (anonfd/pidfd.rs) is opened on a stand-in
//! with any pid. Each is forked without an exit signal from the tree's
//! namespace init (or its root process), and killed and reaped by that
//! parent before the tree runs: the entries and pidfds are those of a dead
//! process again, and the tree never hears of them.

use crate::inject::Injector;
use crate::json::Json;
use crate::restore::Tree;
use crate::stub;
use crate::sys::{Error, Pid, Result};

/// Pids of exited processes whose /proc entries the tree holds open or
/// works in (procpid.rs).
fn dead_pids(state: &Json, procs: &[&Json]) -> Vec<Pid> {
    let mut out: Vec<Pid> = state.arr_of("files").iter().filter(|f| f.bool_of("proc_dead")).filter_map(|f| f.i64_of("proc_pid")).map(|p| p as Pid).collect();
    out.extend(procs.iter().filter_map(|p| p.str_of("cwd")).filter_map(crate::procpid::dead_entry).map(|(pid, _)| pid));
    out.sort_unstable();
    out.dedup();
    out
}

/// The stub that parents the stand-ins: the namespace's init, or the root.
fn parent(tree: &mut Tree) -> Result<&mut Injector> {
    match tree.init.as_mut() {
        Some(init) => Ok(init),
        None => tree.stubs.first_mut().map(|s| &mut s.leader).ok_or_else(|| Error::new("EIMAGE", "no process to restore")),
    }
}

/// Stand-ins for the exited processes of dead /proc entries: one process
/// with each pid (in the tree's pid namespace when it has one), alive while
/// the entries are opened and entered, then killed and reaped
/// (`end`) before the tree runs. Their parent hears nothing of them
/// (no exit signal). Returns (pid, host pid) pairs, for the entries' host map.
pub fn make(tree: &mut Tree, state: &Json, procs: &[&Json]) -> Result<Helpers> {
    let mut made = Helpers::default();
    for pid in dead_pids(state, procs) {
        if tree.hosts.iter().any(|h| h.0 == pid) {
            return Err(Error::new("EIMAGE", format!("an entry of exited process {} is held, but pid {} is a process of the tree", pid, pid)));
        }
        let (_, host) = stub::fork_quiet_child(parent(tree)?, Some(pid))?;
        tree.created.push(host);
        made.entries.push((pid, host));
    }
    // pidfds of reaped processes: whatever pid their process had is gone
    // (fdinfo shows -1); one stand-in per process (pidfs inode), any pid.
    let mut by_ino: std::collections::BTreeMap<u64, Pid> = std::collections::BTreeMap::new();
    for f in state.arr_of("files").iter().filter(|f| f.str_of("kind") == Some("pidfd") && f.bool_of("dead")) {
        let ino = f.u64_of("ino").unwrap_or(0);
        let pid = match by_ino.get(&ino) {
            Some(&pid) => pid,
            None => {
                let (pid, host) = stub::fork_quiet_child(parent(tree)?, None)?;
                tree.created.push(host);
                made.others.push((pid, host));
                by_ino.insert(ino, pid);
                pid
            }
        };
        crate::anonfd::pidfd::stand_in(f.u64_of("id").unwrap_or(0), pid);
    }
    Ok(made)
}

/// The stand-ins of `make`, as (pid in the tree's namespace, host pid).
#[derive(Default)]
pub struct Helpers {
    /// For /proc entries: the pid is the dead process's.
    pub entries: Vec<(Pid, Pid)>,
    /// For pidfds of reaped processes.
    others: Vec<(Pid, Pid)>,
}

/// Once every entry is open: the stand-ins die and are reaped, which turns
/// their /proc entries into dead ones.
pub fn end(tree: &mut Tree, helpers: &Helpers) -> Result<()> {
    for &(pid, host) in helpers.entries.iter().chain(&helpers.others) {
        stub::reap_quiet_child(parent(tree)?, pid, host)?;
        tree.created.retain(|&c| c != host);
    }
    Ok(())
}

