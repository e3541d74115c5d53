//! Descriptors without a path: eventfd, epoll, timerfd, signalfd, inotify,
//! memfd. (Filled in by the event-descriptor work.)

use crate::files::FileCtx;
use crate::json::Json;
use crate::sys::{Error, Fd, Result};

pub fn handles(kind: &str) -> bool {
    matches!(kind, "eventfd" | "epoll" | "timerfd" | "signalfd" | "inotify" | "memfd")
}

pub fn describe(ctx: &FileCtx) -> Result<Json> {
    let what = ctx.target.strip_prefix("anon_inode:").unwrap_or(ctx.target);
    ctx.unsupported(what)
}

pub fn open(f: &Json) -> Result<Fd> {
    Err(Error::new("EIMAGE", format!("descriptor kind {:?} cannot be restored", f.str_of("kind").unwrap_or(""))))
}

/// After every descriptor of a process is installed (epoll watches name
/// target descriptor numbers, so they are added from inside the target).
pub fn after_install(_inj: &mut crate::inject::Injector, _p: &Json) -> Result<()> {
    Ok(())
}
