//! memfd: name, contents, size, seals; every description and every mapping
//! of one memfd refer to one restored object.

use super::{fd_of, nr, open_flags, registry, reopen};
use crate::files::FileCtx;
use crate::json::Json;
use crate::memory::Vma;
use crate::sys::{self, Error, Fd, Pid, Result};
use std::os::unix::fs::MetadataExt;

const MFD_CLOEXEC: u64 = 1;
const MFD_ALLOW_SEALING: u64 = 2;
const F_ADD_SEALS: u64 = 1033;
const F_GET_SEALS: u64 = 1034;
const F_SEAL_SEAL: u64 = 1;
/// Registry tag of memfd objects.
pub(crate) const TAG: u8 = 1;

fn name_of(target: &str) -> &str {
    let t = target.strip_prefix("/memfd:").unwrap_or(target);
    t.strip_suffix(" (deleted)").unwrap_or(t)
}

pub fn describe(ctx: &FileCtx) -> Result<Json> {
    let stolen = sys::pidfd_getfd(ctx.pidfd, ctx.fd)?;
    if ctx.md.blksize() > 4096 && ctx.md.blksize() % (2 << 20) == 0 {
        return ctx.unsupported(&format!("hugetlb memfd {}", name_of(ctx.target)));
    }
    entry(ctx.base.clone(), name_of(ctx.target), ctx.md, &stolen).map_err(|e| Error::new(e.code, format!("fd {}: {}", ctx.fd, e.message)))
}

/// The image entry of memfd `name` (metadata `md`, seals and contents read
/// through `fd`), on top of `base` (id, flags, pos).
fn entry(base: Json, name: &str, md: &std::fs::Metadata, fd: &Fd) -> Result<Json> {
    let seals = sys::call("F_GET_SEALS", crate::sys::nr::FCNTL, &[fd.raw() as u64, F_GET_SEALS])?;
    // Up to MAX_CONTENTS of data; holes stay holes, whatever the size.
    let base = super::with_contents(base, fd, md.size(), &format!("memfd {}", name))?;
    Ok(base
        .with("kind", "memfd")
        .with("name", name)
        .with("memfd_id", md.ino())
        .with("size", md.size())
        .with("seals", seals as u64))
}

/// A memfd mapped after its last descriptor in the tree was closed: the
/// same entry as for a descriptor, read through /proc/PID/map_files,
/// under file id `id`.
pub fn describe_mapped(pid: Pid, v: &Vma, id: u64) -> Result<Json> {
    let name = name_of(&v.path);
    let what = format!("memory area {:#x}-{:#x}: memfd {} mapped without a descriptor", v.start, v.end, name);
    let (fd, md) = super::open_mapped(pid, v, &what)?;
    if md.blksize() > 4096 && md.blksize() % (2 << 20) == 0 {
        return Err(Error::new("EUNSUPPORTED", format!("{}: a hugetlb memfd", what)));
    }
    entry(super::mapped_base(id), name, &md, &fd)
}

fn create(f: &Json) -> Result<Fd> {
    let name = f.str_of("name").unwrap_or("");
    let c = sys::cstr(name)?;
    let fd = fd_of(sys::call(&format!("memfd_create {}", name), nr::MEMFD_CREATE, &[c.as_ptr() as u64, MFD_CLOEXEC | MFD_ALLOW_SEALING])?);
    super::write_contents_json(&fd, f, &format!("memfd {}", name))?;
    sys::call("ftruncate memfd", nr::FTRUNCATE, &[fd.raw() as u64, f.u64_of("size").unwrap_or(0)])?;
    let seals = f.u64_of("seals").unwrap_or(0);
    if seals != 0 {
        sys::call(&format!("F_ADD_SEALS {:#x} on memfd {}", seals, name), crate::sys::nr::FCNTL, &[fd.raw() as u64, F_ADD_SEALS, seals])?;
    }
    let _ = F_SEAL_SEAL;
    Ok(fd)
}

pub fn open(f: &Json) -> Result<Fd> {
    let id = f.u64_of("memfd_id").unwrap_or(0);
    let name = f.str_of("name").unwrap_or("").to_string();
    let mut reg = registry();
    if !reg.objects.contains_key(&(TAG, id)) {
        let obj = create(f)?;
        reg.objects.insert((TAG, id), (name, obj));
    }
    let obj = &reg.objects[&(TAG, id)].1;
    reopen(obj, open_flags(f), f.u64_of("pos").unwrap_or(0))
}

/// The restored memfd that a memory area "/memfd:NAME (deleted)" maps
/// (a duplicate descriptor).
pub fn object_for(v: &Vma) -> Result<Fd> {
    let name = name_of(&v.path).to_string();
    let reg = registry();
    let found: Vec<&Fd> = reg.objects.iter().filter(|((t, _), (n, _))| *t == TAG && *n == name).map(|(_, (_, f))| f).collect();
    match found.len() {
        1 => Ok(Fd(sys::call("dup", crate::sys::nr::FCNTL, &[found[0].raw() as u64, 1030, 0])? as i32)),
        0 => Err(Error::new(
            "EUNSUPPORTED",
            format!("memory area {:#x}-{:#x}: memfd {} whose descriptor is not in the image is not supported", v.start, v.end, name),
        )),
        _ => Err(Error::new(
            "EUNSUPPORTED",
            format!("memory area {:#x}-{:#x}: several memfds are named {}; mapping one of them is not supported", v.start, v.end, name),
        )),
    }
}

