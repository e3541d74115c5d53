//! signalfd: signal mask and flags. The signals themselves stay pending in
//! the process (restored with its pending signals).

use super::{fd_of, hex_field, nr, O_CLOEXEC, O_NONBLOCK};
use crate::files::FileCtx;
use crate::json::Json;
use crate::sys::{self, Error, Fd, Result};

pub fn describe(ctx: &FileCtx) -> Result<Json> {
    let mask = hex_field(&ctx.info.raw, "sigmask").ok_or_else(|| Error::new("EPROC", format!("fd {}: signalfd without sigmask in fdinfo", ctx.fd)))?;
    Ok(ctx.base.clone().with("kind", "signalfd").with("sigmask", mask))
}

pub fn open(f: &Json) -> Result<Fd> {
    let flags = f.u64_of("flags").unwrap_or(0) as u32;
    let mask = f.u64_of("sigmask").unwrap_or(0);
    let m = mask.to_le_bytes();
    let fd = sys::call("signalfd4", nr::SIGNALFD4, &[u64::MAX, m.as_ptr() as u64, 8, ((flags & O_NONBLOCK) | O_CLOEXEC) as u64])?;
    Ok(fd_of(fd))
}
