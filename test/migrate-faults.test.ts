// Fault matrix beyond the destination agent's own deaths (migrate-rollback):
// the SOURCE (`phaul migrate`) SIGKILLed at each phase (PHAUL_FAULT_SOURCE),
// and the page stream damaged or cut in transit by a proxy between the two
// agents. Every case must end with exactly one copy of the workload running
// freely here, its log counting on (no FAIL, no repeated counter), and
// nothing left on the destination (stubs) or frozen here.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { after, describe, test } from 'node:test';
import { Agent, startAgent } from './helpers/agent.js';
import { PHAUL_JS, REPO } from './helpers/paths.js';
import { procStatus, runningFreely, waitUntil } from './helpers/proc.js';
import { assertExactlyOneCopy, copiesOf } from './helpers/migrate.js';
import { relay, type Tap } from './helpers/relay.js';
import { freePort } from './helpers/servers.js';
import { assertNoFail, assertOkSequence, Harness, lastOk, waitForOk, type Workload } from './helpers/workload.js';

interface Run { code: number | null; signal: string | null; stderr: string }

function migrateChild(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [PHAUL_JS, 'migrate', ...args], { cwd: REPO, env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    c.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => c.kill('SIGKILL'), 120_000);
    c.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stderr });
    });
  });
}

async function assertOneCopyHere(w: Workload, agent: Agent): Promise<void> {
  assert.equal(w.child.exitCode, null, 'the source copy exited');
  assert.equal(w.child.signalCode, null, 'the source copy was killed');
  assert.ok(await waitUntil(() => runningFreely(w.pid).ok, 10_000), `source not running freely: ${runningFreely(w.pid).why}`);
  await waitForOk(w, lastOk(w) + 2, 20_000);
  assertNoFail(w);
  assertOkSequence(w);
  assert.ok(await waitUntil(() => agent.leftovers().length === 0, 10_000), `stubs left: ${agent.leftovers().join(' ')}\n${agent.stderr}`);
  assert.ok(await waitUntil(() => copiesOf(w).length === 0, 10_000), `second copy: ${copiesOf(w).join(' ')}`);
  assert.equal(agent.exit, undefined, 'the agent died');
}

