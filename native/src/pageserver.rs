//! The agent-wide page listener (destination side).
//!
//! One TCP port per agent takes every migration's page stream. Each
//! connection must open with a HELLO frame naming its migration and token
//! within a few seconds; it is then parked until the destination session of
//! that migration claims it, and its descriptor is handed to the session's
//! engine process along with the request that needs it. Unclaimed
//! connections expire, and their number is bounded, so a peer that connects
//! and sends nothing (or floods) costs nothing lasting.

use crate::json::Json;
use crate::migrate::stream;
use crate::sys::{Error, Result};
use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const PARK_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_PARKED: usize = 512;

struct Parked {
    token: String,
    stream: TcpStream,
    since: Instant,
}

fn parked() -> &'static Mutex<HashMap<String, Parked>> {
    static P: OnceLock<Mutex<HashMap<String, Parked>>> = OnceLock::new();
    P.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Migrations a destination session was prepared for: their streams are
/// evicted last when a flood of made-up HELLOs fills the parking.
fn expected() -> &'static Mutex<Vec<String>> {
    static E: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    E.get_or_init(|| Mutex::new(Vec::new()))
}

/// Add `migration` to a list of ids that peers can grow: the oldest go past 256.
fn remember(list: &Mutex<Vec<String>>, migration: &str) {
    if let Ok(mut l) = list.lock() {
        if l.len() > 256 {
            l.remove(0);
        }
        l.push(migration.to_string());
    }
}

/// A session for `migration` exists: keep its stream parked in preference to others.
pub fn expect(migration: &str) {
    remember(expected(), migration);
}

fn forget(migration: &str) {
    if let Ok(mut e) = expected().lock() {
        e.retain(|m| m != migration);
    }
}

/// Migrations whose claim was called off (their control connection is gone).
fn cancelled() -> &'static Mutex<Vec<String>> {
    static C: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(Vec::new()))
}

/// Stop waiting for the page stream of `migration` (a claim in progress fails at once).
pub fn cancel(migration: &str) {
    forget(migration);
    remember(cancelled(), migration);
    if let Ok(mut p) = parked().lock() {
        p.remove(migration);
    }
}

fn listening() -> &'static Mutex<Option<(String, u16)>> {
    static L: OnceLock<Mutex<Option<(String, u16)>>> = OnceLock::new();
    L.get_or_init(|| Mutex::new(None))
}

pub fn is_listening() -> bool {
    listening().lock().map(|l| l.is_some()).unwrap_or(false)
}

/// Start the listener (once per process); returns the bound port.
pub fn listen(host: &str, port: u16) -> Result<u16> {
    let mut l = listening().lock().map_err(|_| Error::new("EPANIC", "page listener state poisoned"))?;
    if let Some((h, p)) = l.as_ref() {
        if h == host && (port == 0 || port == *p) {
            return Ok(*p);
        }
        return Err(Error::new("EBUSY", format!("this agent already listens for pages on {}:{}", h, p)));
    }
    let listener = TcpListener::bind((host, port)).map_err(|e| Error::new("EADDR", format!("cannot listen for pages on {}:{}: {}", host, port, e)))?;
    let bound = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    std::thread::Builder::new()
        .name("phaul-pages".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if let Ok(s) = conn {
                    // Each HELLO is read on its own thread: a silent peer must not block others.
                    let _ = std::thread::Builder::new().name("phaul-hello".into()).spawn(move || admit(s));
                }
            }
        })
        .map_err(|e| Error::new("EPANIC", format!("cannot start the page listener: {}", e)))?;
    *l = Some((host.to_string(), bound));
    Ok(bound)
}

fn admit(mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(HELLO_TIMEOUT));
    let _ = s.set_nodelay(true);
    let hello = match stream::read_header(&mut s) {
        Ok(h) if h.kind == stream::HELLO && h.count <= 4096 => stream::read_json(&mut s, &h),
        _ => return,
    };
    let hello = match hello {
        Ok(j) => j,
        Err(_) => return,
    };
    let (migration, token) = match (hello.str_of("migration"), hello.str_of("token")) {
        (Some(m), Some(t)) if !m.is_empty() => (m.to_string(), t.to_string()),
        _ => return,
    };
    let _ = s.set_read_timeout(None);
    if let Ok(mut p) = parked().lock() {
        p.retain(|_, v| v.since.elapsed() < PARK_TIMEOUT);
        if p.contains_key(&migration) {
            return; // the first stream of a migration stays; a duplicate is dropped
        }
        if p.len() >= MAX_PARKED {
            // Full (a flood of HELLOs for made-up migrations): the oldest
            // goes, so a real stream, claimed right after it arrives, still
            // gets in unless the flood is sustained faster than that.
            let wanted = expected().lock().map(|e| e.clone()).unwrap_or_default();
            let victim = p
                .iter()
                .filter(|(k, _)| !wanted.contains(k))
                .min_by_key(|(_, v)| v.since)
                .or_else(|| p.iter().min_by_key(|(_, v)| v.since))
                .map(|(k, _)| k.clone());
            if let Some(old) = victim {
                p.remove(&old);
            }
        }
        p.insert(migration, Parked { token, stream: s, since: Instant::now() });
    }
}

/// Wait for the page stream of `migration`, checking its token.
pub fn claim(migration: &str, token: &str, timeout: Duration) -> Result<TcpStream> {
    let t0 = Instant::now();
    loop {
        if let Ok(mut p) = parked().lock() {
            if let Some(x) = p.remove(migration) {
                forget(migration);
                if !ct_eq(x.token.as_bytes(), token.as_bytes()) {
                    return Err(Error::new("EAUTH", format!("the page stream of migration {} presented a wrong token", migration)));
                }
                return Ok(x.stream);
            }
        }
        if let Ok(mut c) = cancelled().lock() {
            if let Some(i) = c.iter().position(|m| m == migration) {
                c.remove(i);
                return Err(Error::new("ECANCELED", "the migration ended before its page stream arrived"));
            }
        }
        if t0.elapsed() > timeout {
            return Err(Error::new("ETIMEDOUT", "the source did not open its page stream in time"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Constant-time equality (the time taken does not depend on where the inputs differ).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

pub fn status() -> Json {
    let l = listening().lock().ok().and_then(|l| l.clone());
    let n = parked().lock().map(|p| p.len()).unwrap_or(0);
    Json::obj().with("listening", l.as_ref().map(|(h, p)| format!("{}:{}", h, p))).with("parked", n)
}
