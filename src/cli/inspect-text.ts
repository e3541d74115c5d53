// Human-readable rendering of a state document for `phaul inspect`.

import type { OpenFile, ProcessState, StateDocument, Vma } from "../types.js";
import { countState, PAGE_SIZE } from "../summary.js";
import { bytes, hex, plural, table } from "./format.js";

const SIGNAL_NAMES = [
  "", "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE",
  "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ",
  "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];
const ITIMER_NAMES = ["REAL", "VIRTUAL", "PROF"];
const RLIMIT_NAMES = [
  "CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK", "AS", "LOCKS",
  "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME",
];
const RLIM_INFINITY = "18446744073709551615";

function signalName(n: number): string {
  if (n < SIGNAL_NAMES.length && SIGNAL_NAMES[n]) return `SIG${SIGNAL_NAMES[n]}`;
  return n >= 34 ? `SIGRTMIN+${n - 34}` : `signal ${n}`;
}

function signalSet(mask: string | number): string {
  let bits = BigInt(mask);
  if (bits === 0n) return "none";
  const names: string[] = [];
  for (let n = 1; bits > 0n; n++, bits >>= 1n) if (bits & 1n) names.push(signalName(n));
  return names.join(" ");
}

function perms(v: Vma): string {
  return (v.prot & 1 ? "r" : "-") + (v.prot & 2 ? "w" : "-") + (v.prot & 4 ? "x" : "-") + (v.shared ? "s" : "p");
}

// Pages stored for one VMA, from the (sorted or not) page entries.
function storedPages(p: ProcessState, v: Vma): number {
  const start = BigInt(v.start);
  const end = BigInt(v.end);
  let n = 0n;
  for (const e of p.pages?.entries ?? []) {
    const a = BigInt(e.vaddr);
    const b = a + BigInt(e.nr_pages) * BigInt(PAGE_SIZE);
    const lo = a > start ? a : start;
    const hi = b < end ? b : end;
    if (hi > lo) n += (hi - lo) / BigInt(PAGE_SIZE);
  }
  return Number(n);
}

function vmaName(v: Vma): string {
  const name = v.path ?? (v.kind === "anon" ? "" : `[${v.kind}]`);
  if (!v.uffd) return name;
  const modes = ["missing", "wp", "minor"].filter((_, i) => v.uffd!.modes & (1 << i));
  return `${name}${name ? " " : ""}(userfaultfd file #${v.uffd.file_id}: ${modes.join(", ")})`;
}

function fileText(f: OpenFile | undefined, fileId: string | number): string {
  if (!f) return `file #${fileId} (missing from files)`;
  const access = ["read", "write", "read/write", "?"][f.flags & 3];
  if (f.kind === "pipe") return `pipe:[${f.pipe_id}] ${(f.flags & 3) === 0 ? "read end" : "write end"}`;
  const where = f.path ?? (f.sock ? `socket:[${f.sock.ino}]` : `(${f.kind})`);
  const extra = [f.kind, access, f.pos !== undefined ? `pos ${f.pos}` : "", f.rdev !== undefined ? `rdev ${hex(f.rdev)}` : ""];
  return `${where} (${extra.filter(Boolean).join(", ")})`;
}

function processText(p: ProcessState, files: Map<string, OpenFile>): string[] {
  const out: string[] = [];
  out.push(`process ${p.pid} (${p.comm})  ppid ${p.ppid}  pgid ${p.pgid}  sid ${p.sid}`);
  // A zombie is only its pid and exit status: nothing else was dumped.
  if (p.zombie) return [...out, `  zombie, exit status ${p.exit_code ?? "?"}`];
  out.push(`  exe   ${p.exe?.path ?? "-"}`);
  out.push(`  cwd   ${p.cwd}   root ${p.root}   umask ${p.umask.toString(8).padStart(4, "0")}`);

  out.push(`  ${plural(p.threads.length, "thread")}:`);
  out.push(...table([
    ["tid", "rip", "rsp", "restart", "blocked signals"],
    ...p.threads.map((t) => [String(t.tid), hex(t.regs.rip), hex(t.regs.rsp), t.restart, signalSet(t.sigmask)]),
  ], "    "));

  const totalPages = p.pages?.entries.reduce((s, e) => s + e.nr_pages, 0) ?? 0;
  out.push(`  ${plural(p.vmas.length, "mapping")}, ${plural(totalPages, "page")} stored (${bytes(totalPages * PAGE_SIZE)}) in ${p.pages?.file ?? "-"}:`);
  out.push(...table([
    ["start-end", "perm", "offset", "pages", "name"],
    ...p.vmas.map((v) => [
      `${BigInt(v.start).toString(16).padStart(12, "0")}-${BigInt(v.end).toString(16).padStart(12, "0")}`,
      perms(v),
      BigInt(v.pgoff).toString(16).padStart(8, "0"),
      String(storedPages(p, v)),
      vmaName(v),
    ]),
  ], "    "));

  out.push(`  ${plural(p.fds.length, "descriptor")}:`);
  out.push(...table(p.fds.map((d) => [
    String(d.fd), "->", fileText(files.get(String(d.file_id)), d.file_id), d.cloexec ? "cloexec" : "",
  ]), "    "));

  const sig: string[] = [];
  for (const a of p.sigactions) {
    const h = String(a.handler) === "1" ? "ignored" : `handler ${hex(a.handler)}`;
    sig.push(`${signalName(a.sig)}: ${h}, flags ${hex(a.flags)}, mask ${signalSet(a.mask)}`);
  }
  if (p.shared_pending.length) sig.push(`${plural(p.shared_pending.length, "signal")} pending for the process`);
  const threadPending = p.threads.reduce((s, t) => s + (t.pending?.length ?? 0), 0);
  if (threadPending) sig.push(`${plural(threadPending, "signal")} pending for threads`);
  for (const t of p.itimers) {
    sig.push(`ITIMER_${ITIMER_NAMES[t.which] ?? t.which}: next in ${t.value_us} us, every ${t.interval_us} us`);
  }
  out.push(`  signals and timers:${sig.length ? "" : " defaults"}`, ...sig.map((s) => `    ${s}`));

  const limits = p.rlimits
    .filter((r) => String(r.cur) !== RLIM_INFINITY || String(r.max) !== RLIM_INFINITY)
    .map((r) => {
      const show = (v: string | number) => (String(v) === RLIM_INFINITY ? "unlimited" : String(v));
      return `${RLIMIT_NAMES[r.resource] ?? r.resource}=${show(r.cur)}/${show(r.max)}`;
    });
  out.push(`  limits: ${limits.length ? limits.join(" ") : "all unlimited"}`);
  return out;
}

export function inspectText(dir: string, s: StateDocument): string {
  const c = countState(s);
  const created = typeof s.created_ns === "number" || /^\d+$/.test(String(s.created_ns))
    ? new Date(Number(BigInt(s.created_ns) / 1000000n)).toISOString()
    : String(s.created_ns);
  const out: string[] = [
    `dump ${dir}`,
    `  taken ${created} on ${s.arch} kernel ${s.kernel}, xcr0 ${s.xcr0}, xsave ${s.xsave_size} bytes`,
    `  root pid ${s.root_pid}: ${plural(c.processes, "process", "processes")}, ${plural(c.threads, "thread")}, ` +
      `${plural(c.pages, "page")} (${bytes(c.bytes)}), ${plural(c.files, "open file")}, ${plural(s.pipes.length, "pipe")}`,
    "",
  ];
  const files = new Map(s.files.map((f) => [String(f.id), f]));
  for (const p of s.processes) out.push(...processText(p, files), "");
  if (s.pipes.length) {
    out.push("pipes:");
    out.push(...table(s.pipes.map((p) => [
      `pipe:[${p.pipe_id}]`, `capacity ${bytes(p.size)}`, `${Buffer.from(p.data, "base64").length} bytes unread`,
    ])));
  }
  const carrying = s.files.filter((f) => f.sock?.in_flight?.length);
  if (carrying.length) {
    out.push("", "in flight (SCM_RIGHTS):");
    for (const f of carrying) {
      for (const m of f.sock?.in_flight ?? []) {
        out.push(`  socket:[${f.sock?.ino}] message ${m.msg + 1} of ${f.sock?.queue?.length ?? "?"}: ` +
          m.files.map((id) => fileText(files.get(String(id)), id)).join(", "));
      }
    }
  }
  return out.join("\n").trimEnd() + "\n";
}
