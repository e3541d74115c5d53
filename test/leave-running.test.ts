// dump --leave-running: the process keeps running (not stopped, not traced)
// and keeps counting; later it is killed and restored from those images, and
// it resumes from the dump point.
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { assertCliOk, dump, restore } from './helpers/cli.js';
import { procStat, runningFreely } from './helpers/proc.js';
import { assertNoFail, Harness, lastOk, okCounters, readLog, waitForOk } from './helpers/workload.js';

const h = new Harness();
after(() => h.cleanup());

describe('dump --leave-running', () => {
  // only workloads whose state lives entirely in the process: files written
  // after the dump (memory_kinds' shared mapping, files' append log) would
  // legitimately disagree with the older memory image
  const cases: { name: string; args?: string[] }[] = [{ name: 'counter' }, { name: 'threads' }, { name: 'bigmem', args: ['64'] }];
  for (const { name, args } of cases) {
    test(name, { timeout: 90_000 }, async () => {
      const w = await h.start(name, { args });
      await waitForOk(w, 2);
      const images = path.join(w.dir, 'images');
      mkdirSync(images);
      const okBefore = lastOk(w);
      const d = await dump(w.pid, images, ['--leave-running']);
      assertCliOk(d);
      const okAfterDump = lastOk(w);
      assert.ok(readdirSync(images).length > 0, 'dump wrote no files');

      // still running, untouched, still counting
      const st = runningFreely(w.pid);
      assert.ok(st.ok, st.why);
      await waitForOk(w, okAfterDump + 5, 10_000);
      assertNoFail(w);
      const c = okCounters(readLog(w));
      for (let i = 1; i < c.length; i++) assert.equal(c[i], c[i - 1] + 1, 'OK sequence broken while leaving it running');

      // kill the original (our child) and restore the saved state
      await h.kill(w);
      const okAtKill = lastOk(w);
      const linesAtKill = readLog(w).length;
      const pid = await restore(images);
      h.track(pid, w.marker);
      assert.equal(pid, w.pid);
      assert.notEqual(procStat(pid)?.ppid, process.pid);

      // it resumes from the dump point: the next OK lines restart between okBefore and okAfterDump
      const deadline = Date.now() + 20_000;
      let resumed: number[] = [];
      while (Date.now() < deadline) {
        resumed = okCounters(readLog(w).slice(linesAtKill));
        if (resumed.length >= 5) break;
        assertNoFail(w);
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.ok(resumed.length >= 5, `restored process did not report OK (got ${resumed.length} lines)`);
      assert.ok(resumed[0] > okBefore && resumed[0] <= okAfterDump + 1,
        `first OK after restore is ${resumed[0]}, expected in (${okBefore}, ${okAfterDump + 1}] (dump point); killed at ${okAtKill}`);
      for (let i = 1; i < resumed.length; i++) assert.equal(resumed[i], resumed[i - 1] + 1);
      assertNoFail(w);
      await h.kill(w);
    });
  }
});
