//! Kernel objects that processes (not threads) of a tree share because one
//! was cloned from another with CLONE_FILES, CLONE_FS, CLONE_VM or
//! CLONE_SIGHAND: a descriptor table, a working directory/root/umask, an
//! address space, signal handlers.
//!
//! Dump: kcmp(2) tells which processes hold the same object. Each process
//! that is not the first of its group (in tree order) records the first one
//! under "shares" ({"files": pid, "fs": pid}).
//! Restore: such a process is forked with the flags that make it share
//! again, from its parent or, with CLONE_PARENT, from an earlier sibling that
//! already holds the objects; the object itself is filled once, by the
//! group's first process. `plan` decides that, and the dump refuses a tree
//! for which it finds no way.

use crate::freeze::Frozen;
use crate::json::Json;
use crate::sys::{self, nr, Error, Pid, Result};
use std::cmp::Ordering;

pub const CLONE_VM: u64 = 0x100;
pub const CLONE_FS: u64 = 0x200;
pub const CLONE_FILES: u64 = 0x400;
pub const CLONE_SIGHAND: u64 = 0x800;
pub const CLONE_PARENT: u64 = 0x8000;

/// One kind of shareable object.
pub struct Kind {
    /// Key under "shares".
    pub key: &'static str,
    kcmp: u64,
    pub flag: u64,
    /// What it is, for messages.
    pub what: &'static str,
}

pub const FILES: Kind = Kind { key: "files", kcmp: 2, flag: CLONE_FILES, what: "descriptor table (CLONE_FILES)" };
pub const FS: Kind = Kind { key: "fs", kcmp: 3, flag: CLONE_FS, what: "working directory, root and umask (CLONE_FS)" };
pub const VM: Kind = Kind { key: "vm", kcmp: 1, flag: CLONE_VM, what: "address space (CLONE_VM)" };
pub const SIGHAND: Kind = Kind { key: "sighand", kcmp: 4, flag: CLONE_SIGHAND, what: "signal handlers (CLONE_SIGHAND)" };

/// Kinds phaul restores shared.
pub const CARRIED: [&Kind; 2] = [&FILES, &FS];

/// kcmp of two tasks for one kind: Some(order) or the errno.
fn kcmp(a: Pid, b: Pid, kind: &Kind) -> std::result::Result<Ordering, i32> {
    match unsafe { sys::raw(nr::KCMP, &[a as u64, b as u64, kind.kcmp, 0, 0]) } {
        Ok(0) => Ok(Ordering::Equal),
        Ok(1) => Ok(Ordering::Less),
        Ok(2) => Ok(Ordering::Greater),
        Ok(_) => Err(22),
        Err(e) => Err(e),
    }
}

fn kcmp_failed(a: Pid, b: Pid, kind: &Kind, errno: i32) -> Error {
    Error::sys(format!("kcmp of the {} of processes {} and {}", kind.what, a, b), errno)
}

