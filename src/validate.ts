// Checks on user input made before the engine is called, so that mistakes get
// a precise message instead of whatever ptrace would say.

import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { PhaulError } from "./errors.js";
import { hasInventory, INVENTORY_FILE } from "./images/index.js";

const PF_KTHREAD = 0x00200000;

interface ProcStat {
  state: string;
  ppid: number;
  flags: number;
}

function readProcStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // comm may contain spaces and parentheses: fields resume after the last ')'.
  const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return { state: rest[0] ?? "?", ppid: Number(rest[1]), flags: Number(rest[6]) };
}

const PF_EXITING = 0x00000004;

/** Does `pid` still run (exists, and is neither exiting nor exited)? */
export function processRuns(pid: number): boolean {
  const st = readProcStat(pid);
  // A killed process with much memory stays in state R or D for a while
  // as its memory is torn down: its flags tell.
  return st !== undefined && st.state !== "Z" && st.state !== "X" && (st.flags & PF_EXITING) === 0;
}

function threadGroupOf(pid: number): number | undefined {
  try {
    const m = /^Tgid:\s+(\d+)$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

function ancestorsOfSelf(): Set<number> {
  const seen = new Set<number>();
  let pid = process.pid;
  while (pid > 1 && !seen.has(pid)) {
    seen.add(pid);
    const stat = readProcStat(pid);
    if (!stat) break;
    pid = stat.ppid;
  }
  seen.add(1);
  return seen;
}

/** Parse and check a pid to dump; returns it as a number. */
export function validateDumpPid(value: unknown): number {
  const text = String(value ?? "").trim();
  const pid = /^[0-9]+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(pid) || pid <= 0) {
    throw new PhaulError("EUSAGE", `--pid must be a positive integer, got ${JSON.stringify(text)}`);
  }
  if (pid === process.pid) throw new PhaulError("EUSAGE", `pid ${pid} is phaul itself`);
  const stat = readProcStat(pid);
  if (!stat) throw new PhaulError("ESRCH", `no process with pid ${pid}`);
  if (stat.flags & PF_KTHREAD) throw new PhaulError("EKTHREAD", `pid ${pid} is a kernel thread`);
  if (stat.state === "Z") {
    // A thread group whose main thread exited (pthread_exit from main) while others run.
    const threads = (() => { try { return readdirSync(`/proc/${pid}/task`).length; } catch { return 0; } })();
    if (threads > 1) throw new PhaulError("EUNSUPPORTED", `process ${pid}: its main thread has exited while ${threads - 1} other threads run on; a process without its main thread is not supported`);
    throw new PhaulError("EUNSUPPORTED", `pid ${pid} is a zombie`);
  }
  const tgid = threadGroupOf(pid);
  if (tgid !== undefined && tgid !== pid) {
    throw new PhaulError("EUSAGE", `pid ${pid} is a thread of process ${tgid}: dump the process`);
  }
  // The tree of an ancestor contains phaul: freezing it would freeze phaul.
  if (ancestorsOfSelf().has(pid)) {
    throw new PhaulError("EUSAGE", `pid ${pid} is an ancestor of phaul itself; its tree would include phaul`);
  }
  return pid;
}

const OLD_DUMP_FILE = /^(?:inventory|pstree|files|(?:core|mm|fdinfo|pages)-\d+)\.img$|^\.inventory\.img\.tmp$/;

/**
 * Make `dir` ready to receive a dump: create it if missing, refuse it if it
 * holds anything, except an old dump when `force` is set (its images are
 * removed so that none of them can mix with the new ones).
 */
export function prepareDumpDir(dir: string, force = false): void {
  if (!dir) throw new PhaulError("EUSAGE", "--dir is required");
  if (existsSync(dir)) {
    if (!statSync(dir).isDirectory()) throw new PhaulError("EUSAGE", `${dir} exists and is not a directory`);
    const entries = readdirSync(dir);
    if (entries.length === 0) return;
    if (!hasInventory(dir)) throw new PhaulError("EUSAGE", `${dir} is not empty; give an empty or new directory`);
    if (!force) {
      throw new PhaulError("EUSAGE", `${dir} already holds a dump (${INVENTORY_FILE}); use --force to replace it`);
    }
    const foreign = entries.filter((e) => !OLD_DUMP_FILE.test(e));
    if (foreign.length > 0) {
      throw new PhaulError("EUSAGE", `${dir} holds files that are not phaul images (${foreign[0]}); refusing to mix`);
    }
    // Inventory first: a half-removed dump must not look complete.
    unlinkSync(join(dir, INVENTORY_FILE));
    for (const e of entries) if (e !== INVENTORY_FILE) unlinkSync(join(dir, e));
    return;
  }
  try {
    makeDirs(dir);
  } catch (e) {
    throw new PhaulError((e as NodeJS.ErrnoException).code === "EACCES" ? "EACCES" : "EUSAGE",
      `cannot create ${dir}: ${(e as Error).message}`);
  }
}

/**
 * mkdir -p, one level at a time: Node's recursive mkdirSync spins forever
 * under /proc (each level "exists" as far as its retry logic can tell).
 */
function makeDirs(dir: string): void {
  const parts = dir.split("/").filter(Boolean);
  let cur = "";
  for (const part of parts) {
    cur += "/" + part;
    if (existsSync(cur)) continue;
    mkdirSync(cur);
  }
}

/** Check that `dir` holds a dump to restore. */
export function validateRestoreDir(dir: string): void {
  if (!dir) throw new PhaulError("EUSAGE", "--dir is required");
  if (!existsSync(dir)) throw new PhaulError("EUSAGE", `${dir} does not exist`);
  if (!statSync(dir).isDirectory()) throw new PhaulError("EUSAGE", `${dir} is not a directory`);
  if (!hasInventory(dir)) throw new PhaulError("EIMAGE", `${dir} holds no ${INVENTORY_FILE}: not a phaul dump`);
}
