// Starting test workloads, reading their logs and cleaning up after them.
//
// Log protocol (see test/workloads/common.h): "READY" once, then "OK <n> ..."
// lines with n increasing by one, or "FAIL <reason>" before exiting.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cmdline, isAlive, killTree, pidExists, sleep } from './proc.js';
import { workloadBin } from './paths.js';

export interface Workload {
  name: string;
  pid: number;
  /** temp dir of this workload (log, files it creates, images) */
  dir: string;
  log: string;
  /** string found in the command line of every process of this workload (guards kills against pid reuse) */
  marker: string;
  child: ChildProcess;
}

export function readLog(w: Workload): string[] {
  try {
    return readFileSync(w.log, 'utf8').split('\n').filter((l) => l !== '');
  } catch {
    return [];
  }
}

export function okCounters(lines: string[]): number[] {
  const out: number[] = [];
  for (const l of lines) {
    const m = /^OK (\d+)/.exec(l);
    if (m) out.push(Number(m[1]));
  }
  return out;
}

export function lastOk(w: Workload): number {
  const c = okCounters(readLog(w));
  return c.length ? c[c.length - 1] : 0;
}

export function failLines(w: Workload): string[] {
  return readLog(w).filter((l) => l.startsWith('FAIL'));
}

function tail(w: Workload, n = 15): string {
  return readLog(w).slice(-n).join('\n');
}

export function assertNoFail(w: Workload): void {
  const f = failLines(w);
  assert.equal(f.length, 0, `${w.name} reported:\n${f.join('\n')}`);
}

/** Every OK counter in the whole log is the previous one plus one, and READY appears exactly once (no re-run from scratch). */
export function assertOkSequence(w: Workload): void {
  const lines = readLog(w);
  assert.equal(lines.filter((l) => l.startsWith('READY')).length, 1, `${w.name}: READY count\n${tail(w)}`);
  const c = okCounters(lines);
  for (let i = 1; i < c.length; i++)
    assert.equal(c[i], c[i - 1] + 1, `${w.name}: OK ${c[i]} follows OK ${c[i - 1]} (lost or repeated work)`);
}

/** Wait until a log line matches; fails early on a FAIL line or when the process died. */
export async function waitForLine(w: Workload, pred: (line: string) => boolean, timeoutMs: number, what: string): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const lines = readLog(w);
    const fail = lines.find((l) => l.startsWith('FAIL'));
    if (fail) assert.fail(`${w.name} (pid ${w.pid}) failed while waiting for ${what}: ${fail}`);
    const hit = lines.find(pred);
    if (hit !== undefined) return hit;
    if (!isAlive(w.pid)) {
      // one last look: the line may have been written just before exiting
      const again = readLog(w).find(pred);
      if (again !== undefined) return again;
      assert.fail(`${w.name} (pid ${w.pid}) is not running while waiting for ${what}; log tail:\n${tail(w)}`);
    }
    if (Date.now() >= deadline) assert.fail(`${w.name} (pid ${w.pid}): timed out after ${timeoutMs} ms waiting for ${what}; log tail:\n${tail(w)}`);
    await sleep(20);
  }
}

export function waitReady(w: Workload, timeoutMs = 15_000): Promise<string> {
  return waitForLine(w, (l) => l.startsWith('READY'), timeoutMs, 'READY');
}

/** Wait for an "OK n" line with n > above; returns n. */
export async function waitForOk(w: Workload, above: number, timeoutMs = 20_000): Promise<number> {
  const line = await waitForLine(
    w,
    (l) => {
      const m = /^OK (\d+)/.exec(l);
      return m !== null && Number(m[1]) > above;
    },
    timeoutMs,
    `OK > ${above}`,
  );
  return Number(/^OK (\d+)/.exec(line)![1]);
}

export interface StartOptions {
  /** extra argv after the log path */
  args?: string[];
  readyTimeoutMs?: number;
}

