//! Names of unix sockets. A path name is a string the socket keeps
//! (getsockname, and the sender address of every datagram it sends) and,
//! separately, a file through which others reach it. At the dump the file is
//! looked up again: it may have been removed while the socket lives, and a
//! relative name was bound from a directory phaul does not run in.
//!
//! Restore binds each name so that both read as before: at its place; from
//! its directory, in a thread with a working directory of its own; or, when
//! no file led to the socket any more, under a scratch directory made that
//! thread's root, so that no file appears anywhere (the scratch directory
//! goes once the queues are refilled: `finish`). Datagrams queued from a
//! sender that does not come back bound to its name are sent again from a
//! temporary socket bound to it in the same way (`temp_sender`).

use super::*;
use crate::sys::Pid;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};

const UNSHARE: i64 = 272;
const MKDIR: i64 = 83;
const CLONE_FS: u64 = 0x200;
const CLONE_NEWNET: u64 = 0x4000_0000;
const EEXIST: i32 = 17;
const EADDRINUSE: i32 = 98;
const EPERM: i32 = 1;

/// sun_path bytes of a raw sockaddr_un (abstract names keep their leading NUL).
pub(super) fn name_of(raw: &[u8]) -> Vec<u8> {
    if raw.len() <= 2 {
        return Vec::new();
    }
    let mut p = raw[2..].to_vec();
    if p.first() != Some(&0) {
        while p.last() == Some(&0) {
            p.pop();
        }
    }
    p
}

pub(super) fn name_text(p: &[u8]) -> String {
    if p.first() == Some(&0) {
        format!("@{}", String::from_utf8_lossy(&p[1..]))
    } else {
        String::from_utf8_lossy(p).into_owned()
    }
}

pub(super) fn is_abstract(name: &[u8]) -> bool {
    name.first() == Some(&0)
}

pub(super) fn sockaddr_un(name: &[u8]) -> Result<Vec<u8>> {
    if name.len() > 107 {
        return Err(Error::new("EIMAGE", format!("unix socket name {} is longer than 107 bytes", name_text(name))));
    }
    let mut r = (AF_UNIX as u16).to_le_bytes().to_vec();
    r.extend_from_slice(name);
    if !is_abstract(name) {
        r.push(0);
    }
    Ok(r)
}

// ---- dump ----

/// Where the file of a path name was at the dump.
pub enum Place {
    /// An abstract name, or the file at the (absolute) name is the socket's.
    Here,
    /// A relative name whose file is in this directory: the process's
    /// working directory.
    From(String),
    /// No file at the name leads to the socket: removed, replaced, or (a
    /// relative name) in a directory the process has left since.
    Unlinked,
}

/// The kernel's numbering of a device (major << 20 | minor), as sock_diag
/// reports it, from stat's.
fn kernel_dev(dev: u64) -> u32 {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    ((major << 20) | minor) as u32
}

/// Find the file of `name`, a socket of process `pid` whose file sock_diag
/// names by `vfs` (inode, device).
pub fn locate(pid: Pid, name: &[u8], vfs: Option<(u32, u32)>) -> Place {
    let vfs = match vfs {
        Some(v) if !name.is_empty() && !is_abstract(name) => v,
        // abstract; or a kernel that does not tell: taken as it reads
        _ => return Place::Here,
    };
    let relative = name.first() != Some(&b'/');
    let cwd = format!("/proc/{}/cwd", pid);
    let path = if relative { std::path::Path::new(&cwd).join(OsStr::from_bytes(name)) } else { std::path::PathBuf::from(OsStr::from_bytes(name)) };
    let ours = std::fs::symlink_metadata(&path)
        .map(|md| md.file_type().is_socket() && md.ino() as u32 == vfs.0 && kernel_dev(md.dev()) == vfs.1)
        .unwrap_or(false);
    if !ours {
        return Place::Unlinked;
    }
    if !relative {
        return Place::Here;
    }
    match crate::proc::readlink(&cwd) {
        Ok(d) if d.starts_with('/') && !d.ends_with(" (deleted)") => Place::From(d),
        _ => Place::Unlinked,
    }
}

// ---- restore ----

/// How phaul reaches a socket it bound, to send to it: an address, and the
/// directory it goes through when the plain path is too long.
pub struct Reach {
    addr: std::result::Result<Vec<u8>, String>,
    by_path: bool,
    _dir: Option<Fd>,
}

impl Reach {
    fn name(name: &[u8]) -> Result<Reach> {
        Ok(Reach { addr: Ok(sockaddr_un(name)?), by_path: !is_abstract(name), _dir: None })
    }

