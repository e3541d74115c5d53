//! Operation dispatch: the JSON requests the C ABI accepts.

use crate::json::Json;
use crate::session;
use crate::sys::{Error, Pid, Result};

fn pid_arg(req: &Json) -> Result<Pid> {
    req.i64_of("pid").filter(|&p| p > 0 && p <= i32::MAX as i64).map(|p| p as Pid).ok_or_else(|| Error::new("EINVAL", "pid must be a positive integer"))
}

fn ok() -> Json {
    Json::obj().with("ok", true)
}

pub fn dispatch(req: &Json) -> Result<Json> {
    let op = req.str_of("op").ok_or_else(|| Error::new("EREQUEST", "request has no op"))?;
    match op {
        "version" => Ok(ok().with("abi", 1u64).with("engine", env!("CARGO_PKG_VERSION"))),
        "check" => {
            let mut c = crate::check::check();
            c.set("ok", true);
            Ok(c)
        }
        "dump" => {
            let pid = pid_arg(req)?;
            let dir = req.str_of("dir").ok_or_else(|| Error::new("EINVAL", "dump needs dir"))?.to_string();
            let id = session::start();
            let r = session::run(id, move |ctx| match crate::dump::dump(pid, &dir) {
                Ok((frozen, state, stats)) => {
                    ctx.frozen = Some(frozen);
                    ok().with("state", state).with("pages", stats.pages).with("bytes", stats.bytes)
                }
                Err(e) => {
                    ctx.done = true;
                    crate::ffi::error_json(&e)
                }
            })?;
            if r.bool_of("ok") {
                Ok(r.with("session", id))
            } else {
                session::end(id);
                Ok(r)
            }
        }
        "dump_finish" => {
            let id = req.u64_of("session").ok_or_else(|| Error::new("EINVAL", "dump_finish needs session"))?;
            let kill = match req.str_of("action") {
                Some("kill") => true,
                Some("resume") => false,
                _ => return Err(Error::new("EINVAL", "action must be kill or resume")),
            };
            let r = session::run(id, move |ctx| {
                if let Some(mut f) = ctx.frozen.take() {
                    if kill {
                        f.kill();
                    } else {
                        f.resume();
                    }
                }
                ctx.done = true;
                ok()
            })?;
            session::end(id);
            Ok(r)
        }
        "restore" => {
            let dir = req.str_of("dir").ok_or_else(|| Error::new("EINVAL", "restore needs dir"))?.to_string();
            let state = req.get("state").cloned().ok_or_else(|| Error::new("EINVAL", "restore needs state"))?;
            let id = session::start();
            let r = session::run(id, move |ctx| {
                ctx.done = true;
                let t0 = std::time::Instant::now();
                match crate::restore::restore(&dir, &state) {
                    Ok((pid, st)) => ok().with("pid", pid).with("bytes", st.pages_bytes).with("restore_us", t0.elapsed().as_micros() as u64),
                    Err(e) => crate::ffi::error_json(&e),
                }
            });
            session::end(id);
            r
        }
        _ => Err(Error::new("EREQUEST", format!("unknown op {:?}", op))),
    }
}
