//! Running system calls inside a stopped thread of another process.
//!
//! We point the thread at an existing `syscall` instruction (found in its
//! [vdso], so no code of the target is modified), load the registers, and
//! step it through the syscall entry and exit stops. All signals are blocked
//! meanwhile so nothing is delivered behind our back; the caller's registers
//! and mask are put back by `finish`.

use crate::arch::{Regs, SYSCALL_INSN};
use crate::proc;
use crate::ptrace;
use crate::sys::{nr, Error, Pid, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

pub struct Injector {
    pub pid: Pid,
    pub tid: Pid,
    insn: u64,
    saved: Regs,
    saved_mask: u64,
    mem: File,
    scratch: u64,
    scratch_len: u64,
    scratch_owned: bool,
    scratch_hint: (u64, u64),
    /// Where batches run (crate::batch): a code page, then per-thread slots.
    batch_base: u64,
    batch_len: u64,
    /// Threads or processes created by injected clone/clone3 calls.
    pub new_children: Vec<Pid>,
}

/// Find a `syscall` instruction in an executable mapping of `pid`, preferring
/// the [vdso] (identical on every process of this kernel).
pub fn find_syscall_insn(pid: Pid) -> Result<u64> {
    find_syscall_insn_in(pid, &proc::maps(pid)?)
}

/// The same, given the process's maps read already.
pub fn find_syscall_insn_in(pid: Pid, maps: &[proc::MapLine]) -> Result<u64> {
    let mem = open_mem(pid, false)?;
    let mut candidates: Vec<&proc::MapLine> = maps.iter().filter(|m| m.path == "[vdso]").collect();
    candidates.extend(maps.iter().filter(|m| m.prot & 4 != 0 && m.path != "[vdso]" && m.path != "[vsyscall]"));
    for m in candidates {
        let len = (m.end - m.start).min(1 << 20) as usize;
        let mut buf = vec![0u8; len];
        if mem.read_at(&mut buf, m.start).is_err() {
            continue;
        }
        if let Some(i) = buf.windows(2).position(|w| w == SYSCALL_INSN) {
            return Ok(m.start + i as u64);
        }
    }
    Err(Error::new("ENOSYSCALL", format!("no syscall instruction found in process {}", pid)))
}

pub fn open_mem(pid: Pid, write: bool) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(format!("/proc/{}/mem", pid))
        .map_err(|e| Error::from(e).context(format!("opening /proc/{}/mem", pid)))
}

impl Injector {
    /// `resume_regs`: the registers the thread must have when it runs on.
    pub fn new(pid: Pid, tid: Pid, insn: u64, resume_regs: Regs, mask: u64) -> Result<Injector> {
        ptrace::set_sigmask(tid, u64::MAX)?;
        Ok(Injector {
            pid,
            tid,
            insn,
            saved: resume_regs,
            saved_mask: mask,
            mem: open_mem(pid, true)?,
            scratch: 0,
            scratch_len: 0,
            scratch_owned: true,
            scratch_hint: (0, 0),
            batch_base: 0,
            batch_len: 0,
            new_children: Vec::new(),
        })
    }

