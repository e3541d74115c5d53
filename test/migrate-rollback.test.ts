// Failed migrations roll back: whatever goes wrong before the destination's
// engine has the final round, the source process keeps running here, free
// (not stopped, not traced), with its counters going on and no FAIL, and
// the destination leaves nothing behind (no stub processes).
//
// Faults in the destination agent are injected with PHAUL_FAULT (test-only,
// see docs/migrate.md): the agent kills itself (SIGKILL) at each phase.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { after, describe, test } from 'node:test';
import { Agent, startAgent } from './helpers/agent.js';
import { assertCliError, assertCliOk, describe as describeCli, runCli, type CliResult } from './helpers/cli.js';
import { assertExactlyOneCopy, copiesOf } from './helpers/migrate.js';
import { freePort } from './helpers/servers.js';
import { runningFreely, waitUntil } from './helpers/proc.js';
import { assertNoFail, assertOkSequence, goAndWait, GO_CHECKS, Harness, lastOk, waitForOk, type Workload } from './helpers/workload.js';

/** Cpus_allowed_list of each thread of `pid`. */
function cpusAllowed(pid: number | 'self'): string[] {
  const out: string[] = [];
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      out.push(readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8').match(/^Cpus_allowed_list:\s*(.*)$/m)?.[1] ?? '?');
    } catch {
      /* ended */
    }
  }
  return out;
}


async function assertRolledBack(w: Workload, r: CliResult, agent?: Agent, pattern?: RegExp): Promise<void> {
  assertCliError(r, pattern);
  assert.match(r.stderr, /still running here/, describeCli(r));
  assert.equal(w.child.exitCode, null, `source exited: ${describeCli(r)}`);
  assert.equal(w.child.signalCode, null, `source killed: ${describeCli(r)}`);
  assert.ok(await waitUntil(() => runningFreely(w.pid).ok, 5000), `source not running freely: ${runningFreely(w.pid).why}`);
  // The frozen window runs the tree on the engine's CPU (native/src/pin.rs):
  // its threads have their own CPUs back (the workloads inherit ours).
  const mine = cpusAllowed('self')[0];
  assert.deepEqual(cpusAllowed(w.pid).filter((c) => c !== mine), [], `source threads keep a CPU mask of the frozen window (ours: ${mine})`);
  const ok = lastOk(w);
  await waitForOk(w, ok + 2, 20_000);
  assertNoFail(w);
  assertOkSequence(w);
  if (agent) {
    assert.ok(await waitUntil(() => agent.leftovers().length === 0, 6000),
      `stub processes left by the agent: ${agent.leftovers().join(' ')}\nagent stderr:\n${agent.stderr}`);
  }
  assert.ok(await waitUntil(() => copiesOf(w).length === 0, 6000), `second copy of the workload: ${copiesOf(w).join(' ')}`);
}

function migrateCli(w: Workload, to: string): Promise<CliResult> {
  return runCli(['migrate', '--to', to, '--pid', String(w.pid)], 120_000);
}

