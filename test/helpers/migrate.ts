// Shared checks for migration tests: run `phaul migrate --json` and verify the
// move (same pid, source copy killed, counters going on, no FAIL).
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { describe as describeCli, runCli, type CliResult } from './cli.js';
import type { Agent } from './agent.js';
import { cmdline, isAlive, procStat, procStatus, runningFreely, waitUntil } from './proc.js';
import { assertNoFail, assertOkSequence, Harness, lastOk, readLog, waitForOk, type Workload } from './workload.js';
import type { MigrateSummary } from '../../src/index.js';

export interface MigrateRun {
  summary: MigrateSummary;
  okAtStart: number;
  linesAtStart: number;
}

/** `phaul migrate --json` of w to the agent; checks the source copy is gone and the pid runs on. */
/**
 * After a migration on one host the tree runs in a new pid namespace (its
 * pids were taken by the source itself): its pid there is the old one, its
 * pid here a new one. Find it by w's marker and NSpid, point w at it, track it.
 */
export async function adoptMigrated(h: Harness, w: Workload, innerPid: number): Promise<number> {
  let found: number | undefined;
  await waitUntil(() => {
    for (const n of readdirSync('/proc')) {
      if (!/^\d+$/.test(n)) continue;
      const pid = Number(n);
      if (!(cmdline(pid) ?? '').includes(w.marker)) continue;
      const ns = (procStatus(pid)?.NSpid ?? '').split(/\s+/).map(Number);
      if (ns[ns.length - 1] === innerPid && isAlive(pid)) found = pid;
    }
    return found !== undefined;
  }, 5000);
  assert.ok(found !== undefined, `cannot find the migrated process (pid ${innerPid} inside its namespace, marker ${w.marker}); ${w.name} log tail:\n${readLog(w).slice(-5).join('\n')}`);
  w.pid = found;
  h.track(found, w.marker);
  return found;
}

export interface MigrateCheckOptions {
  extra?: string[];
  /** --to (default the agent's address), e.g. through a relay */
  to?: string;
  okTimeoutMs?: number;
  /** how to run the CLI (default runCli: node bin/phaul.js ARGS) */
  runner?: (args: string[]) => Promise<CliResult>;
}

export async function migrateAndCheck(h: Harness, w: Workload, agent: Agent, o: MigrateCheckOptions = {}): Promise<MigrateRun> {
  const okAtStart = lastOk(w);
  const linesAtStart = readLog(w).length;
  // The fewest of a few looks: some workloads have short-lived threads (a
  // glibc SIGEV_THREAD timer starts one per expiry), counted or not
  // depending on the instant.
  const threadsNow = (pid: number) => readdirSync(`/proc/${pid}/task`).length;
  let threadsBefore = threadsNow(w.pid);
  for (let i = 0; i < 4; i++) {
    await new Promise((res) => setTimeout(res, 3));
    threadsBefore = Math.min(threadsBefore, threadsNow(w.pid));
  }
  const args = ['migrate', '--to', o.to ?? agent.address, '--pid', String(w.pid), '--json', ...(o.extra ?? [])];
  const r = await (o.runner ?? ((a: string[]) => runCli(a, 180_000)))(args);
  if (r.code !== 0) {
    // the workload's own account (a FAIL line, or its exit) says more than the CLI's error
    const exit = w.child.exitCode !== null || w.child.signalCode !== null ? `exited (${w.child.exitCode ?? w.child.signalCode})` : 'running';
    assert.fail(`expected success:\n${describeCli(r)}\n--- ${w.name} (${exit}), log tail ---\n${readLog(w).slice(-5).join('\n')}`);
  }
  const summary = JSON.parse(r.stdout) as MigrateSummary;
  const sourcePid = w.pid;
  assert.equal(summary.dest_pid, sourcePid, 'migrated under another pid');
  // the source copy was our child: it must have been killed
  assert.ok(await waitUntil(() => w.child.exitCode !== null || w.child.signalCode !== null, 5000),
    `source copy (our child ${w.pid}) did not exit after the migration\n${describeCli(r)}`);
  assert.equal(w.child.signalCode, 'SIGKILL', 'source copy should have been killed');
  await adoptMigrated(h, w, summary.dest_pid);
  if (summary.pid_ns) assert.notEqual(w.pid, sourcePid, 'pid namespace reported but the pid here did not change');
  assert.ok(await waitUntil(() => runningFreely(w.pid).ok, 5000), `migrated pid ${w.pid}: ${runningFreely(w.pid).why}`);
  assert.notEqual(procStat(w.pid)?.ppid, process.pid, 'migrated process is a child of the test');
  assert.ok(await waitUntil(() => threadsNow(w.pid) === threadsBefore, 2000), `thread count changed: ${threadsNow(w.pid)}, was ${threadsBefore}`);
  const ns = (procStatus(w.pid)?.NSpid ?? '').split(/\s+/).map(Number);
  assert.equal(ns[ns.length - 1], sourcePid, `pid inside its namespace: NSpid ${ns.join(' ')}`);
  await waitForOk(w, okAtStart + 2, o.okTimeoutMs ?? 20_000);
  assertNoFail(w);
  assertOkSequence(w);
  await agent.waitEvent((e) => e.event === 'restored' && e.pid === sourcePid && e.migration === summary.migration, 10_000, 'restored');
  return { summary, okAtStart, linesAtStart };
}

export function roundsText(s: MigrateSummary): string {
  return s.rounds.map((r) => `r${r.round}: ${r.pages} pages ${(r.bytes / 1e6).toFixed(1)} MB ${r.ms.toFixed(1)} ms`).join('; ') +
    `; final ${s.final.pages} pages; frozen ${s.frozen_ms} ms; total ${s.total_ms} ms; ${s.method}; ${s.stop_reason}`;
}

export function gapsSince(w: Workload, line: number): number[] {
  return readLog(w).slice(line).filter((l) => l.startsWith('GAP ')).map((l) => Number(l.split(' ')[1]));
}


/** Live processes (not zombies) running w's command line, w.pid included. */
export function liveCopies(w: Workload): number[] {
  return readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number)
    .filter((p) => isAlive(p) && (cmdline(p) ?? '').includes(w.marker));
}

/** Processes other than w.pid running w's command line (a restored copy, or a stub that took it over). */
export function copiesOf(w: Workload): number[] {
  return liveCopies(w).filter((p) => p !== w.pid);
}

/**
 * Whatever a fault did, exactly one copy of w must run: freely (not stopped,
 * not traced), counting on in its log with no FAIL and no repeated count.
 * If that copy is the destination's, w is pointed at it. Returns where it runs.
 */
export async function assertExactlyOneCopy(h: Harness, w: Workload, timeoutMs = 15_000): Promise<'source' | 'destination'> {
  const sourcePid = w.pid;
  let copies: number[] = [];
  // A copy being killed or a held copy being dropped settles within moments.
  const settled = await waitUntil(() => {
    copies = liveCopies(w);
    return copies.length === 1 && runningFreely(copies[0]!).ok;
  }, timeoutMs);
  assert.ok(settled, `expected exactly one running copy, found ${copies.length}: ${copies.map((p) => `${p} (${runningFreely(p).why || 'running'})`).join(', ')}`);
  // Still one a moment later: no copy was about to start or stop.
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(liveCopies(w), copies, 'the set of running copies changed');
  const where = copies[0] === sourcePid ? 'source' : 'destination';
  if (where === 'destination') {
    w.pid = copies[0]!;
    h.track(w.pid, w.marker);
  }
  await waitForOk(w, lastOk(w) + 2, 20_000);
  assertNoFail(w);
  assertOkSequence(w);
  return where;
}