/**
 * Owns the temp dirs and processes of one test file. Call cleanup() from an
 * `after` hook: it kills every tracked process tree (restored ones included),
 * waits until they are reaped and removes the temp dirs.
 */
export class Harness {
  private dirs: string[] = [];
  private procs: { pid: number; marker: string }[] = [];

  tempDir(prefix = 'phaul-test-'): string {
    const d = mkdtempSync(path.join(os.tmpdir(), prefix));
    this.dirs.push(d);
    return d;
  }

  /** Remember a pid to kill at cleanup; only killed while its command line contains marker. */
  track(pid: number, marker: string): void {
    if (!this.procs.some((p) => p.pid === pid)) this.procs.push({ pid, marker });
  }

  /** Spawn a detached process (own session, stdio ignored); it is our child until dumped. */
  spawnDetached(cmd: string, args: string[], cwd: string, marker: string): ChildProcess {
    const child = spawn(cmd, args, { cwd, detached: true, stdio: 'ignore' });
    child.on('error', () => {
      /* reported through the missing READY / pid */
    });
    child.unref();
    if (child.pid === undefined) throw new Error(`cannot start ${cmd}`);
    this.track(child.pid, marker);
    return child;
  }

  /** Start test/workloads/bin/NAME LOG [args] in a fresh temp dir and wait for READY. */
  async start(name: string, opts: StartOptions = {}): Promise<Workload> {
    const dir = this.tempDir(`phaul-${name}-`);
    const log = path.join(dir, `${name}.log`);
    const child = this.spawnDetached(workloadBin(name), [log, ...(opts.args ?? [])], dir, log);
    const w: Workload = { name, pid: child.pid!, dir, log, marker: log, child };
    await waitReady(w, opts.readyTimeoutMs);
    return w;
  }

  belongs(marker: string): (pid: number) => boolean {
    return (pid: number) => (cmdline(pid) ?? '').includes(marker);
  }

  /** Kill a workload (and its descendants) and wait until all are reaped. */
  async kill(w: { pid: number; marker: string }): Promise<void> {
    const left = await killTree(w.pid, this.belongs(w.marker));
    assert.deepEqual(left, [], `processes still present after SIGKILL: ${left.join(' ')}`);
  }

  async cleanup(): Promise<void> {
    const errors: string[] = [];
    for (const p of this.procs.splice(0)) {
      if (!pidExists(p.pid)) continue;
      const left = await killTree(p.pid, this.belongs(p.marker));
      if (left.length) errors.push(`left running: ${left.join(' ')}`);
    }
    for (const d of this.dirs.splice(0)) {
      try {
        rmSync(d, { recursive: true, force: true });
      } catch (e) {
        errors.push(`rm ${d}: ${(e as Error).message}`);
      }
    }
    if (errors.length) throw new Error(errors.join('\n'));
  }
}

/**
 * Workloads with a last check that runs once LOG.go exists (deliver the
 * pending signals, kill the strict-mode child, continue the stopped one...),
 * and the line each logs when it passed.
 */
export const GO_CHECKS: Record<string, string> = {
  signals: 'DELIVERED',
  seccomp_filters: 'STRICT_ENFORCED',
  job_stop: 'CONTINUED',
  pidfd_kinds: 'PIDFD_REAPED',
  fanotify_kinds: 'PERM_DENIED',
  sock_scm: 'SCM_CHECKED',
  tcp_closed: 'ENDINGS_REPORTED',
  aio_ring: 'AIO_REAPED',
  sock_senders: 'SENDERS_CHECKED',
  fifo_unlinked: 'FIFOS_CHECKED',
  uffd_kinds: 'UFFD_CHECKED',
};

/** Create LOG.go, wait for `line`, then for two more OK lines. */
export async function goAndWait(w: Workload, line: string, timeoutMs = 10_000): Promise<void> {
  writeFileSync(`${w.log}.go`, '');
  await waitForLine(w, (l) => l === line, timeoutMs, line);
  await waitForOk(w, lastOk(w) + 2, timeoutMs);
}