    /// `name` resolved from directory `dir` (an absolute name: inside `dir`,
    /// a scratch root).
    fn under(dir: &str, name: &[u8]) -> Reach {
        let sep: &[u8] = if name.first() == Some(&b'/') { b"" } else { b"/" };
        let full = [dir.as_bytes(), sep, name].concat();
        if full.len() <= 107 {
            return Reach { addr: sockaddr_un(&full).map_err(|e| e.message), by_path: true, _dir: None };
        }
        let too_long = || format!("{} is longer than a unix socket address can be", String::from_utf8_lossy(&full));
        let d = match cstr(dir).and_then(|c| sys::call("open", nr::OPEN, &[c.as_ptr() as u64, (crate::sys::O_PATH | crate::sys::O_CLOEXEC) as u64, 0])) {
            Ok(d) => Fd(d as i32),
            Err(_) => return Reach { addr: Err(too_long()), by_path: true, _dir: None },
        };
        let via = [format!("/proc/self/fd/{}", d.raw()).as_bytes(), sep, name].concat();
        let addr = if via.len() <= 107 { sockaddr_un(&via).map_err(|e| e.message) } else { Err(too_long()) };
        Reach { addr, by_path: true, _dir: Some(d) }
    }

    pub fn addr(&self, what: &str) -> Result<&[u8]> {
        self.addr.as_deref().map_err(|m| Error::new("ESOCKET", format!("{}: {}", what, m)))
    }
}

fn cstr(s: &str) -> Result<CString> {
    crate::sys::cstr(s)
}

fn bytes_cstr(b: &[u8]) -> Result<CString> {
    CString::new(b).map_err(|_| Error::new("EIMAGE", "unix socket name with a NUL byte"))
}

fn bind_raw(fd: &Fd, name: &[u8]) -> std::result::Result<(), i32> {
    let sa = sockaddr_un(name).map_err(|_| 36 /* ENAMETOOLONG */)?;
    unsafe { sys::raw(snr::BIND, &[fd.raw() as u64, sa.as_ptr() as u64, sa.len() as u64]) }.map(|_| ())
}

fn bind_failed(name: &[u8], e: i32) -> Error {
    Error { code: "ESOCKET", ..Error::sys(format!("bind unix socket {}", name_text(name)), e) }
}

/// Run `f` in a thread of its own after unshare(`flags`): its root, working
/// directory (CLONE_FS) or network namespace (CLONE_NEWNET) change without
/// touching phaul's other threads.
fn in_thread<T: Send>(flags: u64, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(move || {
            sys::call("unshare", UNSHARE, &[flags])?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(Error::new("EINTERNAL", "a unix socket naming thread panicked")))
    })
}

fn chdir(path: &[u8]) -> Result<()> {
    let c = bytes_cstr(path)?;
    sys::call(&format!("chdir {}", String::from_utf8_lossy(path)), nr::CHDIR, &[c.as_ptr() as u64]).map(|_| ())
}

/// A stale socket file of the dumped process at `path` is removed (only a
/// socket: anything else in the way is an error).
fn clear_stale(path: &std::path::Path) -> Result<()> {
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if md.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        } else {
            return Err(Error::new("ESOCKET", format!("cannot bind unix socket {}: a file that is not a socket is in the way", path.display())));
        }
    }
    Ok(())
}

/// Scratch directories holding the files of names bound without one,
/// removed by `finish` once every queue that may be sent to is refilled.
static SCRATCH: Mutex<Vec<Scratch>> = Mutex::new(Vec::new());

/// A directory of phaul's, removed with what it holds when dropped.
pub struct Scratch(String);

impl Scratch {
    fn new() -> Result<Scratch> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("phaul-unix-{}-{}", sys::getpid(), n));
        let path = dir.to_str().ok_or_else(|| Error::new("EFILE", "the temporary directory has a name that is not UTF-8"))?.to_string();
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| Error::from(e).context(format!("scratch directory {}", path)))?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bind `fd` to the path `name` inside a fresh scratch directory, which a
/// thread takes as its root: getsockname reads `name`, and no file appears
/// at `name` itself.
fn bind_rootless(fd: &Fd, name: &[u8]) -> Result<Scratch> {
    let root = Scratch::new()?;
    let rootc = cstr(&root.0)?;
    in_thread(CLONE_FS, || {
        sys::call("chroot", nr::CHROOT, &[rootc.as_ptr() as u64]).map_err(|e| {
            if e.errno == EPERM {
                Error::new("EPERM", format!("binding unix socket {} without its file (removed at the dump) needs CAP_SYS_CHROOT", name_text(name)))
            } else {
                e
            }
        })?;
        chdir(b"/")?;
        // The directories the name goes through, made inside the scratch root.
        let parts: Vec<&[u8]> = name.split(|b| *b == b'/').collect();
        for c in &parts[..parts.len().saturating_sub(1)] {
            match *c {
                b"" | b"." => continue,
                b".." => chdir(b"..")?,
                _ => {
                    let cc = bytes_cstr(c)?;
                    match unsafe { sys::raw(MKDIR, &[cc.as_ptr() as u64, 0o700]) } {
                        Ok(_) | Err(EEXIST) => {}
                        Err(e) => return Err(Error::sys(format!("mkdir for unix socket {}", name_text(name)), e)),
                    }
                    chdir(c)?;
                }
            }
        }
        chdir(b"/")?;
        bind_raw(fd, name).map_err(|e| bind_failed(name, e))
    })?;
    Ok(root)
}

