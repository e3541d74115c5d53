// Preflight: before anything is frozen (before source_start even arms dirty
// tracking), the source tells the destination what the tree needs — its pids,
// the CPU flags of this host, every file it maps or holds open with size,
// mtime and sha256 — and the destination answers what it has. The source
// turns both into a report: what would happen and, if it would fail, why.
// Only /proc is read on the source: the tree is never stopped.

import { createHash } from "node:crypto";
import { createReadStream, existsSync, readdirSync, readFileSync, readlinkSync, statSync } from "node:fs";
import { check } from "../src/check.js";
import type { Capabilities, FileFact, FileFinding, HelloMsg, PreflightMsg, PreflightResultMsg } from "./protocol.js";

/** Files larger than this are compared by size and mtime only. */
export const HASH_LIMIT_BYTES = 64 << 20;

export interface PreflightReport {
  ok: boolean;
  /** PhaulError code of a refusal: EPIDTAKEN when taken pids are the only problem, else EPREFLIGHT; undefined when ok. */
  code?: "EPREFLIGHT" | "EPIDTAKEN";
  pid: number;
  to: string;
  protocol: { source: number; destination: number };
  arch: { source: string; destination: string };
  kernel: { source: string; destination: string };
  cpu: {
    /** CPUID flags (/proc/cpuinfo) the source has and the destination lacks. */
    missing_flags: string[];
    xcr0: { source: string; destination: string; missing: string };
  };
  /** Engine features working here but not there. */
  missing_features: string[];
  /** Required engine features the destination lacks. */
  missing_required_features: string[];
  pids: { tree: number[]; taken: number[]; pid_ns: boolean; refused: boolean };
  files: { checked: number; hashed: number; written: number; problems: FileFinding[]; warnings: FileFinding[] };
  /** Reasons the migration would be refused (empty when ok). */
  problems: string[];
  warnings: string[];
  /** One sentence: what would happen. */
  verdict: string;
}

// ------------------------------------------------------------ source facts

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

/** The flags line of /proc/cpuinfo (first CPU), or PHAUL_FAKE_CPU_FLAGS (test-only). */
export function cpuFlags(): string[] {
  const fake = process.env.PHAUL_FAKE_CPU_FLAGS;
  if (fake !== undefined) return fake.split(/[\s,]+/).filter(Boolean).sort();
  const m = /^flags\s*:\s*(.*)$/m.exec(readText("/proc/cpuinfo") ?? "");
  return (m?.[1] ?? "").split(/\s+/).filter(Boolean).sort();
}

/** Root and descendants, by ppid in /proc/PID/stat, and all their threads. */
export function treePids(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const n of readdirSync("/proc")) {
    if (!/^\d+$/.test(n)) continue;
    const stat = readText(`/proc/${n}/stat`);
    if (!stat) continue;
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    const list = children.get(ppid) ?? [];
    list.push(Number(n));
    children.set(ppid, list);
  }
  const out: number[] = [];
  const todo = [root];
  while (todo.length) {
    const p = todo.shift()!;
    out.push(p);
    todo.push(...(children.get(p) ?? []));
  }
  const all = new Set<number>();
  for (const p of out) {
    all.add(p);
    try {
      for (const t of readdirSync(`/proc/${p}/task`)) all.add(Number(t));
    } catch {
      /* gone meanwhile */
    }
  }
  return [...all].sort((a, b) => a - b);
}

const SKIP = /^\/(dev|proc|sys|memfd:|SYSV)|\(deleted\)$/;

/**
 * Paths of the exe, mapped files and open regular files of the tree's
 * processes, each with whether the tree writes it (opened for writing or
 * mapped shared-writable): such files can only be checked for presence —
 * their content moves on while the tree runs.
 */
export function treeFiles(pids: number[]): Map<string, boolean> {
  const files = new Map<string, boolean>();
  const add = (path: string, writable: boolean) => files.set(path, (files.get(path) ?? false) || writable);
  for (const pid of pids) {
    if (!existsSync(`/proc/${pid}/maps`)) continue;
    try {
      add(readlinkSync(`/proc/${pid}/exe`), false);
    } catch {
      /* kernel thread or gone */
    }
    for (const line of (readText(`/proc/${pid}/maps`) ?? "").split("\n")) {
      const i = line.indexOf("/");
      if (i > 0 && /^\S+ \S+ \S+ \S+ \d+\s+\//.test(line)) add(line.slice(i), /^\S+ .w.s /.test(line));
    }
    let fds: string[] = [];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      /* no access */
    }
    for (const fd of fds) {
      try {
        const target = readlinkSync(`/proc/${pid}/fd/${fd}`);
        if (!target.startsWith("/") || !statSync(`/proc/${pid}/fd/${fd}`).isFile()) continue;
        const flags = /^flags:\s*([0-7]+)/m.exec(readText(`/proc/${pid}/fdinfo/${fd}`) ?? "");
        add(target, flags ? (parseInt(flags[1]!, 8) & 3) !== 0 : true);
      } catch {
        /* closed meanwhile */
      }
    }
  }
  for (const f of [...files.keys()]) if (SKIP.test(f)) files.delete(f);
  return files;
}

