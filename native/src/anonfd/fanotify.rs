//! fanotify: a group is its fanotify_init flags and event_f_flags plus its
//! marks, all listed in fdinfo. Marks are named by path so they can be added
//! again anywhere: an inode mark through its file handle (as inotify's
//! watches), a mount mark through the mount point of its mount id, a
//! filesystem mark through a mount of its device. Queued events are not
//! carried over. A permission decision someone is waiting for cannot be:
//! when the dumped process dies its group answers "allow" on its behalf, so
//! a group with permission marks is refused while any task waits for one.

use super::inotify::{handle_bytes, mounts_of, resolve_handle};
use super::{fd_of, tokens};
use crate::files::FileCtx;
use crate::json::Json;
use crate::sys::{self, cstr, Error, Fd, Result};
use std::os::unix::fs::MetadataExt;

const FANOTIFY_INIT: i64 = 300;
const FANOTIFY_MARK: i64 = 301;
const AT_FDCWD: i64 = -100;

const FAN_CLASS_BITS: u64 = 0x0c;
const FAN_MARK_ADD: u64 = 0x01;
const FAN_MARK_DONT_FOLLOW: u64 = 0x04;
const FAN_MARK_MOUNT: u64 = 0x10;
const FAN_MARK_IGNORED_MASK: u64 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u64 = 0x40;
const FAN_MARK_FILESYSTEM: u64 = 0x100;
const FAN_MARK_EVICTABLE: u64 = 0x200;
const FAN_MARK_IGNORE: u64 = 0x400;
/// FAN_OPEN_PERM, FAN_ACCESS_PERM, FAN_OPEN_EXEC_PERM, FAN_PRE_ACCESS.
const PERM_EVENTS: u64 = 0x0007_0000 | 0x0010_0000;

/// The path of mount `mnt_id` (fdinfo prints it in hex), checked to lead
/// to that very mount (and not to one mounted over it).
fn mount_path(mnt_id: u64) -> std::result::Result<String, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    let line = text.lines().find(|l| l.split(' ').next().and_then(|id| id.parse::<u64>().ok()) == Some(mnt_id));
    let path = match line.and_then(|l| l.split(' ').nth(4)) {
        Some(p) => crate::proc::unescape_mountinfo(p),
        None => return Err(format!("mount {} is not visible to phaul", mnt_id)),
    };
    let f = std::fs::File::open(&path).map_err(|e| format!("{}: {}", path, e))?;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", std::os::unix::io::AsRawFd::as_raw_fd(&f))).unwrap_or_default();
    match super::field(&info, "mnt_id").and_then(|v| v.parse::<u64>().ok()) {
        Some(id) if id == mnt_id => Ok(path),
        _ => Err(format!("mount {} at {} is covered by another mount", mnt_id, path)),
    }
}

/// A mount point of the filesystem on `sdev` (fdinfo's major << 20 | minor).
fn filesystem_path(sdev: u64) -> std::result::Result<String, String> {
    let (maj, min) = (sdev >> 20, sdev & 0xfffff);
    let want = (maj << 8) | (min & 0xff) | ((min & !0xff) << 12); // the st_dev encoding
    mounts_of(maj, min)
        .into_iter()
        .find(|m| std::fs::metadata(m).map(|md| md.dev() == want).unwrap_or(false))
        .ok_or_else(|| format!("no mount of device {}:{} is reachable", maj, min))
}

/// A task that waits until some fanotify group decides on its access.
fn permission_waiter() -> Option<String> {
    let procs = std::fs::read_dir("/proc").ok()?;
    for p in procs.flatten() {
        let name = p.file_name();
        let pid = name.to_string_lossy();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let tasks = match std::fs::read_dir(p.path().join("task")) {
            Ok(t) => t,
            Err(_) => continue,
        };
        for t in tasks.flatten() {
            let wchan = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
            if wchan.starts_with("fanotify") {
                return Some(t.file_name().to_string_lossy().into_owned());
            }
        }
    }
    None
}

