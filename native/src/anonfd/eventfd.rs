//! eventfd: counter and flags (EFD_SEMAPHORE, EFD_NONBLOCK).

use super::{fd_of, field, hex_field, nr, O_CLOEXEC, O_NONBLOCK};
use crate::files::FileCtx;
use crate::json::Json;
use crate::sys::{self, Error, Fd, Result};

const EFD_SEMAPHORE: u32 = 1;

pub fn describe(ctx: &FileCtx) -> Result<Json> {
    let raw = &ctx.info.raw;
    let count = hex_field(raw, "eventfd-count").ok_or_else(|| Error::new("EPROC", format!("fd {}: eventfd without eventfd-count in fdinfo", ctx.fd)))?;
    let semaphore = match field(raw, "eventfd-semaphore") {
        Some(v) => v == "1",
        None => ctx.info.flags & EFD_SEMAPHORE != 0,
    };
    Ok(ctx.base.clone().with("kind", "eventfd").with("count", count).with("semaphore", semaphore))
}

pub fn open(f: &Json) -> Result<Fd> {
    let flags = f.u64_of("flags").unwrap_or(0) as u32;
    let mut efd = (flags & O_NONBLOCK) | O_CLOEXEC;
    if f.bool_of("semaphore") {
        efd |= EFD_SEMAPHORE;
    }
    // The initial value of eventfd2 is 32-bit; the counter is 64-bit.
    let fd = fd_of(sys::call("eventfd2", nr::EVENTFD2, &[0, efd as u64])?);
    let count = f.u64_of("count").unwrap_or(0);
    if count > 0 {
        let b = count.to_le_bytes();
        sys::call("write to eventfd", crate::sys::nr::WRITE, &[fd.raw() as u64, b.as_ptr() as u64, 8])?;
    }
    Ok(fd)
}
