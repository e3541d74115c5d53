//! Operation dispatch: the JSON requests the C ABI accepts. Operations that
//! trace processes run in a session engine process (see session.rs).

use crate::ffi::error_json;
use crate::freeze::Frozen;
use crate::json::Json;
use crate::session::{self, Engine};
use crate::sys::{Error, Pid, Result};

pub fn pid_arg(req: &Json) -> Result<Pid> {
    req.i64_of("pid").filter(|&p| p > 0 && p <= i32::MAX as i64).map(|p| p as Pid).ok_or_else(|| Error::new("EINVAL", "pid must be a positive integer"))
}

pub fn ok() -> Json {
    Json::obj().with("ok", true)
}

fn reply(r: Result<Json>) -> Json {
    r.unwrap_or_else(|e| error_json(&e))
}

/// Start a session engine, send it the first request, and keep the session
/// only if that request succeeded and the engine is not done.
fn open_session(make: impl FnOnce() -> Box<dyn Engine>, req: &Json) -> Result<Json> {
    let id = session::start(make)?;
    let r = session::request(id, req)?;
    if r.bool_of("ok") && !r.bool_of("session_done") {
        Ok(r.with("session", id))
    } else {
        session::end(id);
        Ok(r)
    }
}

/// Destination sessions waiting for their page stream from the agent-wide
/// listener: session id -> (migration, token).
fn awaiting_stream() -> &'static std::sync::Mutex<std::collections::HashMap<u64, (String, String)>> {
    static A: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<u64, (String, String)>>> = std::sync::OnceLock::new();
    A.get_or_init(Default::default)
}

/// A destination op that reads pages: the first one brings the page stream
/// along, claimed from the agent's listener (when the agent has one).
fn dest_with_stream(req: &Json) -> Result<Json> {
    let id = req.u64_of("session").ok_or_else(|| Error::new("EINVAL", "this operation needs a session"))?;
    let waiting = awaiting_stream().lock().ok().and_then(|mut a| a.remove(&id));
    let r = match waiting {
        Some((migration, token)) => {
            let timeout = std::time::Duration::from_millis(req.u64_of("timeout_ms").unwrap_or(30_000).clamp(10, 3_600_000));
            let stream = match crate::pageserver::claim(&migration, &token, timeout) {
                Ok(s) => s,
                Err(e) => {
                    let _ = session::request(id, &Json::obj().with("op", "dest_abort").with("session", id));
                    session::end(id);
                    return Err(e);
                }
            };
            let fd = crate::sys::Fd(std::os::unix::io::IntoRawFd::into_raw_fd(stream));
            session::request_with_fd(id, req, Some(&fd))?
        }
        None => session::request(id, req)?,
    };
    if r.bool_of("session_done") {
        session::end(id);
    }
    Ok(r)
}

fn continue_session(req: &Json) -> Result<Json> {
    let id = req.u64_of("session").ok_or_else(|| Error::new("EINVAL", "this operation needs a session"))?;
    let r = session::request(id, req)?;
    if r.bool_of("session_done") {
        session::end(id);
    }
    Ok(r)
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
        "dump" => open_session(|| Box::new(DumpEngine { frozen: None }), req),
        "restore" => open_session(|| Box::new(RestoreEngine), req),
        "source_start" => open_session(|| Box::new(crate::migrate::source::SourceEngine::default()), req),
        "dest_prepare" => {
            let r = open_session(|| Box::new(crate::migrate::dest::DestEngine::default()), req)?;
            if let (Some(id), true) = (r.u64_of("session"), crate::pageserver::is_listening()) {
                if let Ok(mut a) = awaiting_stream().lock() {
                    a.insert(id, (req.str_of("migration").unwrap_or("").to_string(), req.str_of("token").unwrap_or("").to_string()));
                }
                crate::pageserver::expect(req.str_of("migration").unwrap_or(""));
            }
            Ok(r)
        }
        "pageserver_listen" => {
            let host = req.str_of("host").unwrap_or("127.0.0.1");
            let port = req.u64_of("port").unwrap_or(0).min(65535) as u16;
            Ok(ok().with("port", crate::pageserver::listen(host, port)?))
        }
        "pageserver_cancel" => {
            crate::pageserver::cancel(req.str_of("migration").unwrap_or(""));
            Ok(ok())
        }
        "pageserver_status" => Ok(crate::pageserver::status().with("ok", true)),
        "dest_round" | "dest_restore" => dest_with_stream(req),
        "dump_finish" | "source_round" | "source_freeze" | "source_commit" | "source_finish" | "dest_abort" => continue_session(req),
        // Outside the session's request lock: it reaches an engine busy with a request.
        "session_interrupt" => {
            let id = req.u64_of("session").ok_or_else(|| Error::new("EINVAL", "this operation needs a session"))?;
            session::interrupt(id).map(|_| ok())
        }
        _ => Err(Error::new("EREQUEST", format!("unknown op {:?}", op))),
    }
}

struct DumpEngine {
    frozen: Option<Frozen>,
}

impl Engine for DumpEngine {
    fn handle(&mut self, req: &Json, done: &mut bool) -> Json {
        match req.str_of("op").unwrap_or("") {
            "dump" => {
                let r = (|| {
                    let pid = pid_arg(req)?;
                    let dir = req.str_of("dir").ok_or_else(|| Error::new("EINVAL", "dump needs dir"))?;
                    let (frozen, state, stats) = crate::dump::dump(pid, dir)?;
                    // What a restore checks first must hold here and now, or
                    // killing the tree after this dump would lose it (the
                    // tree is resumed when `frozen` drops).
                    crate::restore::preflight(&state, true).map_err(|e| Error::new(e.code, format!("this dump could not be restored: {} (the tree runs on)", e.message)))?;
                    self.frozen = Some(frozen);
                    Ok(ok().with("state", state).with("pages", stats.pages).with("bytes", stats.bytes))
                })();
                if r.is_err() {
                    *done = true;
                }
                reply(r)
            }
            "dump_finish" => {
                *done = true;
                let kill = match req.str_of("action") {
                    Some("kill") => true,
                    Some("resume") => false,
                    _ => {
                        // Safer default for a malformed request: let the tree run.
                        self.abandon();
                        return error_json(&Error::new("EINVAL", "action must be kill or resume"));
                    }
                };
                if let Some(mut f) = self.frozen.take() {
                    if kill {
                        f.kill();
                    } else {
                        f.resume();
                    }
                }
                ok().with("session_done", true)
            }
            op => error_json(&Error::new("EREQUEST", format!("{} is not a dump operation", op))),
        }
    }
    fn abandon(&mut self) {
        if let Some(mut f) = self.frozen.take() {
            f.resume();
        }
    }
}

struct RestoreEngine;

impl Engine for RestoreEngine {
    fn handle(&mut self, req: &Json, done: &mut bool) -> Json {
        *done = true;
        reply((|| {
            let dir = req.str_of("dir").ok_or_else(|| Error::new("EINVAL", "restore needs dir"))?;
            let state = req.get("state").ok_or_else(|| Error::new("EINVAL", "restore needs state"))?;
            let t0 = std::time::Instant::now();
            let (pid, host, st) = crate::restore::restore(dir, state, req.bool_of("pid_ns"))?;
            Ok(ok().with("pid", pid).with("host_pid", host).with("bytes", st.pages_bytes).with("restore_us", t0.elapsed().as_micros() as u64).with("session_done", true))
        })())
    }
    fn abandon(&mut self) {}
}
