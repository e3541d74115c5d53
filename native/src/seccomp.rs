//! Seccomp: strict mode and classic-BPF filter chains, per thread.
//!
//! Dump reads each thread's chain with PTRACE_SECCOMP_GET_FILTER (newest
//! first, index 0) and each filter's flags with PTRACE_GET_SECCOMP_METADATA.
//! Restore installs the chain oldest first in the thread itself with an
//! injected seccomp(2), before its credentials are restored (installing
//! needs no_new_privs or CAP_SYS_ADMIN, which the stub still has then).
//!
//! Both ends rely on PTRACE_O_SUSPEND_SECCOMP: our injected syscalls in a
//! filtered thread must not be filtered (a filter may forbid prctl, mmap,
//! or kill on anything unexpected), and a restored thread must not be held
//! to its filters before it is let go. It is set only once a thread is
//! stopped (a seized thread still running its own code must meet its
//! filters), and ends at detach.

use crate::inject::Injector;
use crate::json::Json;
use crate::ptrace;
use crate::sys::{self, nr, Error, Pid, Result};

const PTRACE_SECCOMP_GET_FILTER: u64 = 0x420c;
const PTRACE_GET_SECCOMP_METADATA: u64 = 0x420d;
pub const O_SUSPEND_SECCOMP: u64 = 1 << 21;

const SECCOMP_SET_MODE_STRICT: u64 = 0;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
/// The flags PTRACE_GET_SECCOMP_METADATA can report, the ones restore passes on.
const SECCOMP_FILTER_FLAG_LOG: u64 = 2;
const BPF_MAXINSNS: usize = 4096;
const INSN_SIZE: usize = 8;

/// Seize options to add for a thread whose syscalls we inject: suspend its
/// seccomp filters while we trace it. None when this kernel or this process
/// cannot (the option needs CAP_SYS_ADMIN and an unfiltered tracer).
pub fn suspend_option() -> u64 {
    static OPT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *OPT.get_or_init(|| {
        let own = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let filtered = own.lines().any(|l| l.starts_with("Seccomp:") && l.split_whitespace().nth(1) != Some("0"));
        if filtered {
            0
        } else {
            O_SUSPEND_SECCOMP
        }
    })
}

/// Seccomp mode of a thread as /proc shows it: 0 none, 1 strict, 2 filters.
/// The Seccomp field of a thread's /proc status.
pub fn mode_of_status(status: &str) -> u32 {
    crate::proc::field_of_status(status, "Seccomp").and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn filter_len(tid: Pid, index: u64) -> std::result::Result<usize, i32> {
    unsafe { sys::raw(nr::PTRACE, &[PTRACE_SECCOMP_GET_FILTER, tid as u64, index, 0]) }.map(|n| n as usize)
}

fn filter_flags(tid: Pid, index: u64) -> Result<u64> {
    let mut md = [index, 0u64]; // struct seccomp_metadata { filter_off, flags }
    sys::call("ptrace(GET_SECCOMP_METADATA)", nr::PTRACE, &[PTRACE_GET_SECCOMP_METADATA, tid as u64, 16, md.as_mut_ptr() as u64])?;
    Ok(md[1] & SECCOMP_FILTER_FLAG_LOG)
}

/// The thread's seccomp state (the thread is frozen by us), or None.
/// `mode`: from its status (mode_of_status).
pub fn dump(tid: Pid, mode: u32) -> Result<Option<Json>> {
    match mode {
        0 => Ok(None),
        1 => Ok(Some(Json::obj().with("mode", 1))),
        2 => {
            let mut filters = Vec::new();
            for index in 0.. {
                let n = match filter_len(tid, index) {
                    Ok(n) => n,
                    Err(2) => break, // ENOENT: past the oldest
                    Err(e) => return Err(Error::sys(format!("reading seccomp filter {} of thread {}", index, tid), e)),
                };
                if n == 0 || n > BPF_MAXINSNS {
                    return Err(Error::new("EUNSUPPORTED", format!("thread {}: seccomp filter {} has {} instructions", tid, index, n)));
                }
                let mut prog = vec![0u8; n * INSN_SIZE];
                let got = unsafe { sys::raw(nr::PTRACE, &[PTRACE_SECCOMP_GET_FILTER, tid as u64, index, prog.as_mut_ptr() as u64]) }
                    .map_err(|e| Error::sys(format!("reading seccomp filter {} of thread {}", index, tid), e))?;
                if got as usize != n {
                    return Err(Error::new("EIO", format!("thread {}: seccomp filter {} changed while read", tid, index)));
                }
                let flags = filter_flags(tid, index)?;
                filters.push(Json::obj().with("prog", crate::base64::encode(&prog)).with("flags", flags));
            }
            filters.reverse(); // oldest first, the order of installation
            Ok(Some(Json::obj().with("mode", 2).with("filters", filters)))
        }
        m => Err(Error::new("EUNSUPPORTED", format!("thread {}: unknown seccomp mode {}", tid, m))),
    }
}

/// Install the thread's seccomp state, in the thread itself (`inj` runs in
/// it; `tid` is traced with `options`). Suspended until the thread is let go.
pub fn restore(t: &Json, inj: &mut Injector, tid: Pid, options: u64) -> Result<()> {
    let Some(s) = t.get("seccomp") else { return Ok(()) };
    let mode = s.u64_of("mode").unwrap_or(0);
    if mode == 0 {
        return Ok(());
    }
    if suspend_option() == 0 {
        return Err(Error::new("EPERM", format!("thread {}: cannot restore seccomp state from a process that is itself under seccomp", tid)));
    }
    ptrace::set_options(tid, options | O_SUSPEND_SECCOMP)?;
    match mode {
        1 => {
            inj.call("seccomp(SET_MODE_STRICT)", nr::SECCOMP, &[SECCOMP_SET_MODE_STRICT, 0, 0])?;
        }
        2 => {
            for (i, f) in s.arr_of("filters").iter().enumerate() {
                let prog = f.str_of("prog").and_then(crate::base64::decode).unwrap_or_default();
                let n = prog.len() / INSN_SIZE;
                if n == 0 || n > BPF_MAXINSNS || prog.len() % INSN_SIZE != 0 {
                    return Err(Error::new("EIMAGE", format!("thread {}: seccomp filter {} is not a BPF program", tid, i)));
                }
                // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
                let code = inj.put(&prog, 64)?;
                let mut fprog = [0u8; 16];
                fprog[..2].copy_from_slice(&(n as u16).to_le_bytes());
                fprog[8..].copy_from_slice(&code.to_le_bytes());
                let at = inj.put(&fprog, 0)?;
                let flags = f.u64_of("flags").unwrap_or(0) & SECCOMP_FILTER_FLAG_LOG;
                inj.call("seccomp(SET_MODE_FILTER)", nr::SECCOMP, &[SECCOMP_SET_MODE_FILTER, flags, at])
                    .map_err(|e| e.context(format!("thread {}: installing seccomp filter {}", tid, i)))?;
            }
        }
        m => return Err(Error::new("EIMAGE", format!("thread {}: unknown seccomp mode {}", tid, m))),
    }
    Ok(())
}