describe('migration faults: source deaths and a damaged page stream', () => {
  const h = new Harness();
  const agents: Agent[] = [];
  const servers: net.Server[] = [];
  after(async () => {
    for (const s of servers) s.close();
    for (const a of agents) await a.stop();
    await h.cleanup();
  });

  for (const phase of ['handshake', 'precopy', 'freeze', 'final']) {
    test(`source agent SIGKILLed at ${phase}`, { timeout: 120_000 }, async (t) => {
      const w = await h.start(phase === 'precopy' ? 'bigmem' : 'counter', phase === 'precopy' ? { args: ['128'], readyTimeoutMs: 30_000 } : {});
      await waitForOk(w, 1, 40_000);
      const agent = await startAgent();
      agents.push(agent);
      const r = await migrateChild(['--to', agent.address, '--pid', String(w.pid)], { PHAUL_FAULT_SOURCE: phase });
      t.diagnostic(r.stderr.trim());
      assert.equal(r.signal, 'SIGKILL', `migrate was not killed: ${JSON.stringify(r)}`);
      const failed = await agent.waitEvent((e) => e.event === 'failed', 30_000, 'failed');
      t.diagnostic(`agent: failed at ${String(failed.phase)}: ${String(failed.message)}`);
      await assertOneCopyHere(w, agent);
      await h.kill(w);
    });
  }

  // Killed while the destination restores: the source's engine, which
  // outlives its agent, has usually asked for the commit by then and finishes
  // the move; if not, it resumes the tree here. Either way exactly one copy
  // runs, counting on, and the destination's report agrees with where.
  test('source agent SIGKILLed while the destination restores', { timeout: 120_000 }, async (t) => {
    const w = await h.start('counter');
    await waitForOk(w, 1);
    const agent = await startAgent();
    agents.push(agent);
    const r = await migrateChild(['--to', agent.address, '--pid', String(w.pid)], { PHAUL_FAULT_SOURCE: 'restore' });
    t.diagnostic(r.stderr.trim());
    assert.equal(r.signal, 'SIGKILL');
    const end = await agent.waitEvent((e) => e.event === 'failed' || e.event === 'restored', 40_000, 'failed or restored');
    t.diagnostic(`agent: ${end.event} ${String(end.message ?? '')}`);
    const where = await assertExactlyOneCopy(h, w);
    assert.equal(where, end.event === 'restored' ? 'destination' : 'source', `agent says ${end.event}, the copy runs at the ${where}`);
    assert.ok(await waitUntil(() => agent.leftovers().length === 0, 10_000), `stubs left: ${agent.leftovers().join(' ')}`);
    await h.kill(w);
  });

  // The page connection cut right after the source's COMMIT went through:
  // the destination's copy runs, but the source never hears COMMITTED. It
  // must neither resume its copy (two would run) nor kill it (if the commit
  // had been lost, none would): it parks it, stopped and untraced, and says so.
  test('page stream cut between the commit and its answer: the source copy is parked', { timeout: 120_000 }, async (t) => {
    const w = await h.start('counter');
    await waitForOk(w, 1);
    const pagePort = await freePort();
    const agent = await startAgent({ args: ['--page-port', String(pagePort)] });
    agents.push(agent);
    const control = await relay('127.0.0.2', 0, agent.port);
    servers.push(control, await relay('127.0.0.2', pagePort, pagePort, cutAfterCommit()));
    const cport = (control.address() as net.AddressInfo).port;
    const sourcePid = w.pid;
    const r = await migrateChild(['--to', `127.0.0.2:${cport}`, '--pid', String(w.pid)]);
    t.diagnostic(r.stderr.trim());
    assert.notEqual(r.code, 0, 'the source claims a migration whose end it did not hear');
    assert.match(r.stderr, /EUNCERTAIN|may be running its copy/);
    assert.match(r.stderr, new RegExp(`stopped, not killed \\(pids ${sourcePid}\\)`));
    const end = await agent.waitEvent((e) => e.event === 'failed' || e.event === 'restored', 30_000, 'failed or restored');
    assert.equal(end.event, 'restored', JSON.stringify(end));
    assert.ok(await waitUntil(() => (procStatus(sourcePid)?.State ?? '').startsWith('T'), 5000), `source copy not stopped: ${procStatus(sourcePid)?.State}`);
    assert.equal(procStatus(sourcePid)?.TracerPid, '0', 'the parked copy is still traced');
    // What the operator is told to do once the destination runs it.
    process.kill(sourcePid, 'SIGKILL');
    assert.equal(await assertExactlyOneCopy(h, w), 'destination');
    assert.ok(await waitUntil(() => agent.leftovers().length === 0, 6000), `stubs left: ${agent.leftovers().join(' ')}`);
    await h.kill(w);
  });

  const damages: { name: string; workload: string; args?: string[]; tap: Tap }[] = [
    { name: 'one bit flipped early in round 0 (layout or first pages)', workload: 'counter', tap: flipAt(3000) },
    { name: 'one bit flipped deep in the pages of round 0', workload: 'bigmem', args: ['64'], tap: flipAt(20_000_000) },
    { name: 'the HELLO itself damaged (refused at once, no timeout)', workload: 'counter', tap: flipAt(5, 0x40) },
    { name: 'the header of the first frame after the HELLO damaged (frame kind)', workload: 'counter', tap: damageSecondHeader() },
    { name: 'the final state (sent after the last round) damaged', workload: 'counter', tap: damageStateFrame() },
    { name: 'page connection cut mid-round', workload: 'bigmem', args: ['64'], tap: (d, off) => (off + d.length > 10_000_000 ? 'cut' : d) },
  ];
  for (const dmg of damages) {
    test(`page stream: ${dmg.name}`, { timeout: 120_000 }, async (t) => {
      const w = await h.start(dmg.workload, { args: dmg.args, readyTimeoutMs: 30_000 });
      await waitForOk(w, 1, 40_000);
      const pagePort = await freePort();
      const agent = await startAgent({ args: ['--page-port', String(pagePort)] });
      agents.push(agent);
      // The source reaches the agent through 127.0.0.2; the page port the
      // agent announces is then dialed on 127.0.0.2 too: our damaging relay.
      const control = await relay('127.0.0.2', 0, agent.port);
      servers.push(control, await relay('127.0.0.2', pagePort, pagePort, dmg.tap));
      const cport = (control.address() as net.AddressInfo).port;
      const t0 = Date.now();
      const r = await migrateChild(['--to', `127.0.0.2:${cport}`, '--pid', String(w.pid)]);
      t.diagnostic(r.stderr.trim());
      assert.notEqual(r.code, 0, 'a damaged migration succeeded');
      // Damage is detected, not waited out (the page-stream timeouts are 60 s and more).
      assert.ok(Date.now() - t0 < 30_000, `the failure took ${Date.now() - t0} ms`);
      assert.match(r.stderr, /still running here/);
      const failed = await agent.waitEvent((e) => e.event === 'failed', 30_000, 'failed');
      t.diagnostic(`agent: ${String(failed.message)}`);
      await assertOneCopyHere(w, agent);
      await h.kill(w);
    });
  }
});