    /// Run one syscall; returns the kernel's raw result (negative errno on failure).
    pub fn raw(&mut self, nr: i64, args: &[u64]) -> Result<i64> {
        let mut r = self.saved;
        r.set_syscall(self.insn, nr, args);
        ptrace::set_regs(self.tid, &r)?;
        let mut entered = false;
        let mut spins = 0;
        if debug() {
            eprintln!("phaul: inject {} nr={} args={:x?} at {:#x}", self.tid, nr, args, self.insn);
        }
        loop {
            spins += 1;
            if spins > 1000 {
                return Err(Error::new("EINJECT", format!("injected syscall {} in thread {} does not complete", nr, self.tid)));
            }
            ptrace::syscall_step(self.tid, 0)?;
            let st = ptrace::wait(self.tid)?;
            if !ptrace::stopped(st) {
                return Err(Error::new("ESRCH", format!("thread {} died during an injected syscall {}", self.tid, nr)));
            }
            let sig = ptrace::stop_sig(st);
            let ev = ptrace::event(st);
            if ev == ptrace::EVENT_FORK || ev == ptrace::EVENT_CLONE {
                let child = ptrace::event_msg(self.tid)? as Pid;
                self.new_children.push(child);
                continue;
            }
            if sig == (5 | 0x80) {
                if entered {
                    break;
                }
                entered = true;
                continue;
            }
            if sig != 5 && ev == 0 && sig != 19 && sig != 20 && sig != 21 && sig != 22 {
                // A fault at our instruction or a signal raised by the call itself.
                let r = ptrace::get_regs(self.tid)?;
                return Err(Error::new(
                    "EINJECT",
                    format!("injected syscall {} in thread {} stopped with signal {} at {:#x}", nr, self.tid, sig, r.rip),
                ));
            }
            // A group-stop or another event: keep stepping toward the exit stop.
        }
        let out = ptrace::get_regs(self.tid)?;
        Ok(out.syscall_result())
    }

    /// Run one syscall, turning a negative result into an error.
    pub fn call(&mut self, what: &str, nr: i64, args: &[u64]) -> Result<u64> {
        let r = self.raw(nr, args)?;
        if r < 0 && r > -4096 {
            return Err(Error::sys(format!("{} in process {}", what, self.pid), (-r) as i32));
        }
        Ok(r as u64)
    }

    pub fn write_mem(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.mem.write_all_at(data, addr).map_err(|e| Error::from(e).context(format!("writing memory of {} at {:#x}", self.pid, addr)))
    }

    pub fn read_mem(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        self.mem.read_exact_at(&mut b, addr).map_err(|e| Error::from(e).context(format!("reading memory of {} at {:#x}", self.pid, addr)))?;
        Ok(b)
    }

    /// A scratch area in the target for syscall arguments, mapped on first use.
    pub fn scratch(&mut self, len: u64) -> Result<u64> {
        if self.scratch_len < len {
            if self.scratch != 0 {
                self.call("munmap", nr::MUNMAP, &[self.scratch, self.scratch_len])?;
            }
            let l = (len + 0xffff) & !0xffff;
            let (hint, extra) = self.scratch_hint;
            self.scratch = self.call("mmap(scratch)", nr::MMAP, &[hint, l, 3, 0x22 | extra, u64::MAX, 0])?;
            self.scratch_len = l;
        }
        Ok(self.scratch)
    }

    /// Where to put the scratch area (a stub being rebuilt must keep it out
    /// of the way of the target's own mappings).
    pub fn set_scratch_hint(&mut self, addr: u64, flags: u64) {
        self.scratch_hint = (addr, flags);
    }

    /// Use another injector's scratch area (same process), without owning it.
    pub fn share_scratch(&mut self, other: &Injector) {
        self.scratch = other.scratch;
        self.scratch_len = other.scratch_len;
        self.batch_base = other.batch_base;
        self.batch_len = other.batch_len;
        self.scratch_owned = false;
    }

    /// The batch area, at least `len` bytes (code page included), mapped on
    /// first use: one read-write-execute mapping, or, for a process that
    /// denies itself write+execute memory (PR_SET_MDWE), an executable one
    /// whose slots are then made writable (MDWE allows both steps). The code
    /// is written through /proc/PID/mem, which needs no write permission.
    pub fn batch_area(&mut self, len: u64, code: &[u8]) -> Result<u64> {
        if self.batch_len >= len {
            return Ok(self.batch_base);
        }
        if !self.scratch_owned {
            return Err(Error::new("EINJECT", format!("thread {}: the shared batch area is too small ({} < {} bytes)", self.tid, self.batch_len, len)));
        }
        self.map_batch_area(0, 0, len, code)
    }

