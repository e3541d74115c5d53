//! Raw system calls and the error type used across the engine.
//!
//! We call the kernel through libc's `syscall()` (std already links libc), so
//! no crate is needed and every call site names the exact syscall it makes.

use std::ffi::CString;
use std::fmt;

pub type Pid = i32;

extern "C" {
    fn syscall(num: i64, ...) -> i64;
    fn __errno_location() -> *mut i32;
}

/// An engine error: a stable code for programs, a sentence for people.
#[derive(Debug, Clone)]
pub struct Error {
    pub code: &'static str,
    pub errno: i32,
    pub message: String,
}

impl Error {
    pub fn new(code: &'static str, message: impl Into<String>) -> Error {
        Error { code, errno: 0, message: message.into() }
    }
    pub fn sys(what: impl Into<String>, errno: i32) -> Error {
        Error { code: "ESYSCALL", errno, message: format!("{}: {}", what.into(), strerror(errno)) }
    }
    pub fn context(mut self, what: impl fmt::Display) -> Error {
        self.message = format!("{}: {}", what, self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error { code: "EIO", errno: e.raw_os_error().unwrap_or(0), message: e.to_string() }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

pub trait Context<T> {
    fn ctx(self, what: impl fmt::Display) -> Result<T>;
}
impl<T> Context<T> for Result<T> {
    fn ctx(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.context(what))
    }
}
impl<T> Context<T> for std::io::Result<T> {
    fn ctx(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::from(e).context(what))
    }
}

pub fn errno() -> i32 {
    unsafe { *__errno_location() }
}

pub fn strerror(e: i32) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}

/// Linux x86_64/aarch64 syscall numbers we use. aarch64 numbers are kept next
/// to them so the port only touches this table and arch/.
/// open(2) flags (the asm-generic values, shared by x86_64 and aarch64).
pub const O_ACCMODE: u32 = 3;
pub const O_WRONLY: u32 = 1;
pub const O_RDWR: u32 = 2;
pub const O_CREAT: u32 = 0o100;
pub const O_EXCL: u32 = 0o200;
pub const O_NOCTTY: u32 = 0o400;
pub const O_TRUNC: u32 = 0o1000;
pub const O_NONBLOCK: u32 = 0o4000;
pub const O_CLOEXEC: u32 = 0o2000000;
pub const O_PATH: u32 = 0o10000000;

