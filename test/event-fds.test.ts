// Descriptors without a path (eventfd, timerfd, signalfd, epoll, inotify,
// memfd), files unlinked while open, POSIX timers and file locks: one dump +
// restore round trip per workload (test/workloads/evfd_*.c); each workload
// checks its own objects from inside after the restore (docs/event-fds.md).
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { assertCliError, assertCliOk, dump, restore } from './helpers/cli.js';
import { isAlive, procStat, waitPidGone } from './helpers/proc.js';
import { assertNoFail, assertOkSequence, Harness, lastOk, waitForOk } from './helpers/workload.js';

const names = ['eventfd', 'timerfd', 'signalfd', 'epoll', 'inotify', 'memfd', 'unlinked', 'ptimers', 'locks'];

describe('event descriptors and friends', () => {
  const h = new Harness();
  after(() => h.cleanup());

  for (const name of names) {
    test(name, { timeout: 60_000 }, async (t) => {
      const w = await h.start(`evfd_${name}`);
      await waitForOk(w, 5);
      const images = path.join(w.dir, 'images');
      mkdirSync(images);
      const d = await dump(w.pid, images);
      assertCliOk(d);
      t.diagnostic(`dump took ${d.ms} ms`);
      assert.ok(await waitPidGone(w.pid, 5000), `pid ${w.pid} still exists after dump`);
      assertNoFail(w);
      const okAtDump = lastOk(w);
      const pid = await restore(images);
      h.track(pid, w.marker);
      assert.equal(pid, w.pid, 'restored under another pid');
      assert.notEqual(procStat(pid)?.ppid, process.pid);
      await waitForOk(w, okAtDump + 10, 20_000);
      assertNoFail(w);
      assertOkSequence(w);
      await h.kill(w);
    });
  }

  test('an epoll watch through a closed descriptor whose file only another process holds is refused and the process keeps running', { timeout: 30_000 }, async () => {
    const w = await h.start('evfd_epoll', { args: ['closed-watch'] });
    await waitForOk(w, 2);
    const images = path.join(w.dir, 'images');
    mkdirSync(images);
    const d = await dump(w.pid, images);
    assertCliError(d, /fd \d+: epoll watch on fd \d+ that is closed or now names another file, and whose file no other descriptor of the process holds .*is not supported/);
    assert.ok(isAlive(w.pid), 'process died after a refused dump');
    await waitForOk(w, lastOk(w) + 2);
    assertNoFail(w);
    await h.kill(w);
  });
});
