//! Sessions: each operation that traces processes runs in an engine process
//! of its own, forked from phaul.
//!
//! Why a process and not a thread: a ptrace tracer's wait() notifications go
//! to its whole thread group, and Node's libuv calls waitpid() on the children
//! it spawned — so with the tracer inside the Node process, libuv steals the
//! stop notifications of any traced process that Node itself started (a
//! scheduler embedding phaul does exactly that). A forked engine process is
//! nobody's parent, owns all tracees of its session, and if phaul dies the
//! engine sees its socket close and rolls back (resumes frozen processes,
//! kills unfinished stubs).
//!
//! Requests and replies are JSON, length-prefixed, over a socketpair.

use crate::json::Json;
use crate::sys::{self, nr, Error, Fd, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

extern "C" {
    fn fork() -> i32;
    fn _exit(code: i32) -> !;
    fn signal(sig: i32, handler: usize) -> usize;
    fn mallopt(param: i32, value: i32) -> i32;
}

/// Give the engine's allocator memory that is already faulted in. A page
/// fault costs 10-20 us on some virtual machines (the test machine among
/// them), and a freshly forked engine shares Node's heap copy-on-write, so
/// the frozen window's allocations (the state's JSON, lists per thread)
/// would pay for it. One arena, no trimming, and 32 MiB populated now,
/// while nothing is frozen. Measured: a 64-thread migration frozen 51-60 ms
/// with it, 59-71 ms without (five runs each).
pub(crate) fn warm_heap() {
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_TOP_PAD: i32 = -2;
    const M_MMAP_THRESHOLD: i32 = -3;
    const M_ARENA_MAX: i32 = -8;
    const MADV_POPULATE_WRITE: u64 = 23;
    const MADV_DONTFORK: u64 = 10;
    const BLOCK: usize = 1 << 20;
    unsafe {
        mallopt(M_ARENA_MAX, 1);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
        mallopt(M_TOP_PAD, 4 << 20);
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
    }
    let blocks: Vec<Vec<u8>> = (0..32).map(|_| Vec::with_capacity(BLOCK)).collect();
    let (mut lo, mut hi) = (u64::MAX, 0);
    for b in &blocks {
        let start = (b.as_ptr() as u64 + 4095) & !4095;
        let end = (b.as_ptr() as u64 + BLOCK as u64) & !4095;
        let _ = unsafe { sys::raw(nr::MADVISE, &[start, end - start, MADV_POPULATE_WRITE]) };
        lo = lo.min(start);
        hi = hi.max(end);
    }
    // Kept out of the processes the engine forks (the intermediate and the
    // root stub, which run raw syscalls only and then drop the engine's
    // memory): a fork write-protects every page it shares, and the engine's
    // next write to each faults again, in the frozen window. Measured: a
    // 128-thread restore took about 800 such faults. A 128-thread
    // migration was frozen 72-77 ms with the blocks kept out, 81-95 ms
    // without (three runs each; 64 threads: 40-54 against 47-53 ms).
    if lo < hi && hi - lo <= 2 * 32 * BLOCK as u64 {
        let _ = unsafe { sys::raw(nr::MADVISE, &[lo, hi - lo, MADV_DONTFORK]) };
    }
    drop(blocks);
}

/// Set in an engine process by SIGUSR1 (see `interrupt`): a long operation
/// that may still give up checks it between steps (the source's wait for the
/// destination to restore, so that cancelling a migration stays possible
/// while its engine is busy).
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_sig: i32) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Ask a session's engine to give up what it may still give up (SIGUSR1).
pub fn interrupt(id: u64) -> Result<()> {
    let h = registry().lock().map_err(|_| Error::new("EPANIC", "session registry poisoned"))?.get(&id).cloned();
    let h = h.ok_or_else(|| Error::new("ESESSION", format!("no session {}", id)))?;
    sys::call("kill(engine)", nr::KILL, &[h.pid as u64, 10]).map(|_| ())
}

struct Handle {
    sock: Mutex<Fd>,
    pid: i32,
}

fn registry() -> &'static Mutex<HashMap<u64, Arc<Handle>>> {
    static R: OnceLock<Mutex<HashMap<u64, Arc<Handle>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

static NEXT: AtomicU64 = AtomicU64::new(1);

fn write_all(fd: i32, data: &[u8]) -> Result<()> {
    let mut off = 0;
    while off < data.len() {
        match unsafe { sys::raw(nr::WRITE, &[fd as u64, data[off..].as_ptr() as u64, (data.len() - off) as u64]) } {
            Ok(n) => off += n as usize,
            Err(4) => continue,
            Err(e) => return Err(Error::sys("engine channel write", e)),
        }
    }
    Ok(())
}

