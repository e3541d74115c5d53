// Types of the state document, the contract with native/ (docs/state-json.md).
// Field names are snake_case on purpose: they are the JSON and protobuf names.

/** A 64-bit value: a number when ≤ 2^53, a decimal string above. */
export type U64 = number | string;

export interface FileIdentity {
  dev: U64;
  ino: U64;
  size: U64;
  mtime_ns: U64;
}

export interface ExeInfo extends FileIdentity {
  path: string;
}

export interface Rlimit {
  resource: number;
  cur: U64;
  max: U64;
}

export interface MmInfo {
  start_code: U64;
  end_code: U64;
  start_data: U64;
  end_data: U64;
  start_brk: U64;
  brk: U64;
  start_stack: U64;
  arg_start: U64;
  arg_end: U64;
  env_start: U64;
  env_end: U64;
  /** u64 pairs (type, value), as in /proc/PID/auxv. */
  auxv: U64[];
}

export type VmaKind =
  | "anon" | "file" | "heap" | "stack" | "vdso" | "vvar" | "vvar_vclock" | "shmem" | "vsyscall" | "aio";

export interface Vma {
  start: U64;
  end: U64;
  prot: number;
  shared: boolean;
  kind: VmaKind | string;
  pgoff: U64;
  path?: string;
  file?: FileIdentity;
  shmem_id?: U64;
  growsdown: boolean;
  flags?: string;
  /** Registered with one of the process's userfaultfds (docs/event-fds.md). */
  uffd?: UffdArea;
}

export interface UffdArea {
  /** The userfaultfd: an OpenFile of kind "userfaultfd". */
  file_id: U64;
  /** UFFDIO_REGISTER_MODE_MISSING 1 | WP 2 | MINOR 4. */
  modes: number;
  /** WP: pages write-protected at the dump. */
  wp?: { start: U64; end: U64 }[];
  /** MINOR: pages mapped in the area at the dump. */
  mapped?: { start: U64; end: U64 }[];
}

/** A kernel AIO context (io_setup): its ring, mapped at the context id. */
export interface AioRing {
  start: U64;
  end: U64;
  prot: number;
  /** Ring size in events, head and tail. */
  nr: number;
  head: number;
  tail: number;
  /** struct io_event[] from head to tail (completed, not yet reaped), base64. */
  events?: string;
}

export interface PageEntry {
  vaddr: U64;
  nr_pages: number;
  offset: U64;
}

export interface Pages {
  file: string;
  entries: PageEntry[];
}

/** The 27 fields of struct user_regs_struct (x86_64). */
export interface Regs {
  r15: U64; r14: U64; r13: U64; r12: U64; rbp: U64; rbx: U64; r11: U64; r10: U64;
  r9: U64; r8: U64; rax: U64; rcx: U64; rdx: U64; rsi: U64; rdi: U64; orig_rax: U64;
  rip: U64; cs: U64; eflags: U64; rsp: U64; ss: U64; fs_base: U64; gs_base: U64;
  ds: U64; es: U64; fs: U64; gs: U64;
}

export type RestartKind = "none" | "again" | "block";

export interface Sigaltstack {
  sp: U64;
  flags: number;
  size: U64;
}

export interface Rseq {
  addr: U64;
  len: number;
  sig: number;
}

export interface RobustList {
  head: U64;
  len: U64;
}

export interface SeccompFilter {
  /** Classic BPF program (struct sock_filter[]), base64. */
  prog: string;
  /** SECCOMP_FILTER_FLAG_LOG (2) or 0. */
  flags: number;
}

/** A thread's seccomp state: strict mode (1) or its filter chain, oldest first (2). */
export interface Seccomp {
  mode: number;
  filters?: SeccompFilter[];
}

export interface ThreadState {
  tid: number;
  regs: Regs;
  restart: RestartKind | string;
  /** NT_X86_XSTATE regset, base64. */
  xsave: string;
  /** Blocked signals as a decimal string: bit (n-1) for signal n. */
  sigmask: U64;
  /** siginfo records (128 bytes each), base64. */
  /** Omitted when none. */
  pending?: string[];
  sigaltstack?: Sigaltstack;
  rseq?: Rseq;
  clear_child_tid: U64;
  robust_list?: RobustList;
  seccomp?: Seccomp;
  /** Only when they differ from the process's (a thread that changed its own with a raw syscall). */
  creds?: Record<string, unknown>;
  /** Thread name (/proc/PID/task/TID/comm). */
  comm?: string;
}

export interface Sigaction {
  sig: number;
  handler: U64;
  flags: U64;
  restorer: U64;
  mask: U64;
}

export interface Itimer {
  /** 0 ITIMER_REAL, 1 ITIMER_VIRTUAL, 2 ITIMER_PROF. */
  which: number;
  interval_us: U64;
  value_us: U64;
}

/** Signal-driven I/O of a descriptor with O_ASYNC (fcntl F_SETOWN_EX, F_SETSIG). */
export interface FileOwner {
  /** F_OWNER_TID 0, F_OWNER_PID 1, F_OWNER_PGRP 2 */
  type: number;
  /** In the tree's pid namespace; 0: none. */
  pid: number;
  /** 0: SIGIO */
  sig: number;
}