export async function sha256(path: string): Promise<string> {
  const h = createHash("sha256");
  await new Promise<void>((res, rej) => {
    createReadStream(path).on("data", (d) => h.update(d)).on("end", () => res()).on("error", rej);
  });
  return h.digest("hex");
}

export async function fileFact(path: string, writable = false): Promise<FileFact | undefined> {
  try {
    const st = statSync(path);
    if (!st.isFile()) return undefined;
    const fact: FileFact = { path, size: st.size, mtime_ms: Math.trunc(st.mtimeMs) };
    if (writable) fact.writable = true;
    else if (st.size <= HASH_LIMIT_BYTES) fact.sha256 = await sha256(path);
    return fact;
  } catch {
    return undefined;
  }
}

/** Everything the source sends in its `preflight` message. Reads /proc only. */
export async function sourceFacts(pid: number): Promise<PreflightMsg> {
  const pids = treePids(pid);
  const files = [...treeFiles(pids)].sort(([a], [b]) => (a < b ? -1 : 1));
  const facts = await Promise.all(files.map(([path, writable]) => fileFact(path, writable)));
  return { type: "preflight", pids, cpu_flags: cpuFlags(), files: facts.filter((f): f is FileFact => f !== undefined) };
}

// ------------------------------------------------------- destination side

function fakeMissing(): Set<string> {
  return new Set((process.env.PHAUL_FAKE_MISSING_FILES ?? "").split(":").filter(Boolean));
}

/** The destination's answer to a `preflight` (test-only fakes: PHAUL_FAKE_CPU_FLAGS, PHAUL_FAKE_XCR0, PHAUL_FAKE_MISSING_FILES). */
export async function destinationFindings(m: PreflightMsg, pidNamespace: "auto" | "never"): Promise<PreflightResultMsg> {
  const missing = fakeMissing();
  const files: FileFinding[] = [];
  for (const f of m.files) {
    if (missing.has(f.path)) {
      files.push({ path: f.path, status: "missing", detail: "not found here" });
      continue;
    }
    let st;
    try {
      st = statSync(f.path);
    } catch (e) {
      files.push({ path: f.path, status: "missing", detail: (e as NodeJS.ErrnoException).code ?? "not found here" });
      continue;
    }
    if (!st.isFile()) {
      files.push({ path: f.path, status: "differs", detail: "not a regular file here" });
    } else if (f.writable) {
      continue; // written by the tree: presence is all that can be checked
    } else if (st.size !== f.size) {
      files.push({ path: f.path, status: "differs", detail: `size ${st.size} here, ${f.size} on the source` });
    } else if (f.sha256 !== undefined && (await sha256(f.path).catch(() => "")) !== f.sha256) {
      files.push({ path: f.path, status: "differs", detail: "content differs (sha256)" });
    } else if (Math.trunc(st.mtimeMs) !== f.mtime_ms) {
      files.push({ path: f.path, status: "mtime", detail: `same ${f.sha256 ? "content" : "size"}, mtime differs` });
    }
  }
  const taken = m.pids.filter((p) => existsSync(`/proc/${p}`));
  const caps = await check().catch(() => undefined);
  const missingRequired = caps ? Object.entries(caps.features).filter(([, f]) => f.required && !f.ok).map(([n]) => n) : [];
  return {
    type: "preflight_result",
    cpu_flags: cpuFlags(),
    files,
    pids_taken: taken,
    pid_ns: taken.length > 0 && pidNamespace === "auto",
    pid_refused: taken.length > 0 && pidNamespace === "never",
    missing_required_features: missingRequired,
  };
}

// ----------------------------------------------------------------- report

function hex(n: bigint): string {
  return "0x" + n.toString(16);
}

