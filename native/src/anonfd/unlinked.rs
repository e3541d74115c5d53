//! Regular files unlinked while open: contents are saved (up to
//! MAX_CONTENTS of data; holes are kept as holes, whatever the size) and
//! the file comes back as an unlinked file in the same directory, with the
//! same offset, flags and mode.

use super::{fd_of, nr, open_flags, registry, reopen, O_CLOEXEC, O_CREAT, O_EXCL};
use crate::files::FileCtx;
use crate::json::Json;
use crate::memory::Vma;
use crate::sys::{self, cstr, Error, Fd, Result};
use std::os::unix::fs::MetadataExt;

pub(crate) const TAG: u8 = 2;
use crate::sys::O_RDWR;
const O_TMPFILE: u32 = 0o20200000;

pub fn describe(ctx: &FileCtx) -> Result<Json> {
    let path = ctx.target.strip_suffix(" (deleted)").unwrap_or(ctx.target);
    if ctx.md.nlink() > 0 {
        // Removed under this name, linked under another: the same inode is
        // opened again by its handle (on this host; elsewhere the restore
        // refuses it), not copied.
        let stolen = sys::pidfd_getfd(ctx.pidfd, ctx.fd)?;
        let link = format!("/proc/self/fd/{}", stolen.raw());
        let (handle, ty) = crate::files::file_handle(&link).map_err(|e| Error::new("EUNSUPPORTED", format!("fd {}: file {} unlinked while open but still linked elsewhere: no file handle ({})", ctx.fd, ctx.target, e.message)))?;
        let md = ctx.md;
        let stat = Json::obj().with("dev", md.dev()).with("ino", md.ino()).with("size", md.size()).with("mtime_ns", (md.mtime() as i64 * 1_000_000_000 + md.mtime_nsec()) as u64);
        return Ok(ctx.base.clone().with("kind", "reg").with("path", ctx.target).with("handle", crate::base64::encode(&handle)).with("handle_type", ty as i64).with("stat", stat));
    }
    let stolen = sys::pidfd_getfd(ctx.pidfd, ctx.fd)?;
    entry(ctx.base.clone(), path, ctx.md, &stolen).map_err(|e| Error::new(e.code, format!("fd {}: {}", ctx.fd, e.message)))
}

/// The image entry of unlinked file `path` (metadata `md`, contents read
/// through `fd`), on top of `base` (id, flags, pos).
fn entry(base: Json, path: &str, md: &std::fs::Metadata, fd: &Fd) -> Result<Json> {
    let base = super::with_contents(base, fd, md.size(), &format!("file {} (deleted) unlinked while open", path))?;
    Ok(base
        .with("kind", "unlinked")
        .with("path", path)
        .with("unlinked_id", md.ino())
        .with("size", md.size())
        .with("mode", md.mode() & 0o7777)
        .with("uid", md.uid())
        .with("gid", md.gid()))
}

/// A file removed while mapped and open as no descriptor of the tree
/// (glibc's sem_open, so every lock and queue of Python's multiprocessing:
/// the file is created, mapped, closed and unlinked): the same entry as for
/// a descriptor, read through /proc/PID/map_files, under file id `id`.
pub fn describe_mapped(pid: crate::sys::Pid, v: &Vma, id: u64) -> Result<Json> {
    let path = v.path.strip_suffix(" (deleted)").unwrap_or(&v.path);
    let what = format!("memory area {:#x}-{:#x}: file {} removed while mapped", v.start, v.end, path);
    let (fd, md) = super::open_mapped(pid, v, &what)?;
    if md.nlink() > 0 {
        return Err(Error::new("EUNSUPPORTED", format!("{}, but still linked elsewhere", what)));
    }
    entry(super::mapped_base(id), path, &md, &fd)
}

fn create(f: &Json) -> Result<Fd> {
    let path = f.str_of("path").unwrap_or("");
    let mode = f.u64_of("mode").unwrap_or(0o600) & 0o7777;
    let dir = std::path::Path::new(path).parent().and_then(|p| p.to_str()).unwrap_or("/");
    let c = cstr(path)?;
    // Same name first (the link then reads "PATH (deleted)" as before), else
    // an O_TMPFILE in the same directory.
    let fd = match sys::call("create", crate::sys::nr::OPEN, &[c.as_ptr() as u64, (O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC) as u64, mode]) {
        Ok(fd) => {
            let fd = fd_of(fd);
            sys::call("unlink", nr::UNLINK, &[c.as_ptr() as u64])?;
            fd
        }
        Err(_) => {
            let d = cstr(dir)?;
            fd_of(sys::call(&format!("open {} O_TMPFILE", dir), crate::sys::nr::OPEN, &[d.as_ptr() as u64, (O_RDWR | O_TMPFILE | O_CLOEXEC) as u64, mode]).map_err(
                |e| Error::new("EFILE", format!("cannot re-create unlinked file {} in {}: {}", path, dir, e.message)),
            )?)
        }
    };
    super::write_contents_json(&fd, f, path)?;
    sys::call("ftruncate", nr::FTRUNCATE, &[fd.raw() as u64, f.u64_of("size").unwrap_or(0)])?;
    if let (Some(u), Some(g)) = (f.u64_of("uid"), f.u64_of("gid")) {
        let _ = sys::call("fchown", nr::FCHOWN, &[fd.raw() as u64, u, g]);
    }
    sys::call("fchmod", nr::FCHMOD, &[fd.raw() as u64, mode])?;
    // Kept read-only: every use reopens it with its own flags, and a
    // writable description left open would keep the kernel from making it
    // a process's executable again (ETXTBSY, process.rs open_exe_in_stub).
    reopen(&fd, 0, 0)
}

/// `use_it` applied to the restored object of removed file `path`.
fn with_object<T>(path: &str, use_it: impl FnOnce(&Fd) -> T) -> Option<T> {
    let reg = registry();
    reg.objects.iter().find(|((t, _), (p, _))| *t == TAG && p == path).map(|(_, (_, f))| use_it(f))
}

/// The restored object of removed file `path`, for the stub to open by
/// /proc/PID/fd of phaul's own process.
pub fn object_path(path: &str) -> Option<String> {
    with_object(path, |f| format!("/proc/{}/fd/{}", sys::getpid(), f.raw()))
}

pub fn open(f: &Json) -> Result<Fd> {
    let id = f.u64_of("unlinked_id").unwrap_or(0);
    let path = f.str_of("path").unwrap_or("").to_string();
    let mut reg = registry();
    if !reg.objects.contains_key(&(TAG, id)) {
        let obj = create(f)?;
        reg.objects.insert((TAG, id), (path, obj));
    }
    let obj = &reg.objects[&(TAG, id)].1;
    reopen(obj, open_flags(f), f.u64_of("pos").unwrap_or(0))
}

/// The restored unlinked file that a mapping of "PATH (deleted)" maps (a
/// duplicate descriptor); None when the image has no such file (mapped as
/// before).
pub fn object_for(v: &Vma) -> Option<Result<Fd>> {
    with_object(v.path.strip_suffix(" (deleted)")?, |f| {
        // The object is read-only (create): a shared writable area needs a
        // writable description of it.
        if v.shared && v.prot & 2 != 0 {
            reopen(f, O_RDWR, 0)
        } else {
            sys::call("dup", crate::sys::nr::FCNTL, &[f.raw() as u64, 1030, 0]).map(|x| Fd(x as i32))
        }
    })
}