/** Pass everything up to and including the source's COMMIT frame (kind 7), then cut. */
function cutAfterCommit(): Tap {
  let carry = Buffer.alloc(0);
  return (d) => {
    const win = Buffer.concat([carry, d]);
    for (let i = win.indexOf('PHPG'); i >= 0; i = win.indexOf('PHPG', i + 1)) {
      if (i + 8 <= win.length && win.readUInt32LE(i + 4) === 7) return { last: d };
    }
    carry = win.subarray(Math.max(0, win.length - 7));
    return d;
  };
}

function flipAt(at: number, mask = 0x10): (d: Buffer, off: number) => Buffer {
  return (d, off) => {
    if (at >= off && at < off + d.length) {
      const c = Buffer.from(d);
      c[at - off]! ^= mask;
      return c;
    }
    return d;
  };
}

/** Flip the kind of the second frame (the first one of round 0): the stream is then refused at once. */
function damageSecondHeader(): (d: Buffer, off: number) => Buffer {
  let seen = Buffer.alloc(0);
  let done = false;
  return (d, off) => {
    if (done) return d;
    seen = Buffer.concat([seen, d]);
    const i = seen.indexOf('PHPG', 4);
    if (i < 0 || i + 8 > seen.length) return d;
    done = true;
    const c = Buffer.from(d);
    const at = i + 5 - off;
    if (at >= 0 && at < c.length) c[at]! ^= 0x40;
    return c;
  };
}

/** Flip a byte inside the body of the STATE frame (kind 5), found across chunk boundaries. */
function damageStateFrame(): (d: Buffer, off: number) => Buffer {
  let carry = Buffer.alloc(0);
  let target = -1;
  return (d, off) => {
    if (target < 0) {
      const win = Buffer.concat([carry, d]);
      const base = off - carry.length;
      for (let i = win.indexOf('PHPG'); i >= 0; i = win.indexOf('PHPG', i + 1)) {
        if (i + 8 <= win.length && win.readUInt32LE(i + 4) === 5) {
          target = base + i + 24 + 40;
          break;
        }
      }
      carry = win.subarray(Math.max(0, win.length - 31));
    }
    if (target >= off && target < off + d.length) {
      const c = Buffer.from(d);
      c[target - off]! ^= 0x01;
      return c;
    }
    return d;
  };
}