/// What one "fanotify ..." line of fdinfo names.
#[derive(Debug, PartialEq)]
enum Line {
    /// fanotify_init's flags and event_f_flags.
    Group { flags: u64, event_f_flags: u64 },
    Mark { target: Target, mflags: u64, mask: u64, ignored: u64 },
}

#[derive(Debug, PartialEq)]
enum Target {
    Inode { ino: u64, sdev: u64, htype: u32, handle: Vec<u8> },
    Mount(u64),
    Filesystem(u64),
}

/// None: a line this code does not understand.
fn parse_line(l: &str) -> Option<Line> {
    let t = tokens(l);
    let hx = |k: &str| t.get(k).and_then(|v| u64::from_str_radix(v, 16).ok());
    if t.contains_key("event-flags") {
        return Some(Line::Group { flags: hx("flags")?, event_f_flags: hx("event-flags")? });
    }
    let target = if let Some(ino) = hx("ino") {
        Target::Inode { ino, sdev: hx("sdev")?, htype: hx("fhandle-type")? as u32, handle: handle_bytes(t.get("f_handle")?) }
    } else if let Some(id) = hx("mnt_id") {
        Target::Mount(id)
    } else if t.len() == 4 {
        // "sdev mflags mask ignored_mask": newer kinds of marks add fields
        Target::Filesystem(hx("sdev")?)
    } else {
        return None;
    };
    Some(Line::Mark { target, mflags: hx("mflags")?, mask: hx("mask")?, ignored: hx("ignored_mask")? })
}

pub fn describe(ctx: &FileCtx) -> Result<Json> {
    let mut init: Option<(u64, u64)> = None;
    let mut marks = Vec::new();
    for l in ctx.info.raw.lines().filter(|l| l.starts_with("fanotify ")) {
        let (target, mflags, mask, ignored) = match parse_line(l) {
            Some(Line::Group { flags, event_f_flags }) => {
                init = Some((flags, event_f_flags));
                continue;
            }
            Some(Line::Mark { target, mflags, mask, ignored }) => (target, mflags, mask, ignored),
            None => return ctx.unsupported(&format!("fanotify mark of a kind phaul does not know ({})", l.trim())),
        };
        let (kind, found) = match target {
            Target::Inode { ino, sdev, htype, handle } => {
                ("inode", resolve_handle(ino, sdev, htype, &handle).map_err(|e| format!("inode {} of device {}:{}: {}", ino, sdev >> 20, sdev & 0xfffff, e)))
            }
            Target::Mount(id) => ("mount", mount_path(id)),
            Target::Filesystem(sdev) => ("filesystem", filesystem_path(sdev)),
        };
        let path = match found {
            Ok(p) => p,
            Err(why) => return ctx.unsupported(&format!("fanotify {} mark ({})", kind, why)),
        };
        marks.push(Json::obj().with("type", kind).with("path", path).with("flags", mflags).with("mask", mask).with("ignored_mask", ignored));
    }
    let (flags, event_f_flags) = init.ok_or_else(|| Error::new("EPROC", format!("fd {}: fanotify fdinfo without the group's flags", ctx.fd)))?;
    if flags & FAN_CLASS_BITS != 0 && marks.iter().any(|m| m.u64_of("mask").unwrap_or(0) & PERM_EVENTS != 0) {
        if let Some(tid) = permission_waiter() {
            return ctx.unsupported(&format!(
                "fanotify group with permission events while process {} waits for a permission decision (a pending decision cannot be carried over)",
                tid
            ));
        }
    }
    // fdinfo lists the newest mark first: add them back oldest first.
    marks.reverse();
    let group = Json::obj().with("init_flags", flags).with("event_f_flags", event_f_flags).with("marks", marks);
    Ok(ctx.base.clone().with("kind", "fanotify").with("fanotify", group))
}

fn mark(fd: &Fd, flags: u64, mask: u64, path: &str, what: &str) -> Result<()> {
    let c = cstr(path)?;
    sys::call(what, FANOTIFY_MARK, &[fd.raw() as u64, flags, mask, AT_FDCWD as u64, c.as_ptr() as u64]).map(|_| ())
}

