//! Sockets. (Filled in by the sockets work: TCP listen/established, UDP, unix.)

use crate::files::FileCtx;
use crate::json::Json;
use crate::sys::{Error, Fd, Result};

/// File kinds (the "kind" field) this module restores.
pub fn handles(kind: &str) -> bool {
    kind.starts_with("sock")
}

pub fn describe(ctx: &FileCtx) -> Result<Json> {
    ctx.unsupported(&format!("socket {}", ctx.target))
}

pub fn open(f: &Json) -> Result<Fd> {
    Err(Error::new("EIMAGE", format!("socket kind {:?} cannot be restored", f.str_of("kind").unwrap_or(""))))
}