/// Groups of `pids` holding the same object of `kind`: for each pid, the
/// index (into `pids`) of the first pid of its group. kcmp orders objects,
/// so a sort finds the groups in n log n calls.
fn groups(pids: &[Pid], kind: &Kind) -> Result<Vec<usize>> {
    let mut order: Vec<usize> = (0..pids.len()).collect();
    let mut failed = None;
    order.sort_by(|&a, &b| match kcmp(pids[a], pids[b], kind) {
        Ok(o) => o,
        Err(e) => {
            failed.get_or_insert(kcmp_failed(pids[a], pids[b], kind, e));
            Ordering::Equal
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let mut first: Vec<usize> = (0..pids.len()).collect();
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && kcmp(pids[order[i]], pids[order[j]], kind) == Ok(Ordering::Equal) {
            j += 1;
        }
        let lead = order[i..j].iter().copied().min().unwrap_or(order[i]);
        for &k in &order[i..j] {
            first[k] = lead;
        }
        i = j;
    }
    Ok(first)
}

/// The "shares" of the processes of a frozen tree that share something
/// with an earlier one, refusing what cannot be restored: an address space
/// or signal handlers shared between processes, an object shared with a
/// process outside the tree, a thread that unshared from its process.
pub fn dump(frozen: &Frozen) -> Result<std::collections::BTreeMap<Pid, Json>> {
    let live: Vec<&crate::freeze::FrozenProc> = frozen.live().collect();
    let pids: Vec<Pid> = live.iter().map(|p| p.pid).collect();
    for p in &live {
        for t in p.threads.iter().filter(|t| t.tid != p.pid) {
            for kind in CARRIED {
                match kcmp(p.pid, t.tid, kind) {
                    Ok(Ordering::Equal) => {}
                    Ok(_) => {
                        return Err(Error::new(
                            "EUNSUPPORTED",
                            format!("thread {} of process {} has a {} of its own (unshare): not supported", t.tid, p.pid, kind.what),
                        ))
                    }
                    Err(e) => return Err(kcmp_failed(p.pid, t.tid, kind, e)),
                }
            }
        }
    }
    refuse_outside(frozen)?;
    let mut out = std::collections::BTreeMap::new();
    for kind in [&VM, &SIGHAND, &FILES, &FS] {
        let first = groups(&pids, kind)?;
        for (i, &f) in first.iter().enumerate() {
            if f == i {
                continue;
            }
            if !CARRIED.iter().any(|k| k.key == kind.key) {
                return Err(Error::new(
                    "EUNSUPPORTED",
                    format!(
                        "processes {} and {} share one {}: not supported (only a vfork child, which the freeze waits for, may share its parent's)",
                        pids[f], pids[i], kind.what
                    ),
                ));
            }
            out.entry(pids[i]).or_insert_with(Json::obj).set(kind.key, pids[f]);
        }
    }
    // Can the restore make these groups again?
    let skeleton: Vec<Json> = frozen
        .procs
        .iter()
        .map(|p| {
            let j = Json::obj().with("pid", p.pid).with("ppid", p.ppid).with("zombie", p.zombie.is_some());
            match out.get(&p.pid) {
                Some(s) => j.with("shares", s.clone()),
                None => j,
            }
        })
        .collect();
    plan(&skeleton)?;
    Ok(out)
}

/// The root is the only process whose parent is not in the tree: an object
/// it shares with that parent would be split from it by a restore. (Other
/// outside processes could only share through a process of the tree
/// reparented away, which is not looked for.) When kcmp may not look at
/// the parent (another user's), nothing can be told, and nothing is refused.
fn refuse_outside(frozen: &Frozen) -> Result<()> {
    let Some(root) = frozen.live().next() else { return Ok(()) };
    if root.ppid <= 1 {
        return Ok(());
    }
    for kind in [&FILES, &FS, &VM] {
        if kcmp(root.pid, root.ppid, kind) == Ok(Ordering::Equal) {
            return Err(Error::new(
                "EUNSUPPORTED",
                format!("process {} shares its {} with its parent {}, which is outside the tree: not supported", root.pid, kind.what, root.ppid),
            ));
        }
    }
    Ok(())
}

/// The process (pid) whose `kind` object `p` shares, when `p` is not the
/// first of its group.
pub fn shared_with(p: &Json, kind: &Kind) -> Option<Pid> {
    p.get("shares").and_then(|s| s.i64_of(kind.key)).filter(|&x| x > 0).map(|x| x as Pid)
}

/// The clone flags of kinds `p` shares with an earlier process.
pub fn shared_flags(p: &Json) -> u64 {
    CARRIED.iter().filter(|k| shared_with(p, k).is_some()).fold(0, |f, k| f | k.flag)
}

/// How to create one process's stub.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Fork {
    /// The stub to fork from: the parent, or a sibling (with CLONE_PARENT).
    pub from: Pid,
    /// clone flags: what it shares, and CLONE_PARENT.
    pub flags: u64,
}

/// For each process of `procs` (tree order; zombies and the root get None,
/// they are made as before), where to fork it from and with which flags.
/// The stub to fork from must hold, at that moment, every object the
/// process shares: its parent if the parent is in each of its groups, else
/// an earlier live sibling that is (the child then gets the sibling's
/// parent with CLONE_PARENT). An error names a process for which neither
/// exists (objects passed on by a process that then went away, say).
pub fn plan(procs: &[Json]) -> Result<Vec<Option<Fork>>> {
    let pid_of = |p: &Json| p.i64_of("pid").unwrap_or(0) as Pid;
    let zombie = |p: &Json| p.bool_of("zombie");
    // The group of `kind` process `q` belongs to (its first process).
    let group = |q: &Json, kind: &Kind| shared_with(q, kind).unwrap_or_else(|| pid_of(q));
    let mut out = Vec::with_capacity(procs.len());
    for (i, p) in procs.iter().enumerate() {
        let wanted: Vec<(&Kind, Pid)> = CARRIED.iter().filter_map(|k| shared_with(p, k).map(|g| (*k, g))).collect();
        if i == 0 || zombie(p) {
            if let Some((k, g)) = wanted.first() {
                return Err(unplaceable(pid_of(p), k, *g));
            }
            out.push(None);
            continue;
        }
        let ppid = p.i64_of("ppid").unwrap_or(0) as Pid;
        let holds = |q: &Json| wanted.iter().all(|(k, g)| group(q, k) == *g);
        let parent = procs[..i].iter().find(|q| pid_of(q) == ppid && !zombie(q));
        let fork = if wanted.is_empty() || parent.is_some_and(holds) {
            Fork { from: ppid, flags: wanted.iter().fold(0, |f, (k, _)| f | k.flag) }
        } else {
            let sib = procs[..i].iter().find(|q| !zombie(q) && q.i64_of("ppid") == Some(ppid as i64) && holds(q));
            match sib {
                Some(s) => Fork { from: pid_of(s), flags: wanted.iter().fold(CLONE_PARENT, |f, (k, _)| f | k.flag) },
                None => {
                    let (k, g) = wanted[0];
                    return Err(unplaceable(pid_of(p), k, g));
                }
            }
        };
        out.push(Some(fork));
    }
    Ok(out)
}

fn unplaceable(pid: Pid, kind: &Kind, with: Pid) -> Error {
    Error::new(
        "EUNSUPPORTED",
        format!(
            "process {} shares the {} of process {}, but neither its parent nor an earlier sibling holds it: this sharing cannot be made again",
            pid, kind.what, with
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_(pid: i64, ppid: i64, files: Option<i64>, fs: Option<i64>) -> Json {
        let mut s = Json::obj();
        if let Some(f) = files {
            s.set("files", f);
        }
        if let Some(f) = fs {
            s.set("fs", f);
        }
        Json::obj().with("pid", pid).with("ppid", ppid).with("shares", s)
    }

    #[test]
    fn plain_tree_forks_from_parents() {
        let procs = [proc_(10, 1, None, None), proc_(11, 10, None, None), proc_(12, 11, None, None)];
        let p = plan(&procs).unwrap();
        assert_eq!(p, vec![None, Some(Fork { from: 10, flags: 0 }), Some(Fork { from: 11, flags: 0 })]);
    }

    #[test]
    fn child_sharing_with_parent() {
        let procs = [proc_(10, 1, None, None), proc_(11, 10, Some(10), None), proc_(12, 10, None, Some(10))];
        let p = plan(&procs).unwrap();
        assert_eq!(p[1], Some(Fork { from: 10, flags: CLONE_FILES }));
        assert_eq!(p[2], Some(Fork { from: 10, flags: CLONE_FS }));
    }

    #[test]
    fn siblings_sharing_without_parent_use_clone_parent() {
        // 10 cloned 11 and 12 with CLONE_FILES, then unshared its own table.
        let procs = [proc_(10, 1, None, None), proc_(11, 10, None, None), proc_(12, 10, Some(11), None)];
        let p = plan(&procs).unwrap();
        assert_eq!(p[2], Some(Fork { from: 11, flags: CLONE_FILES | CLONE_PARENT }));
    }

    #[test]
    fn chain_of_sharers() {
        let procs = [proc_(10, 1, None, None), proc_(11, 10, Some(10), Some(10)), proc_(12, 11, Some(10), None)];
        let p = plan(&procs).unwrap();
        assert_eq!(p[1], Some(Fork { from: 10, flags: CLONE_FILES | CLONE_FS }));
        assert_eq!(p[2], Some(Fork { from: 11, flags: CLONE_FILES }));
    }

    #[test]
    fn mixed_groups_pick_a_sibling_holding_both() {
        // 12 shares files with its parent 10 and fs with its sibling 11.
        let procs = [proc_(10, 1, None, None), proc_(11, 10, Some(10), None), proc_(12, 10, Some(10), Some(11))];
        let p = plan(&procs).unwrap();
        assert_eq!(p[2], Some(Fork { from: 11, flags: CLONE_FILES | CLONE_FS | CLONE_PARENT }));
    }

    #[test]
    fn no_holder_is_refused() {
        // 12 (child of 11) shares the table of 10, which is neither its parent nor a sibling.
        let procs = [proc_(10, 1, None, None), proc_(11, 10, None, None), proc_(12, 11, Some(10), None)];
        let e = plan(&procs).unwrap_err();
        assert_eq!(e.code, "EUNSUPPORTED");
        assert!(e.message.contains("process 12"), "{}", e.message);
        // The root never shares with an earlier process.
        assert!(plan(&[proc_(10, 1, Some(9), None)]).is_err());
    }

    #[test]
    fn zombies_are_not_fork_sources() {
        let mut z = proc_(11, 10, None, None);
        z.set("zombie", true);
        let procs = [proc_(10, 1, None, None), z, proc_(12, 10, Some(11), None)];
        assert!(plan(&procs).is_err());
    }
}
