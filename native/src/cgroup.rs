//! Cgroup membership. A restored tree is forked by phaul, so it starts in
//! phaul's cgroups: an agent run as a service would take every tree it
//! restored down with it when the service stops. Each process is put back
//! in the cgroups of the same paths (in every hierarchy, v1 and v2) where
//! they exist on this host; where one does not, or refuses the process,
//! it stays where it is and a warning says so. Nothing is created.

use crate::json::Json;
use crate::sys::Pid;

/// /proc/PID/cgroup as [{controllers, path}] ("" controllers: cgroup v2).
pub fn dump(pid: Pid) -> Vec<Json> {
    entries(pid).into_iter().map(|(c, p)| Json::obj().with("controllers", c).with("path", p)).collect()
}

/// (controllers, path) of each line "ID:CONTROLLERS:PATH" of /proc/PID/cgroup.
fn entries(pid: Pid) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{}/cgroup", pid)).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, c, p) = (it.next()?, it.next()?, it.next()?);
            Some((c.to_string(), p.to_string()))
        })
        .collect()
}

/// A mounted hierarchy: its controllers (sorted; empty for v2), where it
/// is mounted and the cgroup path of the mount's root.
struct Mount {
    controllers: Vec<String>,
    at: String,
    root: String,
}

fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for l in text.lines() {
        let (left, right) = match l.split_once(" - ") {
            Some(x) => x,
            None => continue,
        };
        let f: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if f.len() < 5 || r.len() < 3 {
            continue;
        }
        let (root, at) = (crate::proc::unescape_mountinfo(f[3]), crate::proc::unescape_mountinfo(f[4]));
        match r[0] {
            "cgroup2" => out.push(Mount { controllers: Vec::new(), at, root }),
            "cgroup" => {
                let known = ["rw", "ro", "noprefix", "clone_children", "xattr", "cpuset_v2_mode", "favordynmods", "nsdelegate"];
                let mut c: Vec<String> = r[2].split(',').filter(|o| !known.contains(o) && !o.starts_with("release_agent=")).map(str::to_string).collect();
                c.sort();
                out.push(Mount { controllers: c, at, root });
            }
            _ => {}
        }
    }
    out
}

/// Put process `host` (as phaul sees it) into the cgroups `p` records
/// (a state entry's "cgroups"), where it is not there already. Best effort:
/// what cannot be done is a warning on stderr.
pub fn restore(host: Pid, p: &Json) {
    let want = p.arr_of("cgroups");
    if want.is_empty() {
        return;
    }
    let now = entries(host);
    let ms = mounts();
    let who = p.i64_of("pid").unwrap_or(0);
    for e in want {
        let (c, path) = (e.str_of("controllers").unwrap_or(""), e.str_of("path").unwrap_or(""));
        if now.iter().any(|(nc, np)| nc == c && np == path) || path.is_empty() {
            continue;
        }
        let mut key: Vec<String> = c.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect();
        key.sort();
        let Some(m) = ms.iter().find(|m| m.controllers == key) else {
            // A hierarchy this host does not mount (v1 against v2): nothing to match.
            continue;
        };
        let name = if c.is_empty() { "cgroup v2".to_string() } else { format!("cgroup {}", c) };
        let rel = match path.strip_prefix(m.root.trim_end_matches('/')) {
            Some(r) if m.root != "/" => r.to_string(),
            _ if m.root == "/" => path.to_string(),
            _ => {
                eprintln!("phaul: warning: process {}: {} {} is outside what this host mounts: left in phaul's", who, name, path);
                continue;
            }
        };
        let dir = format!("{}/{}", m.at.trim_end_matches('/'), rel.trim_start_matches('/'));
        if !std::path::Path::new(&dir).is_dir() {
            eprintln!("phaul: warning: process {}: {} {} does not exist here: left in phaul's", who, name, path);
            continue;
        }
        if let Err(err) = std::fs::write(format!("{}/cgroup.procs", dir.trim_end_matches('/')), host.to_string()) {
            eprintln!("phaul: warning: process {}: not moved into {} {}: {}", who, name, path, err);
        }
    }
}
