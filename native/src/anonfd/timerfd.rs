//! timerfd: clock, interval, time left, settime flags, and expirations not
//! yet read (see docs/event-fds.md for how those are re-created).

use super::{fd_of, field, nr, ns_timespec, timespec_ns, O_CLOEXEC, O_NONBLOCK};
use crate::files::FileCtx;
use crate::json::Json;
use crate::sys::{self, Error, Fd, Result};

const TFD_TIMER_ABSTIME: u32 = 1;
const TFD_TIMER_CANCEL_ON_SET: u32 = 2;

pub fn describe(ctx: &FileCtx) -> Result<Json> {
    // timerfd_gettime on a copy forwards an expired periodic timer, so that
    // fdinfo then shows every expiration in `ticks` (nothing is consumed).
    let stolen = sys::pidfd_getfd(ctx.pidfd, ctx.fd)?;
    let mut its = [0u8; 32];
    sys::call("timerfd_gettime", nr::TIMERFD_GETTIME, &[stolen.raw() as u64, its.as_mut_ptr() as u64])?;
    let raw = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", stolen.raw())).map_err(Error::from)?;
    let bad = || Error::new("EPROC", format!("fd {}: timerfd fdinfo is not understood", ctx.fd));
    let clockid: i64 = field(&raw, "clockid").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let ticks: u64 = field(&raw, "ticks").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let sflags = field(&raw, "settime flags").and_then(|v| u32::from_str_radix(v, 8).ok()).unwrap_or(0);
    let value_ns = timespec_ns(&its[16..32]);
    let mut j = ctx.base.clone();
    if sflags & TFD_TIMER_ABSTIME != 0 && is_wall_clock(clockid) && value_ns > 0 {
        // A deadline on the wall clock stays where it was, downtime or not.
        j.set("deadline_ns", clock_now(clockid as u64)? + value_ns);
    }
    Ok(j
        .with("kind", "timerfd")
        .with("clockid", clockid)
        .with("ticks", ticks)
        .with("settime_flags", sflags)
        .with("interval_ns", timespec_ns(&its[0..16]))
        .with("value_ns", value_ns))
}

/// CLOCK_REALTIME, CLOCK_REALTIME_ALARM, CLOCK_TAI: the same on every host.
fn is_wall_clock(c: i64) -> bool {
    matches!(c, 0 | 8 | 11)
}

fn clock_now(clockid: u64) -> Result<u64> {
    let mut ts = [0u8; 16];
    sys::call("clock_gettime", nr::CLOCK_GETTIME, &[clockid, ts.as_mut_ptr() as u64])?;
    Ok(timespec_ns(&ts))
}

pub fn open(f: &Json) -> Result<Fd> {
    let flags = f.u64_of("flags").unwrap_or(0) as u32;
    let clockid = f.i64_of("clockid").unwrap_or(1) as u64;
    let fd = fd_of(
        sys::call(&format!("timerfd_create(clock {})", clockid as i64), nr::TIMERFD_CREATE, &[clockid, ((flags & O_NONBLOCK) | O_CLOEXEC) as u64])?,
    );
    let ticks = f.u64_of("ticks").unwrap_or(0);
    let interval = f.u64_of("interval_ns").unwrap_or(0);
    let mut value = f.u64_of("value_ns").unwrap_or(0);
    if value == 0 && interval > 0 && ticks == 0 {
        // A periodic timer reads 0 left when it expired an instant before
        // the dump and the kernel had not counted the expiry yet: it is
        // armed, and due. (0 would disarm it for good.)
        value = 1;
    }
    let sflags = f.u64_of("settime_flags").unwrap_or(0) as u32;
    let (set_flags, expiry) = if ticks > 0 {
        // Expirations not read yet: put the first of them in the past (on an
        // absolute clock), so the next read counts them again.
        let now = clock_now(clockid)?;
        let back = ticks.saturating_mul(interval);
        let e0 = if interval == 0 { now } else { (now + value).saturating_sub(back).max(1) };
        (TFD_TIMER_ABSTIME | (sflags & TFD_TIMER_CANCEL_ON_SET), e0)
    } else if value == 0 {
        return Ok(fd); // disarmed
    } else if let Some(d) = f.u64_of("deadline_ns") {
        (sflags, d)
    } else if sflags & TFD_TIMER_ABSTIME != 0 {
        (sflags, clock_now(clockid)? + value)
    } else {
        (0, value)
    };
    let mut its = Vec::with_capacity(32);
    ns_timespec(interval, &mut its);
    ns_timespec(expiry, &mut its);
    sys::call("timerfd_settime", nr::TIMERFD_SETTIME, &[fd.raw() as u64, set_flags as u64, its.as_ptr() as u64, 0])?;
    Ok(fd)
}
