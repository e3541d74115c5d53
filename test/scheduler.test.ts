// examples/scheduler.ts drains 8 workload processes from this host onto a
// destination agent on this host, all migrations started at once
// (Promise.all over migrate()). Each must end up running on the destination
// (in a new pid namespace, one host), its source copy killed, its counters
// going on with no FAIL; progress events arrive for every process.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Agent, startAgent } from './helpers/agent.js';
import { adoptMigrated } from './helpers/migrate.js';
import { REPO } from './helpers/paths.js';
import { runningFreely, waitUntil } from './helpers/proc.js';
import { assertNoFail, assertOkSequence, Harness, lastOk, waitForOk, type Workload } from './helpers/workload.js';
import { drain } from '../examples/scheduler.js';

const WORKLOADS: [string, string[]][] = [
  ['counter', []], ['counter', []], ['counter', []], ['counter', []],
  ['threads', []], ['threads', []], ['tick', ['2000']], ['dirtier', ['32', '4']],
];

async function verify(h: Harness, w: Workload, destPid: number, okBefore: number): Promise<void> {
  const sourcePid = w.pid;
  assert.equal(destPid, sourcePid, `${w.name}: migrated under another pid`);
  assert.ok(await waitUntil(() => w.child.signalCode !== null || w.child.exitCode !== null, 5000), `${w.name} ${sourcePid}: source copy still running`);
  assert.equal(w.child.signalCode, 'SIGKILL', `${w.name}: source copy should have been killed`);
  await adoptMigrated(h, w, destPid);
  assert.ok(await waitUntil(() => runningFreely(w.pid).ok, 5000), runningFreely(w.pid).why);
  await waitForOk(w, okBefore + 2, 30_000);
  assertNoFail(w);
  assertOkSequence(w);
}

describe('examples/scheduler.ts', () => {
  const h = new Harness();
  let agent: Agent;
  before(async () => {
    agent = await startAgent();
  });
  after(async () => {
    await agent?.stop();
    await h.cleanup();
  });

  test('drain 8 processes at once (library)', { timeout: 240_000 }, async (t) => {
    const ws = await Promise.all(WORKLOADS.map(([name, args]) => h.start(name, { args, readyTimeoutMs: 30_000 })));
    await Promise.all(ws.map((w) => waitForOk(w, 1, 30_000)));
    const okBefore = new Map(ws.map((w) => [w.pid, lastOk(w)]));
    const events = new Map<number, string[]>();
    const results = await drain({
      to: agent.address,
      pids: ws.map((w) => w.pid),
      onProgress: (pid, p) => events.set(pid, [...(events.get(pid) ?? []), p.phase]),
    });
    for (const r of results) assert.ok(r.ok, `pid ${r.pid}: ${r.code} ${r.message}`);
    t.diagnostic(`busy retries: ${results.map((r) => r.retries).join(' ')}`);
    for (const w of ws) {
      const ev = events.get(w.pid) ?? [];
      for (const p of ['preflight', 'round', 'freezing', 'restored']) assert.ok(ev.includes(p), `${w.name} ${w.pid}: no ${p} event (${ev.join(' ')})`);
    }
    await Promise.all(ws.map((w, i) => verify(h, w, results[i]!.summary!.dest_pid, okBefore.get(w.pid)!)));
    for (const w of ws) await h.kill(w);
  });

  test('the example as a program (--json): 8 processes', { timeout: 240_000 }, async () => {
    const ws = await Promise.all(WORKLOADS.map(([name, args]) => h.start(name, { args, readyTimeoutMs: 30_000 })));
    await Promise.all(ws.map((w) => waitForOk(w, 1, 30_000)));
    const okBefore = new Map(ws.map((w) => [w.pid, lastOk(w)]));
    const script = path.join(REPO, 'dist', 'examples', 'scheduler.js');
    const out = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, [script, '--to', agent.address, '--json', ...ws.map((w) => String(w.pid))], { maxBuffer: 64 << 20, timeout: 200_000 },
        (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, stdout, stderr }));
    });
    assert.equal(out.code, 0, `scheduler failed:\n${out.stdout}\n${out.stderr}`);
    const lines = out.stdout.trim().split('\n').map((l) => JSON.parse(l) as { event: string; pid: number; ok?: boolean; phase?: string; summary?: { dest_pid: number } });
    const results = lines.filter((l) => l.event === 'result');
    assert.equal(results.length, 8);
    assert.ok(lines.some((l) => l.event === 'progress' && l.phase === 'round'), 'no progress lines');
    for (const w of ws) {
      const r = results.find((x) => x.pid === w.pid)!;
      assert.ok(r.ok, JSON.stringify(r));
      await verify(h, w, r.summary!.dest_pid, okBefore.get(w.pid)!);
    }
    for (const w of ws) await h.kill(w);
  });
});
