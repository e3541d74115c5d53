// Live migration on one host: a destination agent (`phaul serve` child on
// 127.0.0.1, port 0) and `phaul migrate` of real workloads. After each
// migration the process runs under the same pid, is no longer the test's
// child (the source copy was killed and reaped), keeps its counters going
// and reports no FAIL.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Agent, startAgent } from './helpers/agent.js';
import { adoptMigrated, gapsSince, migrateAndCheck, roundsText } from './helpers/migrate.js';
import { waitUntil } from './helpers/proc.js';
import { assertNoFail, assertOkSequence, Harness, lastOk, readLog, waitForOk } from './helpers/workload.js';
import { migrate } from '../src/index.js';

describe('live migration on one host', () => {
  const h = new Harness();
  let agent: Agent;
  before(async () => {
    agent = await startAgent();
  });
  after(async () => {
    await agent?.stop();
    await h.cleanup();
  });

  test('counter', { timeout: 60_000 }, async (t) => {
    const w = await h.start('counter');
    await waitForOk(w, 2);
    const { summary } = await migrateAndCheck(h, w, agent);
    t.diagnostic(roundsText(summary));
    assert.ok(summary.rounds.length >= 1, 'no pre-copy round');
    await h.kill(w);
  });

  test('hash dirty tracking (the fallback for any kernel): a writing workload moves intact', { timeout: 120_000 }, async (t) => {
    const w = await h.start('dirtier', { args: ['64', '16'], readyTimeoutMs: 30_000 });
    await waitForOk(w, 3);
    const { summary } = await migrateAndCheck(h, w, agent, { extra: ['--track', 'hash'] });
    t.diagnostic(roundsText(summary));
    assert.equal(summary.method, 'hash');
    await h.kill(w);
  });

  test('threads', { timeout: 60_000 }, async (t) => {
    const w = await h.start('threads');
    await waitForOk(w, 2);
    const { summary } = await migrateAndCheck(h, w, agent);
    t.diagnostic(roundsText(summary));
    await h.kill(w);
  });

  test('bigmem 256 MiB, every page verified after the move', { timeout: 180_000 }, async (t) => {
    const w = await h.start('bigmem', { args: ['256'], readyTimeoutMs: 30_000 });
    await waitForOk(w, 1, 40_000);
    // OK two above the last one at migration = a full verification pass ran entirely on the destination
    const { summary } = await migrateAndCheck(h, w, agent, { okTimeoutMs: 60_000 });
    t.diagnostic(roundsText(summary));
    assert.ok(summary.rounds[0]!.bytes >= 256 * 1024 * 1024, `round 0 sent only ${summary.rounds[0]!.bytes} bytes`);
    await h.kill(w);
  });

  test('tick: downtime seen by the workload', { timeout: 60_000 }, async (t) => {
    const w = await h.start('tick', { args: ['2000'] });
    await waitForOk(w, 5);
    const { summary, linesAtStart } = await migrateAndCheck(h, w, agent);
    const gaps = gapsSince(w, linesAtStart);
    const maxGap = gaps.length ? Math.max(...gaps) : 0;
    t.diagnostic(`tick: largest gap during migration ${maxGap} us (frozen ${summary.frozen_ms} ms by the source's clock); ${roundsText(summary)}`);
    assert.ok(maxGap > 0, 'tick: no GAP line above 2 ms: the freeze was not seen at all?');
    await h.kill(w);
  });

  test('a workload writing 16 MB/s converges (library API, progress events)', { timeout: 120_000 }, async (t) => {
    const w = await h.start('dirtier', { args: ['256', '16'], readyTimeoutMs: 30_000 });
    await waitForOk(w, 3);
    const okAtStart = lastOk(w);
    const linesAtStart = readLog(w).length;
    const phases: string[] = [];
    const s = await migrate({ pid: w.pid, to: agent.address, onProgress: (p) => phases.push(p.phase) });
    const child = w.child;
    t.diagnostic(roundsText(s));
    assert.equal(s.stop_reason, 'converged', roundsText(s));
    assert.ok(s.rounds.length >= 2, `expected at least one dirty round: ${roundsText(s)}`);
    assert.ok(s.final.bytes < s.rounds[0]!.bytes / 10, `final round not small: ${roundsText(s)}`);
    for (const p of ['connecting', 'tracking', 'round-start', 'round', 'freezing', 'restoring', 'restored']) assert.ok(phases.includes(p), `no ${p} progress`);
    assert.ok(await waitUntil(() => child.signalCode !== null, 5000), 'source copy still our child');
    await adoptMigrated(h, w, s.dest_pid);
    await waitForOk(w, okAtStart + 5, 20_000);
    assertNoFail(w);
    assertOkSequence(w);
    const gaps = gapsSince(w, linesAtStart);
    t.diagnostic(`dirtier: largest gap ${gaps.length ? Math.max(...gaps) : 0} us`);
    await h.kill(w);
  });

  test('stop-and-copy (--max-rounds 0)', { timeout: 60_000 }, async (t) => {
    const w = await h.start('counter');
    await waitForOk(w, 2);
    const { summary } = await migrateAndCheck(h, w, agent, { extra: ['--max-rounds', '0'] });
    t.diagnostic(roundsText(summary));
    assert.equal(summary.rounds.length, 0);
    assert.equal(summary.stop_reason, 'stop-and-copy');
    assert.ok(summary.final.pages > 0, 'stop-and-copy sent no page');
    await h.kill(w);
  });
});