fn read_exact(fd: i32, buf: &mut [u8]) -> Result<bool> {
    let mut off = 0;
    while off < buf.len() {
        match unsafe { sys::raw(nr::READ, &[fd as u64, buf[off..].as_mut_ptr() as u64, (buf.len() - off) as u64]) } {
            Ok(0) => return Ok(false),
            Ok(n) => off += n as usize,
            Err(4) => continue,
            Err(e) => return Err(Error::sys("engine channel read", e)),
        }
    }
    Ok(true)
}

pub fn send_msg(fd: i32, j: &Json) -> Result<()> {
    let body = j.to_string().into_bytes();
    let mut m = (body.len() as u64).to_le_bytes().to_vec();
    m.extend_from_slice(&body);
    write_all(fd, &m)
}

/// Send the 8-byte length prefix with a descriptor attached (SCM_RIGHTS).
fn send_prefix_with_fd(sock: i32, prefix: &[u8; 8], pass: i32) -> Result<()> {
    let iov = [prefix.as_ptr() as u64, 8u64];
    let mut cmsg = [0u8; 24];
    cmsg[0..8].copy_from_slice(&20u64.to_le_bytes());
    cmsg[8..12].copy_from_slice(&1i32.to_le_bytes());
    cmsg[12..16].copy_from_slice(&1i32.to_le_bytes());
    cmsg[16..20].copy_from_slice(&pass.to_le_bytes());
    let msg: [u64; 7] = [0, 0, iov.as_ptr() as u64, 1, cmsg.as_ptr() as u64, 24, 0];
    sys::call("sendmsg(engine)", nr::SENDMSG, &[sock as u64, msg.as_ptr() as u64, 0]).map(|_| ())
}

thread_local! {
    static PASSED: std::cell::RefCell<Option<Fd>> = const { std::cell::RefCell::new(None) };
}

/// A descriptor that came with the current request (engine side), if any.
pub fn take_passed_fd() -> Option<Fd> {
    PASSED.with(|p| p.borrow_mut().take())
}

/// Read the length prefix with recvmsg, keeping a descriptor passed with it.
fn recv_prefix(fd: i32, len: &mut [u8; 8]) -> Result<bool> {
    let iov = [len.as_mut_ptr() as u64, 8u64];
    let mut cmsg = [0u8; 24];
    let mut msg: [u64; 7] = [0, 0, iov.as_ptr() as u64, 1, cmsg.as_mut_ptr() as u64, 24, 0];
    let n = loop {
        match unsafe { sys::raw(nr::RECVMSG, &[fd as u64, msg.as_mut_ptr() as u64, 0x40000000 /* MSG_CMSG_CLOEXEC */]) } {
            Ok(n) => break n as usize,
            Err(4) => continue,
            Err(e) => return Err(Error::sys("engine channel read", e)),
        }
    };
    if n == 0 {
        return Ok(false);
    }
    if msg[5] >= 20 && i32::from_le_bytes(cmsg[8..12].try_into().unwrap_or([0; 4])) == 1 && i32::from_le_bytes(cmsg[12..16].try_into().unwrap_or([0; 4])) == 1 {
        let passed = i32::from_le_bytes(cmsg[16..20].try_into().unwrap_or([0; 4]));
        PASSED.with(|p| *p.borrow_mut() = Some(Fd(passed)));
    }
    if n < 8 {
        return read_exact(fd, &mut len[n..]);
    }
    Ok(true)
}

pub fn recv_msg(fd: i32) -> Result<Option<Json>> {
    let mut len = [0u8; 8];
    if !recv_prefix(fd, &mut len)? {
        return Ok(None);
    }
    let n = u64::from_le_bytes(len) as usize;
    let mut body = vec![0u8; n];
    if !read_exact(fd, &mut body)? {
        return Ok(None);
    }
    let text = String::from_utf8(body).map_err(|_| Error::new("EPANIC", "engine channel: not UTF-8"))?;
    Json::parse(&text).map(Some).map_err(|m| Error::new("EPANIC", m))
}

/// Per-session state living in the engine process.
pub trait Engine {
    /// Handle one request; `done` is set when the session is over.
    fn handle(&mut self, req: &Json, done: &mut bool) -> Json;
    /// phaul went away mid-session: undo whatever is half done.
    fn abandon(&mut self);
}

