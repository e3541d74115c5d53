// What each engine feature means to a user. The engine reports names with
// ok/detail; the explanations live here so they can be reworded freely.

export interface FeatureInfo {
  title: string;
  /** Which operations need it, for the check table. */
  neededFor: string;
  meaning: string;
  /** Optional features only speed things up or widen support. */
  optional?: boolean;
}

export const FEATURES: Record<string, FeatureInfo> = {
  ptrace: {
    title: "ptrace seize/interrupt",
    neededFor: "dump, restore, migrate",
    meaning: "freezes threads and reads their registers; without it nothing works",
  },
  process_vm_readv: {
    title: "process_vm_readv",
    neededFor: "dump, migrate",
    meaning: "fast copy of another process's memory (falls back to /proc/PID/mem)",
  },
  proc_mem: {
    title: "/proc/PID/mem",
    neededFor: "dump, restore",
    meaning: "reads and writes memory of stopped processes, read-only pages included",
  },
  pagemap: {
    title: "/proc/PID/pagemap",
    neededFor: "dump",
    meaning: "tells which pages are present, so untouched memory is not copied",
  },
  pagemap_scan: {
    title: "PAGEMAP_SCAN ioctl",
    neededFor: "migrate (optional)",
    optional: true,
    meaning: "finds written pages quickly for iterative pre-copy",
  },
  uffd_wp_async: {
    title: "userfaultfd write-protect (async)",
    neededFor: "migrate (optional)",
    optional: true,
    meaning: "tracks dirty pages without soft-dirty; without it pages are compared by hash",
  },
  soft_dirty: {
    title: "soft-dirty page bits",
    neededFor: "migrate (optional)",
    optional: true,
    meaning: "classic dirty-page tracking; uffd write-protect or hashing replace it",
  },
  pidfd_getfd: {
    title: "pidfd_open + pidfd_getfd",
    neededFor: "dump, migrate",
    meaning: "copies a descriptor out of the frozen process to read pipes and files",
  },
  clone3_set_tid: {
    title: "clone3 with set_tid",
    neededFor: "restore",
    meaning: "gives restored processes and threads their original pids",
  },
  set_mm_map: {
    title: "prctl(PR_SET_MM_MAP)",
    neededFor: "restore",
    meaning: "restores brk, stack, argv/env and auxv addresses of the address space",
  },
  vdso_remap: {
    title: "vDSO remap",
    neededFor: "restore",
    meaning: "puts [vdso] and [vvar] back at their old addresses, which glibc remembers",
  },
  xsave: {
    title: "XSAVE register state",
    neededFor: "dump, restore",
    meaning: "saves FPU/SSE/AVX registers; restore needs a CPU with the same XCR0 features",
  },
  rseq: {
    title: "rseq registration",
    neededFor: "dump, restore",
    meaning: "keeps glibc's restartable sequences registered in restored threads",
  },
  tcp_repair: {
    title: "TCP_REPAIR",
    neededFor: "migrate (optional)",
    optional: true,
    meaning: "moves established TCP connections without resetting them",
  },
  sys_resource: {
    title: "CAP_SYS_RESOURCE",
    neededFor: "restore (optional)",
    optional: true,
    meaning: "raises hard rlimits back to their dumped values; without it they stay as phaul's",
  },
  checkpoint_restore: {
    title: "CAP_CHECKPOINT_RESTORE",
    neededFor: "restore",
    meaning: "allows choosing pids with clone3 set_tid",
  },
  net_admin: {
    title: "CAP_NET_ADMIN",
    neededFor: "migrate of TCP connections (optional)",
    optional: true,
    meaning: "TCP_REPAIR and packet filtering during the switch-over need it",
  },
};

export function describeFeature(name: string): FeatureInfo {
  return FEATURES[name] ?? { title: name, neededFor: "-", meaning: "" };
}

/** Unknown features count as required: better a false alarm than a surprise. */
export function isRequired(name: string, reported?: { required?: unknown }): boolean {
  if (typeof reported?.required === "boolean") return reported.required;
  return FEATURES[name]?.optional !== true;
}
