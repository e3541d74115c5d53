// Helpers that look at processes through /proc. No process here is assumed to be our child.
import { readFileSync, readdirSync } from 'node:fs';

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Poll pred every intervalMs until it returns true or timeoutMs passes; returns the last result. */
export async function waitUntil(pred: () => boolean, timeoutMs: number, intervalMs = 20): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (pred()) return true;
    if (Date.now() >= deadline) return false;
    await sleep(intervalMs);
  }
}

interface Stat {
  state: string;
  ppid: number;
  pgid: number;
  sid: number;
  /** controlling terminal (major << 8 | minor for minors < 256), 0 when none */
  tty_nr: number;
}

export function procStat(pid: number): Stat | null {
  let s: string;
  try {
    s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return { state: rest[0], ppid: Number(rest[1]), pgid: Number(rest[2]), sid: Number(rest[3]), tty_nr: Number(rest[4]) };
}

/** /proc/PID exists (a zombie counts). */
export function pidExists(pid: number): boolean {
  return procStat(pid) !== null;
}

/** Exists and is neither a zombie nor dead. */
export function isAlive(pid: number): boolean {
  const st = procStat(pid);
  return st !== null && st.state !== 'Z' && st.state !== 'X';
}

export function procStatus(pid: number): Record<string, string> | null {
  let s: string;
  try {
    s = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null;
  }
  const out: Record<string, string> = {};
  for (const line of s.split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}

/** Not stopped, not traced: what a process must look like after a failed or --leave-running dump. */
export function runningFreely(pid: number): { ok: boolean; why: string } {
  const st = procStatus(pid);
  if (!st) return { ok: false, why: `pid ${pid} is gone` };
  if (st.TracerPid !== '0') return { ok: false, why: `pid ${pid} is traced by ${st.TracerPid}` };
  if (/^[tTZX]/.test(st.State ?? '')) return { ok: false, why: `pid ${pid} state ${st.State}` };
  return { ok: true, why: '' };
}

export function cmdline(pid: number): string | null {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return null;
  }
}

function allPids(): number[] {
  return readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .map(Number);
}

/** All descendants of pid (children, grandchildren, ...), found through ppid links. */
export function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const p of allPids()) {
    const st = procStat(p);
    if (!st) continue;
    const list = children.get(st.ppid) ?? [];
    list.push(p);
    children.set(st.ppid, list);
  }
  const out: number[] = [];
  const todo = [...(children.get(pid) ?? [])];
  while (todo.length) {
    const p = todo.shift()!;
    out.push(p);
    todo.push(...(children.get(p) ?? []));
  }
  return out;
}

/** Poll until /proc/PID is absent (reaped). pid 1 reaps orphans slowly here, hence the 5 s default. */
export function waitPidGone(pid: number, timeoutMs = 5000): Promise<boolean> {
  return waitUntil(() => !pidExists(pid), timeoutMs);
}

/**
 * SIGKILL pid and its descendants, then wait until every one is reaped.
 * `belongs(pid)` guards against pid reuse: only matching processes are signalled.
 * Returns the pids still present after the wait (empty on success).
 */
export async function killTree(pid: number, belongs: (pid: number) => boolean = () => true, timeoutMs = 5000): Promise<number[]> {
  const tree = [pid, ...descendants(pid)];
  const victims = tree.filter((p) => isAlive(p) && belongs(p));
  for (const p of victims) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
  // zombies (already dead, waiting for their parent or init to reap them) are waited for too
  const wait = [...victims, ...tree.filter((p) => procStat(p)?.state === 'Z' && !victims.includes(p))];
  await waitUntil(() => wait.every((p) => !pidExists(p)), timeoutMs, 25);
  return wait.filter((p) => pidExists(p));
}

/** A pid that is not in use right now (from the top of the pid range). */
export function unusedPid(): number {
  let max = 32768;
  try {
    max = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim());
  } catch {
    /* default */
  }
  for (let p = max - 1; p > 300; p--) if (!pidExists(p)) return p;
  throw new Error('no free pid');
}