export function buildReport(
  pid: number, to: string, mine: HelloMsg, theirs: HelloMsg, facts: PreflightMsg, found: PreflightResultMsg,
): PreflightReport {
  const s: Capabilities = mine.capabilities;
  const d: Capabilities = theirs.capabilities;
  const problems: string[] = [];
  const warnings: string[] = [];
  if (mine.protocol !== theirs.protocol) problems.push(`protocol version mismatch: source ${mine.protocol}, destination ${theirs.protocol}`);
  if (s.arch !== d.arch) problems.push(`architecture mismatch: source ${s.arch}, destination ${d.arch}`);
  const have = new Set(found.cpu_flags);
  const missingFlags = facts.cpu_flags.filter((f) => !have.has(f));
  if (missingFlags.length) problems.push(`destination CPU lacks flags the process may use: ${missingFlags.join(" ")}`);
  const missingXcr0 = BigInt(s.xcr0) & ~BigInt(d.xcr0);
  if (missingXcr0 !== 0n) problems.push(`destination XCR0 ${d.xcr0} lacks xsave components of the source ${s.xcr0} (missing ${hex(missingXcr0)})`);
  if (found.missing_required_features.length) problems.push(`destination lacks required kernel features: ${found.missing_required_features.join(", ")}`);
  const theirFeatures = new Set(d.features);
  const missingFeatures = s.features.filter((f) => !theirFeatures.has(f));
  if (missingFeatures.length) warnings.push(`engine features working here but not there: ${missingFeatures.join(", ")}`);
  if (found.pid_refused) problems.push(`pids ${found.pids_taken.join(" ")} are already in use on the destination and it refuses a pid namespace (--pid-ns never) (EPIDTAKEN)`);
  if (found.pid_ns) warnings.push(`pids ${found.pids_taken.join(" ")} are taken on the destination: the tree will run there in a new pid namespace`);
  const fileProblems = found.files.filter((f) => f.status !== "mtime");
  const fileWarnings = found.files.filter((f) => f.status === "mtime");
  for (const f of fileProblems) problems.push(`file ${f.path} ${f.status} on the destination: ${f.detail}`);
  for (const f of fileWarnings) warnings.push(`file ${f.path}: ${f.detail}`);
  if (s.kernel !== d.kernel) warnings.push(`kernels differ: source ${s.kernel}, destination ${d.kernel}`);
  const ok = problems.length === 0;
  const verdict = ok
    ? `pid ${pid} would be migrated to ${to}` + (found.pid_ns ? " into a new pid namespace" : " under the same pids")
    : `pid ${pid} would NOT be migrated to ${to}: ${problems.length} problem${problems.length > 1 ? "s" : ""}; it keeps running here`;
  const code = ok ? undefined : found.pid_refused && problems.length === 1 ? "EPIDTAKEN" as const : "EPREFLIGHT" as const;
  return {
    ok, ...(code ? { code } : {}), pid, to,
    protocol: { source: mine.protocol, destination: theirs.protocol },
    arch: { source: s.arch, destination: d.arch },
    kernel: { source: s.kernel, destination: d.kernel },
    cpu: { missing_flags: missingFlags, xcr0: { source: s.xcr0, destination: d.xcr0, missing: hex(missingXcr0) } },
    missing_features: missingFeatures,
    missing_required_features: found.missing_required_features,
    pids: { tree: facts.pids, taken: found.pids_taken, pid_ns: found.pid_ns, refused: found.pid_refused },
    files: { checked: facts.files.length, hashed: facts.files.filter((f) => f.sha256).length, written: facts.files.filter((f) => f.writable).length, problems: fileProblems, warnings: fileWarnings },
    problems, warnings, verdict,
  };
}

/** Human text of a report. */
export function formatReport(r: PreflightReport): string {
  const lines = [
    `preflight: ${r.verdict}`,
    `  protocol ${r.protocol.source}/${r.protocol.destination}, arch ${r.arch.source}/${r.arch.destination}, ` +
      `xcr0 ${r.cpu.xcr0.source}/${r.cpu.xcr0.destination}`,
    `  ${r.pids.tree.length} pids/tids; ${r.pids.taken.length ? `${r.pids.taken.length} taken there${r.pids.pid_ns ? " (pid namespace will be used)" : ""}` : "all free there"}`,
    `  ${r.files.checked} files checked (${r.files.hashed} by sha256, ${r.files.written} written by the tree: presence only)`,
  ];
  for (const p of r.problems) lines.push(`  refuse: ${p}`);
  for (const w of r.warnings) lines.push(`  note: ${w}`);
  return lines.join("\n") + "\n";
}
