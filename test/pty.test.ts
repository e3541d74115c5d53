// Pseudo-terminal pairs (docs/limitations.md, docs/state-json.md): a pair the
// tree opened for itself comes back as one connected pair with its termios,
// window size, controlling-terminal session and foreground group, after a
// dump + restore and after a live migration. test/workloads/pty.c checks all
// of it from inside (data both ways through the pair, /dev/tty of the session
// leader and of a member); it fails within 5 s when the pair is not connected.
// A slave whose master is outside the tree is reopened by path, as before.
import assert from 'node:assert/strict';
import { mkdirSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Agent, startAgent } from './helpers/agent.js';
import { assertCliOk, dump, restore, runCli } from './helpers/cli.js';
import { migrateAndCheck } from './helpers/migrate.js';
import { cmdline, descendants, procStat, waitPidGone, waitUntil } from './helpers/proc.js';
import { workloadBin } from './helpers/paths.js';
import { assertNoFail, assertOkSequence, Harness, lastOk, readLog, waitForOk, waitReady, type Workload } from './helpers/workload.js';

interface FileEntry {
  id: number;
  kind: string;
  path?: string;
  pty_id?: number;
  pty?: { index: number; session?: number; fg_pgrp?: number; winsize: { row: number; col: number }; termios: { cc: number[] } };
}

async function inspectFiles(images: string): Promise<{ files: FileEntry[]; processes: { pid: number; sid: number; pgid: number }[] }> {
  const r = await runCli(['inspect', images, '--json']);
  assertCliOk(r);
  return JSON.parse(r.stdout);
}

describe('pseudo-terminal pairs', () => {
  const h = new Harness();
  let agent: Agent | undefined;
  before(async () => {
    agent = await startAgent();
  });
  after(async () => {
    await agent?.stop();
    await h.cleanup();
  });

  test('a pair opened by the tree survives dump + restore, with its controlling terminal', { timeout: 60_000 }, async (t) => {
    const w = await h.start('pty');
    await waitForOk(w, 5);
    const images = path.join(w.dir, 'images');
    mkdirSync(images);
    const d = await dump(w.pid, images);
    assertCliOk(d);
    assert.ok(await waitPidGone(w.pid, 5000), `pid ${w.pid} still exists after dump`);
    assertNoFail(w);

    // The image links master and slave, and knows whose terminal it was.
    const state = await inspectFiles(images);
    const master = state.files.find((f) => f.kind === 'pty_master');
    assert.ok(master?.pty, `no pty_master entry: ${JSON.stringify(state.files)}`);
    const slaves = state.files.filter((f) => f.kind === 'pty_slave');
    assert.ok(slaves.length >= 1, 'no pty_slave entry');
    for (const s of slaves) assert.equal(s.pty_id, master.pty_id, 'slave and master carry different pty ids');
    const leader = state.processes.find((p) => p.pid !== w.pid && p.sid === p.pid);
    const member = state.processes.find((p) => p.pid !== w.pid && p.pid !== leader?.pid);
    assert.ok(leader && member, 'the tree should hold the session leader and its member');
    assert.equal(master.pty.session, leader.pid, 'controlling-terminal session');
    assert.equal(master.pty.fg_pgrp, member.pgid, 'foreground process group');
    assert.deepEqual([master.pty.winsize.row, master.pty.winsize.col], [37, 123]);
    assert.equal(master.pty.termios.cc[6], 6, 'VMIN');

    const okAtDump = lastOk(w);
    const pid = await restore(images);
    h.track(pid, w.marker);
    assert.equal(pid, w.pid, 'restored under another pid');
    await waitForOk(w, okAtDump + 20, 20_000);
    assertNoFail(w);
    assertOkSequence(w);
    // From outside too: the session leader's controlling terminal is a pts.
    const ttyNr = procStat(leader.pid)?.tty_nr ?? 0;
    assert.ok(ttyNr >> 8 >= 136 && ttyNr >> 8 <= 143, `leader's tty_nr ${ttyNr} is not a pts`);
    t.diagnostic(`pty index ${master.pty.index} before, /dev/pts/${(((ttyNr >> 8) - 136) << 8) + (ttyNr & 0xff)} after`);
    await h.kill(w);
  });

  test('a pair opened by the tree survives live migration', { timeout: 90_000 }, async () => {
    // Stubs of a migration exist before the pairs: only the session leader
    // gets its controlling terminal back (docs/limitations.md).
    const w = await h.start('pty', { args: ['leader-ctty-only'] });
    await waitForOk(w, 5);
    await migrateAndCheck(h, w, agent!, { okTimeoutMs: 30_000 });
    await waitForOk(w, lastOk(w) + 20, 20_000);
    assertNoFail(w);
    assertOkSequence(w);
    await h.kill(w);
  });

  test('a slave whose master is outside the tree is reopened by path', { timeout: 60_000 }, async () => {
    // python3 holds master and slave of a pair and runs `counter` on the slave;
    // both stay open while counter is dumped and restored.
    const dir = h.tempDir('phaul-pty-outside-');
    const log = path.join(dir, 'counter.log');
    const holder = `
import os, sys, time
m, s = os.openpty()
pid = os.fork()
if pid == 0:
    for fd in (0, 1, 2):
        os.dup2(s, fd)
    os.execv(sys.argv[1], sys.argv[1:])
os.waitpid(pid, 0)  # reaped when the dump kills it, so that its pid is free
time.sleep(3600)
`;
    const py = h.spawnDetached('python3', ['-c', holder, workloadBin('counter'), log], dir, log);
    // (python3 may be a launcher script: look for the workload by its command line)
    let pid = 0;
    await waitUntil(() => {
      pid = descendants(py.pid!).find((p) => (cmdline(p) ?? '').startsWith(workloadBin('counter'))) ?? 0;
      return pid > 0;
    }, 5000);
    const w: Workload = { name: 'counter', pid, dir, log, marker: log, child: py };
    await waitReady(w);
    await waitForOk(w, 3);
    const before = readlinkSync(`/proc/${pid}/fd/0`);
    assert.match(before, /^\/dev\/pts\/\d+$/);
    const images = path.join(dir, 'images');
    mkdirSync(images);
    assertCliOk(await dump(pid, images));
    assert.ok(await waitPidGone(pid, 5000));
    const state = await inspectFiles(images);
    assert.ok(!state.files.some((f) => f.kind.startsWith('pty_')), 'an outside terminal became a pty entry');
    assert.ok(state.files.some((f) => f.kind === 'chr' && f.path === before), `${before} not dumped as a character device`);
    const okAtDump = lastOk(w);
    const again = await restore(images);
    h.track(again, log);
    await waitForOk(w, okAtDump + 5, 20_000);
    assertNoFail(w);
    assert.equal(readlinkSync(`/proc/${again}/fd/0`), before, 'stdin is not the same terminal');
    assert.ok(readLog(w).length > 0);
  });
});