export interface FdEntry {
  fd: number;
  file_id: U64;
  cloexec: boolean;
  owner?: FileOwner;
}

export interface ProcessState {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  /** A zombie keeps only pid, parent, group, session and exit status; its lists are empty or absent. */
  zombie?: boolean;
  exit_code?: number;
  /** Objects shared with an earlier process of the tree by clone flags: that process's pid. */
  shares?: { files?: number; fs?: number };
  comm: string;
  exe?: ExeInfo;
  cwd: string;
  root: string;
  umask: number;
  rlimits: Rlimit[];
  mm: MmInfo;
  vmas: Vma[];
  aio_rings?: AioRing[];
  pages: Pages;
  threads: ThreadState[];
  sigactions: Sigaction[];
  shared_pending: string[];
  itimers: Itimer[];
  fds: FdEntry[];
}

export type FileKind = "reg" | "dir" | "chr" | "blk" | "pipe" | "fifo" | "sock" | "unknown";

export interface OpenFile {
  id: U64;
  kind: FileKind | string;
  path?: string;
  flags: number;
  pos?: U64;
  stat?: FileIdentity;
  rdev?: U64;
  pipe_id?: U64;
  /** A pipe end whose other end is outside the tree; restored as /dev/null, or reopened through `reopen` on the same host. */
  external?: boolean;
  /** External pipe end: the process and fd it can be reopened from on the host with this boot id. */
  reopen?: { pid: number; fd: number; boot_id: string };
  /** reg or dir under /proc/PID of a process of the tree: opened again under the restored process. */
  proc_pid?: number;
  /** Kinds pty_master and pty_slave: entries of one pseudo-terminal pair share it. */
  pty_id?: U64;
  /** pty_master: the pair's state (docs/state-json.md). */
  pty?: PtyState;
  /** Found only in flight in a unix socket's queue (docs/sockets.md). */
  in_flight?: boolean;
  /** fifo: its path was removed while open; restored as a new FIFO without a name. */
  unlinked?: boolean;
  /** Kinds sock_tcp, sock_udp, sock_unix (docs/sockets.md); only the fields named here are typed. */
  sock?: SocketState;
}

export interface SocketState {
  family: number;
  type: number;
  ino: U64;
  state: string;
  /** unix: unread data, base64, one entry per datagram (stream: per run of plain bytes, per message with descriptors). */
  queue?: string[];
  /** unix: the descriptors in flight with queue[msg], as file ids. */
  in_flight?: { msg: number; files: U64[] }[];
  /** unix, relative name: the directory its file was in at the dump. */
  bind_dir?: string;
  /** unix, path name: no file led to the socket at the dump; restored with the name and no file. */
  unlinked?: boolean;
  /** unix, bound datagram socket: the sender address (base64 sun_path) of queue[msg]. */
  senders?: { msg: number; path: string; held_by?: U64 }[];
  [field: string]: unknown;
}

export interface PtyState {
  /** N of /dev/pts/N at the dump; the restored pair may get another one. */
  index: number;
  termios: { iflag: number; oflag: number; cflag: number; lflag: number; line: number; cc: number[]; ispeed: number; ospeed: number };
  winsize: { row: number; col: number; xpixel: number; ypixel: number };
  locked: boolean;
  packet: boolean;
  hup: boolean;
  /** Session whose controlling terminal the slave is. */
  session?: number;
  /** Foreground process group of that terminal. */
  fg_pgrp?: number;
}

export interface PipeState {
  pipe_id: U64;
  /** Unread bytes, base64. */
  data: string;
  size: number;
}

export interface StateDocument {
  format: number;
  arch: string;
  kernel: string;
  /** Hex string, e.g. "0xe7". */
  xcr0: string;
  xsave_size: number;
  root_pid: number;
  created_ns: U64;
  /** How long freezing the tree took, in microseconds. */
  freeze_us?: U64;
  /** What the dump could not carry over exactly, one sentence each. */
  warnings?: string[];
  processes: ProcessState[];
  files: OpenFile[];
  pipes: PipeState[];
}

/** The state format version this build reads and writes. */
export const STATE_FORMAT = 1;

// Results of the library API.

export interface DumpSummary {
  dir: string;
  root_pid: number;
  processes: number;
  threads: number;
  pages: number;
  bytes: number;
  vmas: number;
  files: number;
  /** Wall time from the freeze request to images written, in ms. */
  frozen_ms: number;
  /** What happened to the source tree afterwards. */
  action: "kill" | "resume";
  images: string[];
  /** Warnings from the engine, also kept in the inventory image. */
  warnings: string[];
}

export interface RestoreResult {
  /** The restored root's pid, as the restored processes see it. */
  pid: number;
  /** The same process as this host sees it (differs only with pidNs). */
  hostPid: number;
}

export interface Feature {
  ok: boolean;
  detail: string;
  /** False for features that only speed things up. */
  required: boolean;
}

export interface CheckResult {
  /** Every required feature is available. */
  ok: boolean;
  features: Record<string, Feature>;
}