/// Bind `fd` to `name` as the image says (`s`: the socket's "unlinked" and
/// "bind_dir"). Returns how to reach it.
pub fn bind(fd: &Fd, name: &[u8], s: &Json) -> Result<Reach> {
    if is_abstract(name) {
        bind_raw(fd, name).map_err(|e| bind_failed(name, e))?;
        return Reach::name(name);
    }
    if s.bool_of("unlinked") {
        let root = bind_rootless(fd, name)?;
        let reach = Reach::under(&root.0, name);
        SCRATCH.lock().map_err(|_| Error::new("EINTERNAL", "lock"))?.push(root);
        return Ok(reach);
    }
    match s.str_of("bind_dir") {
        Some(dir) => {
            clear_stale(&std::path::Path::new(dir).join(OsStr::from_bytes(name)))?;
            let d = dir.as_bytes();
            in_thread(CLONE_FS, || {
                chdir(d).map_err(|e| Error::new("EFILE", format!("directory {} of unix socket {} is missing: {}", dir, name_text(name), e.message)))?;
                bind_raw(fd, name).map_err(|e| bind_failed(name, e))
            })?;
            Ok(Reach::under(dir, name))
        }
        None => {
            clear_stale(std::path::Path::new(OsStr::from_bytes(name)))?;
            bind_raw(fd, name).map_err(|e| bind_failed(name, e))?;
            Reach::name(name)
        }
    }
}

/// A socket of type `ty` bound to `name`, to send queued datagrams again
/// with that sender address when the socket that sent them does not come
/// back bound to it. A path name never touches the real file (the sender
/// may live on outside the tree, or its file may be someone else's now).
/// An abstract name taken by a live socket is bound in a network namespace
/// of the thread's own, from which the receiver `to` is reached by its path
/// (an abstract receiver cannot be: an error).
pub fn temp_sender(name: &[u8], ty: i32, to: &Reach) -> Result<Fd> {
    let fd = new_socket(AF_UNIX, ty, 0)?;
    if !is_abstract(name) {
        drop(bind_rootless(&fd, name)?);
        return Ok(fd);
    }
    match bind_raw(&fd, name) {
        Ok(()) => Ok(fd),
        Err(EADDRINUSE) if to.by_path => in_thread(CLONE_NEWNET, || {
            let fd = new_socket(AF_UNIX, ty, 0)?;
            bind_raw(&fd, name).map_err(|e| bind_failed(name, e))?;
            Ok(fd)
        }),
        Err(EADDRINUSE) => Err(Error::new(
            "ESOCKET",
            format!("queued datagrams came from {}, a name now taken by a socket outside the restored tree: they cannot be given back with their sender address", name_text(name)),
        )),
        Err(e) => Err(bind_failed(name, e)),
    }
}

/// Every queue is refilled: the scratch directories go.
pub fn finish() {
    if let Ok(mut v) = SCRATCH.lock() {
        v.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn getsockname(fd: &Fd) -> Vec<u8> {
        name_of(&sockname(fd, false).expect("getsockname"))
    }

    // A name whose file was removed comes back without any file: the
    // scratch root holds it until `finish`, and only there.
    #[test]
    fn rootless_bind_keeps_the_name_only() {
        let fd = new_socket(AF_UNIX, SOCK_DGRAM, 0).expect("socket");
        let name = b"/phaul-test-no-such-dir/sub/../s.sock";
        let root = bind_rootless(&fd, name).expect("bind");
        assert_eq!(getsockname(&fd), name.to_vec());
        assert!(!std::path::Path::new("/phaul-test-no-such-dir").exists());
        assert!(std::path::Path::new(&root.0).join("phaul-test-no-such-dir/s.sock").exists());
        let dir = root.0.clone();
        drop(root);
        assert!(!std::path::Path::new(&dir).exists());
    }

    #[test]
    fn kernel_dev_numbering() {
        // makedev(8, 1) and makedev(259, 70000) in glibc's encoding
        assert_eq!(kernel_dev(0x801), (8 << 20) | 1);
        let (ma, mi) = (259u64, 70000u64);
        let dev = ((ma & 0xfff) << 8) | ((ma & !0xfff) << 32) | (mi & 0xff) | ((mi & !0xff) << 12);
        assert_eq!(kernel_dev(dev), ((ma << 20) | mi) as u32);
    }
}
