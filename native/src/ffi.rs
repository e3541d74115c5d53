//! The C ABI. Requests and replies are JSON; every export catches panics
//! (a panic crossing into Node would abort it) and turns errors into
//! `{"ok":false,"code":...,"message":...}`.

use crate::json::Json;
use crate::ops;
use crate::sys::Error;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

pub fn error_json(e: &Error) -> Json {
    let mut j = Json::obj().with("ok", false).with("code", e.code).with("message", e.message.as_str());
    if e.errno != 0 {
        j.set("errno", e.errno);
    }
    j
}

/// Replies that did not fit the caller's buffer, keyed by that buffer's address.
fn pending() -> &'static Mutex<HashMap<usize, Vec<u8>>> {
    static P: OnceLock<Mutex<HashMap<usize, Vec<u8>>>> = OnceLock::new();
    P.get_or_init(|| Mutex::new(HashMap::new()))
}

fn deliver(reply: Vec<u8>, key: usize, out: *mut u8, cap: usize) -> i64 {
    if reply.len() > cap || out.is_null() {
        let n = reply.len() as i64;
        if let Ok(mut p) = pending().lock() {
            p.insert(key, reply);
        }
        return -n;
    }
    // Safety: the caller owns `out` with at least `cap` bytes.
    unsafe { std::ptr::copy_nonoverlapping(reply.as_ptr(), out, reply.len()) };
    reply.len() as i64
}

/// # Safety
/// `req` points to `req_len` readable bytes; `out` to `out_cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn phaul_call(req: *const u8, req_len: usize, out: *mut u8, out_cap: usize) -> i64 {
    let reply = std::panic::catch_unwind(|| {
        let bytes = if req.is_null() { &[][..] } else { std::slice::from_raw_parts(req, req_len) };
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => return error_json(&Error::new("EREQUEST", "request is not UTF-8")),
        };
        match Json::parse(text) {
            Ok(j) => match ops::dispatch(&j) {
                Ok(r) => r,
                Err(e) => error_json(&e),
            },
            Err(m) => error_json(&Error::new("EREQUEST", m)),
        }
    })
    .unwrap_or_else(|_| error_json(&Error::new("EPANIC", "internal error in the native engine")));
    deliver(reply.to_string().into_bytes(), out as usize, out, out_cap)
}

/// Fetch a reply that did not fit: `old_out` is the buffer passed to the call.
///
/// # Safety
/// `out` points to `out_cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn phaul_take_reply(old_out: *const u8, out: *mut u8, out_cap: usize) -> i64 {
    std::panic::catch_unwind(|| {
        let r = pending().lock().ok().and_then(|mut p| p.remove(&(old_out as usize)));
        match r {
            Some(reply) => deliver(reply, old_out as usize, out, out_cap),
            None => 0,
        }
    })
    .unwrap_or(0)
}

#[no_mangle]
pub extern "C" fn phaul_abi_version() -> i32 {
    1
}