pub fn open(f: &Json) -> Result<Fd> {
    let g = f.get("fanotify").ok_or_else(|| Error::new("EIMAGE", "fanotify entry without \"fanotify\""))?;
    // The init flags exactly as they were (fdinfo shows them, FAN_CLOEXEC
    // and FAN_NONBLOCK included); the descriptor's own flags are set after.
    let fd = fd_of(sys::call("fanotify_init", FANOTIFY_INIT, &[g.u64_of("init_flags").unwrap_or(0), g.u64_of("event_f_flags").unwrap_or(0)])?);
    sys::call("F_SETFD", crate::sys::nr::FCNTL, &[fd.raw() as u64, 2, 1])?;
    for m in g.arr_of("marks") {
        let path = m.str_of("path").unwrap_or("");
        let mflags = m.u64_of("flags").unwrap_or(0);
        let kind = match m.str_of("type") {
            Some("inode") => FAN_MARK_DONT_FOLLOW,
            Some("mount") => FAN_MARK_MOUNT,
            Some("filesystem") => FAN_MARK_FILESYSTEM,
            t => return Err(Error::new("EIMAGE", format!("fanotify mark of type {:?} in the image", t))),
        };
        let base = FAN_MARK_ADD | kind | (mflags & FAN_MARK_EVICTABLE);
        let what = |m: &str| format!("fanotify {} mark on {}", m, path);
        let mask = m.u64_of("mask").unwrap_or(0);
        if mask != 0 {
            mark(&fd, base, mask, path, &what("event"))?;
        }
        let ignored = m.u64_of("ignored_mask").unwrap_or(0);
        if ignored != 0 {
            // FAN_MARK_IGNORE (event flags count) or the older FAN_MARK_IGNORED_MASK.
            let how = if mflags & FAN_MARK_IGNORE != 0 { FAN_MARK_IGNORE } else { FAN_MARK_IGNORED_MASK };
            mark(&fd, base | how | (mflags & FAN_MARK_IGNORED_SURV_MODIFY), ignored, path, &what("ignore"))?;
        }
    }
    sys::call("F_SETFL", crate::sys::nr::FCNTL, &[fd.raw() as u64, 4, (f.u64_of("flags").unwrap_or(0) as u32 & super::O_NONBLOCK) as u64])?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lines_of_linux_6_18() {
        assert_eq!(parse_line("fanotify flags:13 event-flags:8000"), Some(Line::Group { flags: 0x13, event_f_flags: 0x8000 }));
        assert_eq!(
            parse_line("fanotify ino:20c4ab sdev:fe00000 mflags:40 mask:0 ignored_mask:20 fhandle-bytes:8 fhandle-type:1 f_handle:abc42000505c98c0"),
            Some(Line::Mark {
                target: Target::Inode { ino: 0x20c4ab, sdev: 0xfe00000, htype: 1, handle: vec![0xab, 0xc4, 0x20, 0x00, 0x50, 0x5c, 0x98, 0xc0] },
                mflags: 0x40,
                mask: 0,
                ignored: 0x20
            })
        );
        assert_eq!(
            parse_line("fanotify mnt_id:1a mflags:0 mask:10 ignored_mask:0"),
            Some(Line::Mark { target: Target::Mount(0x1a), mflags: 0, mask: 0x10, ignored: 0 })
        );
        assert_eq!(
            parse_line("fanotify sdev:14 mflags:0 mask:20 ignored_mask:0"),
            Some(Line::Mark { target: Target::Filesystem(0x14), mflags: 0, mask: 0x20, ignored: 0 })
        );
        // a mark kind of a later kernel (mount namespace marks) is not taken for a filesystem mark
        assert_eq!(parse_line("fanotify mnt_ns:4026531841 mflags:0 mask:1000000 ignored_mask:0"), None);
        assert_eq!(parse_line("fanotify ino:zz sdev:1"), None);
    }
}
