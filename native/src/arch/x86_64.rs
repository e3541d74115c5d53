//! x86_64: `struct user_regs_struct`, the syscall ABI and restart codes.

use crate::json::Json;

pub const ARCH: &str = "x86_64";
/// NT_X86_XSTATE: the xsave area (x87, SSE, AVX, AVX-512...).
pub const NT_EXT_STATE: u32 = 0x202;
/// Bytes of the `syscall` instruction, searched for in the target's [vdso].
pub const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];
pub const NR_RESTART_SYSCALL: u64 = 219;
/// End of the default user address space (47 bits, 4-level paging); a
/// 5-level kernel maps above it only when asked to.
pub const USER_TOP: u64 = 0x7fff_ffff_f000;

/// Runs a table of system calls and stops on a breakpoint (SIGTRAP). rbx:
/// the first entry, r12: how many. An entry is eight u64: the number, six
/// arguments, and the slot the result is stored in. rbx and r12 survive
/// `syscall` (only rcx and r11 are clobbered).
///
/// ```text
/// 0:  test r12, r12         ; 4d 85 e4
///     je   done             ; 74 2a
///     mov  rax, [rbx]       ; 48 8b 03
///     mov  rdi, [rbx+8]     ; 48 8b 7b 08
///     mov  rsi, [rbx+16]    ; 48 8b 73 10
///     mov  rdx, [rbx+24]    ; 48 8b 53 18
///     mov  r10, [rbx+32]    ; 4c 8b 53 20
///     mov  r8,  [rbx+40]    ; 4c 8b 43 28
///     mov  r9,  [rbx+48]    ; 4c 8b 4b 30
///     syscall               ; 0f 05
///     mov  [rbx+56], rax    ; 48 89 43 38
///     add  rbx, 64          ; 48 83 c3 40
///     dec  r12              ; 49 ff cc
///     jmp  0                ; eb d1
/// done: int3                ; cc
/// ```
pub const BATCH_CODE: [u8; 48] = [
    0x4d, 0x85, 0xe4, 0x74, 0x2a, 0x48, 0x8b, 0x03, 0x48, 0x8b, 0x7b, 0x08, 0x48, 0x8b, 0x73, 0x10, 0x48, 0x8b, 0x53, 0x18, 0x4c, 0x8b, 0x53, 0x20,
    0x4c, 0x8b, 0x43, 0x28, 0x4c, 0x8b, 0x4b, 0x30, 0x0f, 0x05, 0x48, 0x89, 0x43, 0x38, 0x48, 0x83, 0xc3, 0x40, 0x49, 0xff, 0xcc, 0xeb, 0xd1, 0xcc,
];

/// Field names of `struct user_regs_struct`, in kernel order.
pub const REG_NAMES: [&str; 27] = [
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax",
    "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
];

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

impl Regs {
    fn as_array(&self) -> &[u64; 27] {
        // Safety: repr(C) struct of 27 u64.
        unsafe { &*(self as *const Regs as *const [u64; 27]) }
    }
    fn as_array_mut(&mut self) -> &mut [u64; 27] {
        unsafe { &mut *(self as *mut Regs as *mut [u64; 27]) }
    }

    pub fn to_json(&self) -> Json {
        let mut o = Json::obj();
        for (i, n) in REG_NAMES.iter().enumerate() {
            o.set(n, Json::U64(self.as_array()[i]));
        }
        o
    }

    pub fn from_json(j: &Json) -> Option<Regs> {
        let mut r = Regs::default();
        for (i, n) in REG_NAMES.iter().enumerate() {
            r.as_array_mut()[i] = j.u64_of(n)?;
        }
        Some(r)
    }

    pub fn pc(&self) -> u64 {
        self.rip
    }
    pub fn sp(&self) -> u64 {
        self.rsp
    }

    /// Point the thread at a batch runner (BATCH_CODE) over `count` table
    /// entries at `table`. orig_rax = -1: no syscall restart on the way in.
    pub fn set_batch(&mut self, code: u64, table: u64, count: u64) {
        self.rip = code;
        self.orig_rax = u64::MAX;
        self.rbx = table;
        self.r12 = count;
    }

    /// Prepare a syscall `nr(args)` to run at `insn` (a `syscall` instruction).
    /// orig_rax = -1 keeps the kernel's restart logic away from the injected call.
    pub fn set_syscall(&mut self, insn: u64, nr: i64, args: &[u64]) {
        self.rip = insn;
        self.rax = nr as u64;
        self.orig_rax = u64::MAX;
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        self.rdi = a(0);
        self.rsi = a(1);
        self.rdx = a(2);
        self.r10 = a(3);
        self.r8 = a(4);
        self.r9 = a(5);
    }

    pub fn syscall_result(&self) -> i64 {
        self.rax as i64
    }

    /// A thread stopped inside an interrupted syscall shows -ERESTART* in rax.
    /// Return how it must be resumed: `Restart::None` when it was not in one.
    pub fn restart_kind(&self) -> Restart {
        if (self.orig_rax as i64) < 0 {
            return Restart::None;
        }
        match self.rax as i64 {
            -512 | -513 | -514 => Restart::Again, // ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND
            -516 => Restart::Block,               // ERESTART_RESTARTBLOCK
            _ => Restart::None,
        }
    }

    /// Registers that re-enter the interrupted syscall when the thread resumes.
    /// `same_task`: the kernel still holds this task's restart block (resume in
    /// place), so a RESTARTBLOCK call continues through restart_syscall; a new
    /// task re-runs the original call with its original arguments instead.
    pub fn rewound(&self, same_task: bool) -> Regs {
        let mut r = *self;
        match self.restart_kind() {
            Restart::None => {}
            Restart::Again => {
                r.rip -= 2;
                r.rax = r.orig_rax;
            }
            Restart::Block => {
                r.rip -= 2;
                r.rax = if same_task { NR_RESTART_SYSCALL } else { r.orig_rax };
            }
        }
        r
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Restart {
    None,
    Again,
    Block,
}

/// (XCR0, xsave area size) of this CPU, from CPUID leaf 0xD. Two hosts can
/// exchange thread state only when the destination has every component.
pub fn xsave_info() -> (u64, u64) {
    // Safety: CPUID is available on every x86_64 CPU.
    let r = core::arch::x86_64::__cpuid_count(0xd, 0);
    let (lo, hi): (u32, u32);
    // Safety: xgetbv(0) is valid whenever the OS enabled XSAVE (always on Linux x86_64 here).
    unsafe { core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi) };
    ((hi as u64) << 32 | lo as u64, r.ebx as u64)
}

/// Machine code of a pid-namespace init: `for (;;) if (wait4(-1, 0, 0, 0) == -ECHILD) exit(0);`
pub const INIT_LOOP_CODE: &[u8] = &[
    0xb8, 0x3d, 0x00, 0x00, 0x00, // mov eax, 61 (wait4)
    0x48, 0xc7, 0xc7, 0xff, 0xff, 0xff, 0xff, // mov rdi, -1
    0x31, 0xf6, // xor esi, esi
    0x31, 0xd2, // xor edx, edx
    0x45, 0x31, 0xd2, // xor r10d, r10d
    0x0f, 0x05, // syscall
    0x48, 0x83, 0xf8, 0xf6, // cmp rax, -10 (ECHILD)
    0x75, 0xe5, // jne loop
    0xb8, 0x3c, 0x00, 0x00, 0x00, // mov eax, 60 (exit)
    0x31, 0xff, // xor edi, edi
    0x0f, 0x05, // syscall
];