/// Fork an engine process running `engine`; returns the session id.
pub fn start(make: impl FnOnce() -> Box<dyn Engine>) -> Result<u64> {
    let mut sv = [0i32; 2];
    sys::call("socketpair", nr::SOCKETPAIR, &[1, 1 | 0o2000000, 0, sv.as_mut_ptr() as u64])?;
    let (mine, theirs) = (Fd(sv[0]), Fd(sv[1]));
    // libc's fork: glibc resets its allocator locks in the child, which a raw
    // clone would not; the child then runs ordinary Rust on one thread.
    let pid = unsafe { fork() };
    if pid < 0 {
        return Err(Error::sys("fork engine", sys::errno()));
    }
    if pid == 0 {
        drop(mine);
        let fd = theirs.into_raw();
        // Only stdio and the session socket stay open. The fork copied
        // every descriptor of Node, also those another of its threads had
        // open for a moment: a child_process spawn's exec-status pipe,
        // whose write end held here made Node's main thread wait forever
        // for its end-of-file (a test hung in spawn while a migration
        // started).
        unsafe {
            let _ = sys::raw(nr::CLOSE_RANGE, &[3, fd as u64 - 1, 0]);
            let _ = sys::raw(nr::CLOSE_RANGE, &[fd as u64 + 1, u32::MAX as u64, 0]);
        }
        engine_main(fd, make());
    }
    drop(theirs);
    let id = NEXT.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut r) = registry().lock() {
        r.insert(id, Arc::new(Handle { sock: Mutex::new(mine), pid }));
    }
    Ok(id)
}

fn engine_main(fd: i32, mut engine: Box<dyn Engine>) -> ! {
    unsafe {
        // Node's signal handlers mean nothing here; SIGPIPE stays ignored for sockets.
        let dfl = [0u64; 4];
        for sig in 1..=64u64 {
            if sig == 9 || sig == 19 {
                continue;
            }
            let mut act = dfl;
            if sig == 13 {
                act[0] = 1; // SIG_IGN
            }
            let _ = sys::raw(nr::RT_SIGACTION, &[sig, act.as_ptr() as u64, 0, 8]);
        }
        signal(10 /* SIGUSR1 */, on_interrupt as extern "C" fn(i32) as usize);
        let zero: u64 = 0;
        let _ = sys::raw(nr::RT_SIGPROCMASK, &[2, &zero as *const u64 as u64, 0, 8]);
        let name = b"phaul-engine\0";
        let _ = sys::raw(nr::PRCTL, &[15, name.as_ptr() as u64]);
    }
    warm_heap();
    loop {
        let req = match recv_msg(fd) {
            Ok(Some(r)) => r,
            _ => {
                engine.abandon();
                unsafe { _exit(0) }
            }
        };
        let mut done = false;
        let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.handle(&req, &mut done)))
            .unwrap_or_else(|_| crate::ffi::error_json(&Error::new("EPANIC", "internal error in the native engine")));
        if send_msg(fd, &reply).is_err() {
            engine.abandon();
            unsafe { _exit(0) }
        }
        if done {
            unsafe { _exit(0) }
        }
    }
}

/// Send a request to the session's engine and wait for its reply.
pub fn request(id: u64, req: &Json) -> Result<Json> {
    request_with_fd(id, req, None)
}

/// The same, handing the engine a descriptor (a page stream) with the request.
pub fn request_with_fd(id: u64, req: &Json, pass: Option<&Fd>) -> Result<Json> {
    let h = registry().lock().map_err(|_| Error::new("EPANIC", "session registry poisoned"))?.get(&id).cloned();
    let h = h.ok_or_else(|| Error::new("ESESSION", format!("no session {}", id)))?;
    let sock = h.sock.lock().map_err(|_| Error::new("EPANIC", "session lock poisoned"))?;
    match pass {
        Some(f) => {
            let body = req.to_string().into_bytes();
            send_prefix_with_fd(sock.raw(), &(body.len() as u64).to_le_bytes(), f.raw())?;
            write_all(sock.raw(), &body)?;
        }
        None => send_msg(sock.raw(), req)?,
    }
    match recv_msg(sock.raw())? {
        Some(r) => Ok(r),
        None => {
            drop(sock);
            end(id);
            Err(Error::new("ESESSION", format!("the engine process of session {} ended unexpectedly", id)))
        }
    }
}

/// Forget a session and reap its engine process.
pub fn end(id: u64) {
    let h = registry().lock().ok().and_then(|mut r| r.remove(&id));
    if let Some(h) = h {
        drop(h.sock.lock().map(|s| unsafe { sys::raw(nr::SHUTDOWN, &[s.raw() as u64, 2]) }));
        let mut st = 0i32;
        let _ = unsafe { sys::raw(nr::WAIT4, &[h.pid as u64, &mut st as *mut i32 as u64, 0x40000000, 0]) };
    }
}