describe('migration rollback', () => {
  const h = new Harness();
  const agents: Agent[] = [];
  after(async () => {
    for (const a of agents) await a.stop();
    await h.cleanup();
  });

  test('destination unreachable (closed port)', { timeout: 60_000 }, async () => {
    const w = await h.start('counter');
    await waitForOk(w, 1);
    const r = await migrateCli(w, `127.0.0.1:${await freePort()}`);
    await assertRolledBack(w, r, undefined, /connection refused/);
    await h.kill(w);
  });

  test('destination refuses: the pid is taken there (--pid-ns never)', { timeout: 60_000 }, async (t) => {
    const w = await h.start('counter');
    await waitForOk(w, 1);
    // On one host the source's own pid is always taken; without the pid
    // namespace fallback the destination must refuse.
    const agent = await startAgent({ args: ['--pid-ns', 'never'] });
    agents.push(agent);
    const r = await migrateCli(w, agent.address);
    t.diagnostic(r.stderr.trim());
    await assertRolledBack(w, r, agent, /EPIDTAKEN/);
    const failed = await agent.waitEvent((e) => e.event === 'failed', 5000, 'failed');
    assert.equal(failed.phase, 'prepare', JSON.stringify(failed));
    assert.equal(failed.code, 'EPIDTAKEN', JSON.stringify(failed));
    await h.kill(w);
  });

  // The freeze reads the errors of ended TCP connections not yet reported
  // (reading clears them): after a rollback the source still reports each once.
  test('destination agent dies at freeze: closed TCP sockets still report their pending errors', { timeout: 120_000 }, async (t) => {
    const w = await h.start('tcp_closed');
    await waitForOk(w, 1);
    const agent = await startAgent({ fault: 'freeze:kill' });
    agents.push(agent);
    const r = await migrateCli(w, agent.address);
    t.diagnostic(r.stderr.trim());
    await assertRolledBack(w, r, agent);
    await goAndWait(w, GO_CHECKS.tcp_closed);
    assertNoFail(w);
    await h.kill(w);
  });

  // The source process itself dies during pre-copy (killed from outside):
  // the migration fails, and must not claim the process still runs here.
  test('the source process is killed during pre-copy: the failure says it is gone', { timeout: 120_000 }, async () => {
    const w = await h.start('bigmem', { args: ['768'], readyTimeoutMs: 60_000 });
    await waitForOk(w, 1, 60_000);
    const agent = await startAgent();
    agents.push(agent);
    const run = migrateCli(w, agent.address);
    await agent.waitEvent((e) => e.event === 'prepared', 30_000, 'prepared');
    process.kill(w.pid, 'SIGKILL');
    const r = await run;
    assertCliError(r);
    assert.doesNotMatch(r.stderr, /still running here/, describeCli(r));
    assert.match(r.stderr, /no longer running here either/, describeCli(r));
    assert.ok(await waitUntil(() => agent.leftovers().length === 0, 6000),
      `stub processes left by the agent: ${agent.leftovers().join(' ')}\nagent stderr:\n${agent.stderr}`);
    assert.ok(await waitUntil(() => copiesOf(w).length === 0, 6000), `a copy of the workload runs: ${copiesOf(w).join(' ')}`);
    await h.kill(w);
  });

  // Until the destination's engine has the final round, a fault there rolls
  // back. From then on the two engines finish the migration between
  // themselves on the page stream, so the destination AGENT dying or its
  // control connection dropping no longer matters: the tree moves.
  const phases: { phase: string; fault: string; workload: string; args?: string[]; outcome: 'rollback' | 'migrated' }[] = [
    { phase: 'handshake', fault: 'handshake:kill', workload: 'counter', outcome: 'rollback' },
    { phase: 'prepare', fault: 'prepare:kill', workload: 'counter', outcome: 'rollback' },
    // during round 0 of 256 MiB
    { phase: 'pre-copy round', fault: 'precopy:kill:30', workload: 'bigmem', args: ['256'], outcome: 'rollback' },
    // round 1 (dirty pages only) of a workload that keeps writing
    { phase: 'a later pre-copy round', fault: 'round1:kill:0', workload: 'dirtier', args: ['128', '64'], outcome: 'rollback' },
    { phase: 'freeze', fault: 'freeze:kill', workload: 'counter', outcome: 'rollback' },
    { phase: 'final transfer', fault: 'final:kill', workload: 'counter', outcome: 'migrated' },
    { phase: 'restore', fault: 'restore:kill:0', workload: 'counter', outcome: 'migrated' },
    { phase: 'commit', fault: 'commit:kill', workload: 'counter', outcome: 'migrated' },
  ];
  // The control connection cut by the destination (PHAUL_FAULT PHASE:close)
  // at the same phases, both agents living on: the same outcomes.
  const cuts = phases.map((p) => ({ ...p, fault: p.fault.replace(':kill', ':close') }));
  for (const p of [...phases, ...cuts]) {
    const what = p.fault.includes(':close') ? `control connection cut at ${p.phase}` : `destination agent dies at ${p.phase}`;
    test(`${what}: ${p.outcome === 'rollback' ? 'rolls back' : 'the tree moves'}`, { timeout: 120_000 }, async (t) => {
      const w = await h.start(p.workload, { args: p.args, readyTimeoutMs: 30_000 });
      await waitForOk(w, 1, 40_000);
      const agent = await startAgent({ fault: p.fault });
      agents.push(agent);
      const r = await migrateCli(w, agent.address);
      t.diagnostic(r.stderr.trim());
      if (p.fault.includes(':kill')) {
        assert.ok(await agent.waitExit(5000), 'agent did not die');
        assert.equal(agent.exit?.signal, 'SIGKILL', `agent exit ${JSON.stringify(agent.exit)}\n${agent.stderr}`);
      } else {
        const end = await agent.waitEvent((e) => e.event === 'failed' || e.event === 'restored', 10_000, 'failed or restored');
        t.diagnostic(`agent: ${end.event} ${String(end.message ?? '')}`);
        assert.equal(end.event, p.outcome === 'rollback' ? 'failed' : 'restored', JSON.stringify(end));
      }
      try {
        if (p.outcome === 'rollback') {
          await assertRolledBack(w, r, agent);
        } else {
          assertCliOk(r);
          assert.equal(await assertExactlyOneCopy(h, w), 'destination');
          assert.ok(await waitUntil(() => agent.leftovers().length === 0, 6000), `stubs left: ${agent.leftovers().join(' ')}`);
        }
      } finally {
        for (const c of copiesOf(w)) process.kill(c, 'SIGKILL'); // a second copy, if the test failed
      }
      await h.kill(w);
    });
  }
});
