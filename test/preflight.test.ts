// Preflight: runs before anything is frozen and on its own (`phaul migrate
// --dry-run`). A destination that lacks a CPU flag or a file the process maps
// refuses the migration; the source process is never stopped or traced and
// keeps counting. The destination's view is faked with the test-only env vars
// PHAUL_FAKE_CPU_FLAGS, PHAUL_FAKE_XCR0 and PHAUL_FAKE_MISSING_FILES.
import assert from 'node:assert/strict';
import { readlinkSync } from 'node:fs';
import { after, describe, test } from 'node:test';
import { decode, encode, validate } from '../migrate/protocol.js';
import { cpuFlags } from '../migrate/preflight.js';
import { migrate, preflight, PhaulError, type PreflightReport } from '../src/index.js';
import { Agent, startAgent } from './helpers/agent.js';
import { assertCliError, describe as describeCli, runCli } from './helpers/cli.js';
import { runningFreely, sleep } from './helpers/proc.js';
import { assertNoFail, assertOkSequence, Harness, lastOk, waitForOk, type Workload } from './helpers/workload.js';

/** Start an agent with extra environment (the Agent helper copies process.env at spawn). */
async function agentWithEnv(env: Record<string, string>): Promise<Agent> {
  const saved: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(env)) {
    saved[k] = process.env[k];
    process.env[k] = v;
  }
  try {
    return await startAgent();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/** The process ran untouched: never stopped or traced, our child, counting on, and the agent never prepared stubs. */
async function assertUntouched(w: Workload, agent: Agent, okBefore: number): Promise<void> {
  assert.ok(runningFreely(w.pid).ok, runningFreely(w.pid).why);
  assert.equal(w.child.exitCode, null, 'source process exited');
  assert.equal(w.child.signalCode, null, 'source process was signalled');
  await waitForOk(w, okBefore + 2);
  assertNoFail(w);
  assertOkSequence(w);
  assert.equal(agent.events.filter((e) => e.event === 'prepared').length, 0, `the agent prepared a migration:\n${agent.describe()}`);
  assert.ok(agent.events.some((e) => e.event === 'preflight'), `no preflight event:\n${agent.describe()}`);
}

describe('preflight protocol messages', () => {
  test('round-trip and validation', () => {
    const pre = { type: 'preflight', pids: [10, 11], cpu_flags: ['fpu', 'avx2'], files: [{ path: '/bin/x', size: 3, mtime_ms: 5, sha256: 'a'.repeat(64) }, { path: '/tmp/log', size: 0, mtime_ms: 1, writable: true }] } as const;
    const res = { type: 'preflight_result', cpu_flags: ['fpu'], files: [{ path: '/bin/x', status: 'missing', detail: 'ENOENT' }], pids_taken: [10], pid_ns: true, pid_refused: false, missing_required_features: [] } as const;
    assert.deepEqual(decode(encode(pre as never)), pre);
    assert.deepEqual(decode(encode(res as never)), res);
    assert.throws(() => validate({ ...pre, files: [{ path: 'relative', size: 1, mtime_ms: 1 }] }), /path/);
    assert.throws(() => validate({ ...pre, cpu_flags: ['a b'] }), /flag/);
    assert.throws(() => validate({ ...pre, pids: [0] }), /pids/);
    assert.throws(() => validate({ ...pre, files: [{ path: '/x', size: 1, mtime_ms: 1, sha256: 'zz' }] }), /sha256/);
    assert.throws(() => validate({ ...res, files: [{ path: '/x', status: 'gone', detail: '' }] }), /status/);
    assert.throws(() => validate({ ...res, pid_ns: 'yes' }), /pid_ns/);
  });
});

describe('preflight against a destination agent on this host', () => {
  const h = new Harness();
  const agents: Agent[] = [];
  after(async () => {
    for (const a of agents) await a.stop();
    await h.cleanup();
  });

  test('dry run on a matching destination: ok, pid namespace announced, nothing frozen', { timeout: 60_000 }, async () => {
    const agent = await startAgent();
    agents.push(agent);
    const w = await h.start('counter');
    await waitForOk(w, 1);
    const ok0 = lastOk(w);
    const r = await runCli(['migrate', '--to', agent.address, '--pid', String(w.pid), '--dry-run', '--json']);
    assert.equal(r.code, 0, describeCli(r));
    const report = JSON.parse(r.stdout) as PreflightReport;
    assert.equal(report.ok, true, describeCli(r));
    assert.equal(report.pids.pid_ns, true, 'one host: the pids are taken, a pid namespace will be used');
    assert.ok(report.files.checked >= 2, 'exe and libc at least');
    assert.ok(report.files.hashed >= 1);
    const text = await runCli(['migrate', '--to', agent.address, '--pid', String(w.pid), '--dry-run']);
    assert.equal(text.code, 0, describeCli(text));
    assert.match(text.stdout, /would be migrated.*new pid namespace/);
    await assertUntouched(w, agent, ok0);
    await h.kill(w);
  });

  test('(a) destination lacking a CPU flag: refused before freezing, the list of what it lacks', { timeout: 60_000 }, async () => {
    const mine = cpuFlags();
    assert.ok(mine.length > 3, 'no CPU flags in /proc/cpuinfo');
    // the destination pretends to lack the last two flags of this CPU
    const lacking = mine.slice(-2);
    const agent = await agentWithEnv({ PHAUL_FAKE_CPU_FLAGS: mine.slice(0, -2).join(' ') });
    agents.push(agent);
    const w = await h.start('counter');
    await waitForOk(w, 1);
    const ok0 = lastOk(w);
    const phases: string[] = [];
    await assert.rejects(migrate({ pid: w.pid, to: agent.address, onProgress: (p) => phases.push(p.phase) }), (e: PhaulError) => {
      assert.equal(e.code, 'EPREFLIGHT', e.message);
      for (const f of lacking) assert.match(e.message, new RegExp(`\\b${f}\\b`));
      assert.match(e.message, /still running here/);
      assert.deepEqual(((e.details?.report as PreflightReport).cpu.missing_flags), lacking);
      return true;
    });
    assert.deepEqual(phases, ['connecting', 'preflight'], 'nothing after the preflight');
    const r = await runCli(['migrate', '--to', agent.address, '--pid', String(w.pid)]);
    assertCliError(r, /preflight refused: destination CPU lacks flags/);
    assert.equal(r.code, 6, describeCli(r));
    const dry = await runCli(['migrate', '--to', agent.address, '--pid', String(w.pid), '--dry-run', '--json']);
    assert.equal(dry.code, 6, describeCli(dry));
    assert.deepEqual((JSON.parse(dry.stdout) as PreflightReport).cpu.missing_flags, lacking);
    await assertUntouched(w, agent, ok0);
    await h.kill(w);
  });

  test('(b) destination missing a file the process maps: refused, process untouched', { timeout: 60_000 }, async () => {
    const w = await h.start('counter');
    await waitForOk(w, 1);
    const exe = readlinkSync(`/proc/${w.pid}/exe`);
    const agent = await agentWithEnv({ PHAUL_FAKE_MISSING_FILES: exe });
    agents.push(agent);
    const ok0 = lastOk(w);
    await assert.rejects(migrate({ pid: w.pid, to: agent.address }), (e: PhaulError) => {
      assert.equal(e.code, 'EPREFLIGHT', e.message);
      assert.ok(e.message.includes(`file ${exe} missing on the destination`), e.message);
      return true;
    });
    const report = await preflight({ pid: w.pid, to: agent.address });
    assert.equal(report.ok, false);
    assert.deepEqual(report.files.problems.map((f) => [f.path, f.status]), [[exe, 'missing']]);
    await sleep(100);
    await assertUntouched(w, agent, ok0);
    await h.kill(w);
  });

  test('destination lacking an XSAVE component: refused at the hello, dry run lists it', { timeout: 60_000 }, async () => {
    const agent = await agentWithEnv({ PHAUL_FAKE_XCR0: '0x3' });
    agents.push(agent);
    const w = await h.start('counter');
    await waitForOk(w, 1);
    const report = await preflight({ pid: w.pid, to: agent.address });
    assert.equal(report.ok, false);
    assert.equal(report.cpu.xcr0.destination, '0x3');
    assert.notEqual(report.cpu.xcr0.missing, '0x0');
    await assert.rejects(migrate({ pid: w.pid, to: agent.address }), (e: PhaulError) => e.code === 'EINCOMPAT');
    assert.ok(runningFreely(w.pid).ok);
    await h.kill(w);
  });
});
