//! Sessions: a thread of their own for every operation that keeps tracees
//! between calls. ptrace binds a tracee to the thread that seized it, and the
//! calls from TypeScript may arrive on any libuv thread, so all ptrace work of
//! a session runs on its own thread and calls are handed to it as jobs.

use crate::freeze::Frozen;
use crate::json::Json;
use crate::sys::{Error, Result};
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};

#[derive(Default)]
pub struct Ctx {
    pub frozen: Option<Frozen>,
    /// Operation-specific state (a migration's tracker, page sender...).
    pub extra: HashMap<&'static str, Box<dyn Any>>,
    pub done: bool,
}

type Job = Box<dyn FnOnce(&mut Ctx) -> Json + Send>;

struct Handle {
    tx: Sender<(Job, Sender<Json>)>,
}

fn registry() -> &'static Mutex<HashMap<u64, Handle>> {
    static R: OnceLock<Mutex<HashMap<u64, Handle>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// Start a session thread; returns its id.
pub fn start() -> u64 {
    let id = NEXT.fetch_add(1, Ordering::SeqCst);
    let (tx, rx) = channel::<(Job, Sender<Json>)>();
    std::thread::Builder::new()
        .name(format!("phaul-session-{}", id))
        .spawn(move || {
            let mut ctx = Ctx::default();
            while let Ok((job, reply)) = rx.recv() {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut ctx)));
                let j = r.unwrap_or_else(|_| crate::ffi::error_json(&Error::new("EPANIC", "internal error in the native engine")));
                let _ = reply.send(j);
                if ctx.done {
                    break;
                }
            }
            // Dropping ctx resumes anything still frozen.
        })
        .ok();
    if let Ok(mut r) = registry().lock() {
        r.insert(id, Handle { tx });
    }
    id
}

/// Run a job on the session's thread and wait for its reply.
pub fn run(id: u64, job: impl FnOnce(&mut Ctx) -> Json + Send + 'static) -> Result<Json> {
    let tx = {
        let r = registry().lock().map_err(|_| Error::new("EPANIC", "session registry poisoned"))?;
        r.get(&id).map(|h| h.tx.clone()).ok_or_else(|| Error::new("ESESSION", format!("no session {}", id)))?
    };
    let (rtx, rrx) = channel();
    tx.send((Box::new(job), rtx)).map_err(|_| Error::new("ESESSION", format!("session {} has ended", id)))?;
    rrx.recv().map_err(|_| Error::new("ESESSION", format!("session {} has ended", id)))
}

pub fn end(id: u64) {
    let _ = run(id, |ctx| {
        ctx.done = true;
        Json::obj().with("ok", true)
    });
    if let Ok(mut r) = registry().lock() {
        r.remove(&id);
    }
}