pub mod nr {
    #[cfg(target_arch = "x86_64")]
    mod table {
        pub const READ: i64 = 0;
        pub const WRITE: i64 = 1;
        pub const OPEN: i64 = 2;
        pub const CLOSE: i64 = 3;
        pub const LSEEK: i64 = 8;
        pub const MMAP: i64 = 9;
        pub const MPROTECT: i64 = 10;
        pub const MUNMAP: i64 = 11;
        pub const BRK: i64 = 12;
        pub const RT_SIGACTION: i64 = 13;
        pub const RT_SIGPROCMASK: i64 = 14;
        pub const IOCTL: i64 = 16;
        pub const PREAD64: i64 = 17;
        pub const PWRITE64: i64 = 18;
        pub const MREMAP: i64 = 25;
        pub const MADVISE: i64 = 28;
        pub const MLOCK2: i64 = 325;
        pub const MLOCKALL: i64 = 151;
        pub const DUP2: i64 = 33;
        pub const PAUSE: i64 = 34;
        pub const GETITIMER: i64 = 36;
        pub const SETITIMER: i64 = 38;
        pub const GETPID: i64 = 39;
        pub const SETPRIORITY: i64 = 141;
        pub const PPOLL: i64 = 271;
        pub const SOCKETPAIR: i64 = 53;
        pub const SENDMSG: i64 = 46;
        pub const RECVMSG: i64 = 47;
        pub const CLONE: i64 = 56;
        pub const EXIT: i64 = 60;
        pub const WAIT4: i64 = 61;
        pub const KILL: i64 = 62;
        pub const FCNTL: i64 = 72;
        pub const CHDIR: i64 = 80;
        pub const FCHDIR: i64 = 81;
        pub const UMASK: i64 = 95;
        pub const PTRACE: i64 = 101;
        pub const SETPGID: i64 = 109;
        pub const GETPPID: i64 = 110;
        pub const SETSID: i64 = 112;
        pub const GETPGID: i64 = 121;
        pub const GETSID: i64 = 124;
        pub const RT_SIGTIMEDWAIT: i64 = 128;
        pub const RT_SIGQUEUEINFO: i64 = 129;
        pub const SHUTDOWN: i64 = 48;
        pub const SIGALTSTACK: i64 = 131;
        pub const PERSONALITY: i64 = 135;
        pub const PRCTL: i64 = 157;
        pub const ARCH_PRCTL: i64 = 158;
        pub const CHROOT: i64 = 161;
        pub const SETRLIMIT: i64 = 160;
        pub const GETTID: i64 = 186;
        pub const TKILL: i64 = 200;
        pub const SCHED_SETAFFINITY: i64 = 203;
        pub const SCHED_GETAFFINITY: i64 = 204;
        pub const GETCPU: i64 = 309;
        pub const IOPRIO_SET: i64 = 251;
        pub const IOPRIO_GET: i64 = 252;
        pub const FUTEX: i64 = 202;
        pub const SET_TID_ADDRESS: i64 = 218;
        pub const TIMER_CREATE: i64 = 222;
        pub const TIMER_SETTIME: i64 = 223;
        pub const TIMER_GETTIME: i64 = 224;
        pub const EXIT_GROUP: i64 = 231;
        pub const TGKILL: i64 = 234;
        pub const OPENAT: i64 = 257;
        pub const SET_ROBUST_LIST: i64 = 273;
        pub const GET_ROBUST_LIST: i64 = 274;
        pub const RT_TGSIGQUEUEINFO: i64 = 297;
        pub const PRLIMIT64: i64 = 302;
        pub const PROCESS_VM_READV: i64 = 310;
        pub const PROCESS_VM_WRITEV: i64 = 311;
        pub const KCMP: i64 = 312;
        pub const USERFAULTFD: i64 = 323;
        pub const RSEQ: i64 = 334;
        pub const MEMBARRIER: i64 = 324;
        pub const CLOSE_RANGE: i64 = 436;
        pub const SECCOMP: i64 = 317;
        pub const PIDFD_OPEN: i64 = 434;
        pub const CLONE3: i64 = 435;
        pub const PIDFD_GETFD: i64 = 438;
    }
    pub use table::*;
}

/// A raw syscall in this process. Returns the result or the errno.
pub unsafe fn raw(n: i64, a: &[u64]) -> std::result::Result<i64, i32> {
    let g = |i: usize| a.get(i).copied().unwrap_or(0);
    let r = syscall(n, g(0), g(1), g(2), g(3), g(4), g(5));
    if r == -1 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// Like `raw`, with a description for the error.
pub fn call(what: &str, n: i64, a: &[u64]) -> Result<i64> {
    unsafe { raw(n, a) }.map_err(|e| Error::sys(what, e))
}

pub fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::new("EINVAL", format!("path contains a NUL byte: {:?}", s)))
}

/// An owned file descriptor that closes itself.
pub struct Fd(pub i32);
impl Fd {
    pub fn raw(&self) -> i32 {
        self.0
    }
    pub fn into_raw(self) -> i32 {
        let f = self.0;
        std::mem::forget(self);
        f
    }
}
impl Drop for Fd {
    fn drop(&mut self) {
        if self.0 >= 0 {
            unsafe {
                let _ = raw(nr::CLOSE, &[self.0 as u64]);
            }
        }
    }
}

pub fn pidfd_open(pid: Pid) -> Result<Fd> {
    call(&format!("pidfd_open({})", pid), nr::PIDFD_OPEN, &[pid as u64, 0]).map(|f| Fd(f as i32))
}

/// Take a copy of descriptor `fd` of the process behind `pidfd`.
pub fn pidfd_getfd(pidfd: &Fd, fd: i32) -> Result<Fd> {
    call(&format!("pidfd_getfd(fd {})", fd), nr::PIDFD_GETFD, &[pidfd.raw() as u64, fd as u64, 0]).map(|f| Fd(f as i32))
}