    /// A batch area at `addr` exactly, in place of any earlier one: in a
    /// target whose layout is being built, an area the kernel chose could
    /// lie where one of the target's is about to be mapped.
    pub fn batch_area_at(&mut self, addr: u64, len: u64, code: &[u8]) -> Result<u64> {
        if !self.scratch_owned {
            return Err(Error::new("EINJECT", format!("thread {}: cannot move a shared batch area", self.tid)));
        }
        self.map_batch_area(addr, crate::memory::MAP_FIXED_NOREPLACE, len, code)
    }

    /// Unmap the batch area; the next batch maps one again.
    pub fn drop_batch_area(&mut self) -> Result<()> {
        if self.batch_base != 0 && self.scratch_owned {
            let (a, l) = (self.batch_base, self.batch_len);
            self.batch_base = 0;
            self.batch_len = 0;
            self.call("munmap(batch)", nr::MUNMAP, &[a, l])?;
        }
        Ok(())
    }

    fn map_batch_area(&mut self, addr: u64, flags: u64, len: u64, code: &[u8]) -> Result<u64> {
        self.drop_batch_area()?;
        let l = (len + 0xffff) & !0xffff;
        let flags = 0x22 | flags;
        let base = match self.raw(nr::MMAP, &[addr, l, 7, flags, u64::MAX, 0])? {
            r if r >= 0 => r as u64,
            _ => {
                let base = self.call("mmap(batch)", nr::MMAP, &[addr, l, 5, flags, u64::MAX, 0])?;
                self.batch_base = base;
                self.batch_len = l;
                self.call("mprotect(batch)", nr::MPROTECT, &[base + 4096, l - 4096, 3])?;
                base
            }
        };
        self.batch_base = base;
        self.batch_len = l;
        self.write_mem(base, code)?;
        Ok(base)
    }

    pub fn batch_range(&self) -> Option<(u64, u64)> {
        (self.batch_base != 0).then(|| (self.batch_base, self.batch_base + self.batch_len))
    }

    /// Mappings phaul made in the target, which are not the target's own.
    pub fn own_ranges(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.scratch_range().into_iter().collect();
        if let Some(r) = self.batch_range() {
            v.push(r);
        }
        v
    }

    /// The syscall instruction moved (the stub's vDSO was relocated).
    pub fn shift_insn(&mut self, delta: u64) {
        self.insn = self.insn.wrapping_add(delta);
    }
    pub fn insn(&self) -> u64 {
        self.insn
    }

    pub fn scratch_range(&self) -> Option<(u64, u64)> {
        (self.scratch != 0).then(|| (self.scratch, self.scratch + self.scratch_len))
    }

    /// Copy bytes into the scratch area and return their address.
    pub fn put(&mut self, data: &[u8], at: u64) -> Result<u64> {
        let base = self.scratch(at + data.len() as u64 + 1)?;
        self.write_mem(base + at, data)?;
        Ok(base + at)
    }

    pub fn put_str(&mut self, s: &str, at: u64) -> Result<u64> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(&b, at)
    }

    pub fn saved_regs(&self) -> &Regs {
        &self.saved
    }
    pub fn set_saved_regs(&mut self, r: Regs) {
        self.saved = r;
    }

    /// Unmap the scratch area and give the thread back its registers and mask.
    pub fn finish(mut self) -> Result<()> {
        if self.batch_base != 0 && self.scratch_owned {
            let (a, l) = (self.batch_base, self.batch_len);
            self.batch_base = 0;
            self.call("munmap(batch)", nr::MUNMAP, &[a, l])?;
        }
        if self.scratch != 0 && self.scratch_owned {
            let (a, l) = (self.scratch, self.scratch_len);
            self.scratch = 0;
            self.call("munmap(scratch)", nr::MUNMAP, &[a, l])?;
        }
        ptrace::set_regs(self.tid, &self.saved)?;
        ptrace::set_sigmask(self.tid, self.saved_mask)
    }
}


pub fn debug() -> bool {
    static D: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *D.get_or_init(|| std::env::var_os("PHAUL_DEBUG").is_some())
}
