// Sockets across dump and restore (docs/sockets.md): TCP listeners (v4/v6),
// UDP bound and connected, unix pairs with queued data and listeners, and
// established TCP connections with data in flight both ways (TCP_REPAIR).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { assertCliOk, dump, restore } from './helpers/cli.js';
import { procStat, waitPidGone } from './helpers/proc.js';
import {
  assertNoFail,
  assertOkSequence,
  Harness,
  lastOk,
  readLog,
  waitForLine,
  waitForOk,
  type Workload,
} from './helpers/workload.js';

const h = new Harness();
after(() => h.cleanup());

/** Dump w (it must disappear), restore it under the same pid, wait for two more OK lines. */
async function roundTrip(w: Workload, t: { diagnostic(msg: string): void }, others: number[] = []): Promise<void> {
  const images = path.join(w.dir, `images-${Date.now()}`);
  mkdirSync(images);
  const d = await dump(w.pid, images);
  assertCliOk(d);
  t.diagnostic(`${w.name}: dump took ${d.ms} ms`);
  for (const p of [w.pid, ...others]) assert.ok(await waitPidGone(p, 5000), `pid ${p} still exists after dump`);
  assertNoFail(w);
  const okAtDump = lastOk(w);
  const pid = await restore(images);
  h.track(pid, w.marker);
  assert.equal(pid, w.pid, 'restored under another pid');
  assert.notEqual(procStat(pid)?.ppid, process.pid, 'restored process is a child of the test');
  await waitForOk(w, okAtDump + 2, 20_000);
  assertNoFail(w);
}

function ssListen(port: number): { recvQ: number; sendQ: number } | undefined {
  const out = execFileSync('ss', ['-Hltn', `sport = :${port}`], { encoding: 'utf8' }).trim();
  if (!out) return undefined;
  const f = out.split(/\s+/);
  return { recvQ: Number(f[1]), sendQ: Number(f[2]) };
}

describe('sockets', () => {
  test('TCP listeners v4 and v6: address, backlog, options, accept', { timeout: 90_000 }, async (t) => {
    const w = await h.start('sock_listen');
    await waitForOk(w, 2);
    const ports = readLog(w).find((l) => l.startsWith('PORTS '))!.split(' ').slice(1).map(Number);
    assert.equal(ssListen(ports[0])?.sendQ, 7, 'v4 backlog before');
    await roundTrip(w, t);
    assert.equal(ssListen(ports[0])?.sendQ, 7, 'v4 backlog after restore');
    assert.equal(ssListen(ports[1])?.sendQ, 5, 'v6 backlog after restore');
    // and a second time, from the restored process
    await roundTrip(w, t);
    assertOkSequence(w);
    await h.kill(w);
  });

  test('UDP v4 and v6: bound and connected sockets keep addresses and peers', { timeout: 90_000 }, async (t) => {
    const w = await h.start('sock_udp');
    await waitForOk(w, 2);
    await roundTrip(w, t);
    assertOkSequence(w);
    await h.kill(w);
  });

  test('unix: socketpairs (stream, dgram, seqpacket, shared with a child) with queued data, listeners, bound dgram', { timeout: 90_000 }, async (t) => {
    const w = await h.start('sock_unix');
    await waitForOk(w, 2);
    const child = Number(readLog(w).find((l) => l.startsWith('CHILD '))!.split(' ')[1]);
    await roundTrip(w, t, [child]);
    await roundTrip(w, t, [child]);
    assertOkSequence(w);
    await h.kill(w);
  });
});