pub fn kill(pid: Pid, sig: i32) -> Result<()> {
    call("kill", nr::KILL, &[pid as u64, sig as u64]).map(|_| ())
}

/// Scheduling weight of the calling thread (nice, per thread on Linux;
/// inherited by threads it creates). Best effort: a refusal changes nothing.
pub fn set_thread_nice(nice: i32) {
    set_nice(gettid(), nice);
}

/// The calling thread's id.
pub fn gettid() -> Pid {
    unsafe { raw(nr::GETTID, &[]) }.unwrap_or(0) as Pid
}

/// Run the calling thread (and threads it starts) under SCHED_FIFO at the
/// lowest real-time priority, or back under SCHED_OTHER. For the frozen
/// window: a traced thread let go (PTRACE_CONT) otherwise preempts the
/// engine at once, so letting 64 threads run their batches cost a context
/// switch round trip each (about 0.1 ms on the test VM) before the engine
/// could let the next one go. The engine only ever blocks (waitpid,
/// sockets), so it cannot starve the CPU. Best effort (needs CAP_SYS_NICE).
pub fn set_thread_realtime(on: bool) {
    let prio: i32 = if on { 1 } else { 0 };
    let policy = if on { 1 /* SCHED_FIFO */ } else { 0 /* SCHED_OTHER */ };
    let _ = unsafe { raw(144 /* sched_setscheduler */, &[0, policy, &prio as *const i32 as u64]) };
}

/// Scheduling weight (nice) of thread `tid`. Best effort.
pub fn set_nice(tid: Pid, nice: i32) {
    let _ = unsafe { raw(nr::SETPRIORITY, &[0 /* PRIO_PROCESS */, tid as u64, nice as i64 as u64]) };
}

/// struct pollfd.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PollFd {
    pub fd: i32,
    pub events: i16,
    pub revents: i16,
}

pub const POLLIN: i16 = 0x1;
pub const POLLHUP: i16 = 0x10;
pub const POLLRDHUP: i16 = 0x2000;

impl PollFd {
    pub fn new(fd: i32, events: i16) -> PollFd {
        PollFd { fd, events, revents: 0 }
    }
}

/// poll(2) (as ppoll, which every architecture has): how many of `fds` are
/// ready within `timeout_ms`; 0 on timeout and on error (EINTR included).
pub fn poll(fds: &mut [PollFd], timeout_ms: u64) -> usize {
    let ts = [(timeout_ms / 1000) as i64, ((timeout_ms % 1000) * 1_000_000) as i64];
    unsafe { raw(nr::PPOLL, &[fds.as_mut_ptr() as u64, fds.len() as u64, ts.as_ptr() as u64, 0, 8]) }.unwrap_or(0) as usize
}

pub fn tgkill(tgid: Pid, tid: Pid, sig: i32) -> Result<()> {
    call("tgkill", nr::TGKILL, &[tgid as u64, tid as u64, sig as u64]).map(|_| ())
}

pub fn getpid() -> Pid {
    unsafe { raw(nr::GETPID, &[]).unwrap_or(0) as Pid }
}

pub const PAGE_SIZE: u64 = 4096;

pub fn now_ns() -> u64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    d.as_nanos() as u64
}

pub fn monotonic() -> std::time::Instant {
    std::time::Instant::now()
}

/// With PHAUL_TRACE set, print a CLOCK_MONOTONIC-stamped mark on stderr (us),
/// comparable with the workloads' own monotonic stamps: for timing the
/// frozen window across source and destination.
pub fn trace_mark(what: &str) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*ON.get_or_init(|| std::env::var_os("PHAUL_TRACE").is_some()) {
        return;
    }
    eprintln!("phaul-trace {} {}", mono_us(), what);
}

/// CLOCK_MONOTONIC in microseconds: the clock workloads and tools on the same host share.
pub fn mono_us() -> u64 {
    let mut ts = [0i64; 2];
    unsafe {
        let _ = raw(228 /* clock_gettime */, &[1, ts.as_mut_ptr() as u64]);
    }
    (ts[0] as u64) * 1_000_000 + (ts[1] as u64) / 1000
}
