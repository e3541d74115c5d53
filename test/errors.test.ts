// Failures must be clean: non-zero exit, exactly one "phaul: ..." line on
// stderr, no stack trace, and a process whose dump failed keeps running
// untouched (not stopped, not traced, still making progress).
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { dump as libraryDump, PhaulError } from '../src/index.js';
import { after, before, describe, test } from 'node:test';
import { assertCliError, assertCliOk, describe as describeRun, dump, parseRestorePid, runCli } from './helpers/cli.js';
import { pidExists, runningFreely, unusedPid, waitPidGone } from './helpers/proc.js';
import { assertNoFail, assertOkSequence, Harness, lastOk, readLog, waitForOk, type Workload } from './helpers/workload.js';

const h = new Harness();
after(() => h.cleanup());

/** After a failed dump the target must be unchanged: running freely and still counting. */
async function assertUntouched(w: Workload): Promise<void> {
  const st = runningFreely(w.pid);
  assert.ok(st.ok, st.why);
  await waitForOk(w, lastOk(w) + 3, 10_000);
  assertNoFail(w);
  assertOkSequence(w);
}

describe('command line', () => {
  test('no arguments: usage, non-zero exit, no stack trace', { timeout: 30_000 }, async () => {
    const r = await runCli([]);
    assert.notEqual(r.code, 0, describeRun(r));
    assert.doesNotMatch(r.stdout + r.stderr, /\n\s+at .+[:(]/, describeRun(r));
  });
  test('unknown command', { timeout: 30_000 }, async () => {
    assertCliError(await runCli(['frobnicate']));
  });
  test('dump without --pid', { timeout: 30_000 }, async () => {
    assertCliError(await runCli(['dump', '--dir', h.tempDir()]));
  });
  test('dump with a non-numeric --pid', { timeout: 30_000 }, async () => {
    assertCliError(await runCli(['dump', '--pid', 'abc', '--dir', h.tempDir()]));
  });
  test('restore without --dir', { timeout: 30_000 }, async () => {
    assertCliError(await runCli(['restore', '--json']));
  });
});

describe('dump failures', () => {
  test('non-existent pid', { timeout: 30_000 }, async () => {
    assertCliError(await dump(unusedPid(), h.tempDir()));
  });

  test('kernel thread (pid 2, kthreadd)', { timeout: 30_000 }, async () => {
    assertCliError(await dump(2, h.tempDir()));
    assert.ok(pidExists(2));
  });

  // Dumping phaul's own process (or the test runner) cannot be aimed at from
  // the CLI without risking the runner itself; covered by library tests later.
  test("phaul's own pid (library API): refused before anything is frozen", { timeout: 30_000 }, async () => {
    // The library runs in this very process: its own pid is the one to refuse.
    const dir = path.join(h.tempDir(), 'self');
    await assert.rejects(libraryDump({ pid: process.pid, dir }), (e: unknown) => {
      assert.ok(e instanceof PhaulError, `expected PhaulError, got ${e}`);
      assert.match(e.message, /phaul itself/);
      assert.ok(!e.message.includes('\n'), 'one line');
      return true;
    });
  });

  test('image dir is a regular file: target keeps running', { timeout: 60_000 }, async () => {
    const w = await h.start('counter');
    await waitForOk(w, 2);
    const file = path.join(w.dir, 'not-a-dir');
    writeFileSync(file, 'x');
    assertCliError(await dump(w.pid, file));
    await assertUntouched(w);
    await h.kill(w);
  });

  test('image dir not writable (under /proc): target keeps running', { timeout: 60_000 }, async () => {
    const w = await h.start('threads');
    await waitForOk(w, 2);
    assertCliError(await dump(w.pid, '/proc/self/phaul-images'));
    await assertUntouched(w);
    await h.kill(w);
  });
});

describe('refused at the dump', () => {
  // A forked child shares its parent's AIO ring pages without the context;
  // the kernel lets nobody open the ring's file, so that cannot be rebuilt.
  test('a child holding an AIO ring inherited over fork: one line, the tree keeps running', { timeout: 60_000 }, async () => {
    const w = await h.start('aio_ring', { args: ['fork'] });
    await waitForOk(w, 2);
    const r = await dump(w.pid, h.tempDir());
    assertCliError(r, /process \d+: AIO ring at 0x[0-9a-f]+: a mapping inherited over fork .*is not supported/);
    assert.equal(r.code, 4, 'exit code of EUNSUPPORTED');
    await assertUntouched(w);
    await h.kill(w);
  });
});

describe('refused at the dump: a process without its main thread', () => {
  // main() called pthread_exit and another thread runs on: the leader is a
  // zombie, the process is not. Once such a child was dumped as a zombie
  // and left running while its parent was killed.
  test('a child whose main thread exited: one line, the tree keeps running', { timeout: 60_000 }, async () => {
    const w = await h.start('headless');
    await waitForOk(w, 2);
    const child = Number(readLog(w).find((l) => l.startsWith('CHILD '))!.split(' ')[1]);
    try {
      const r = await dump(w.pid, h.tempDir());
      assertCliError(r, new RegExp(`process ${child}: its main thread has exited while 1 other threads run on; a process without its main thread is not supported`));
      assert.equal(r.code, 4, 'exit code of EUNSUPPORTED');
      await assertUntouched(w);
    } finally {
      // (its empty command line hides it from the harness's search by marker)
      try { process.kill(child, 'SIGKILL'); } catch { /* gone */ }
      await h.kill(w);
    }
  });
  // An io_uring worker thread can be seized and stopped, but never runs
  // injected code: the dump once waited for it forever, the tree frozen.
  test('io_uring with a worker thread: refused in one line, the process keeps running', { timeout: 60_000 }, async () => {
    const w = await h.start('io_uring_busy');
    await waitForOk(w, 2);
    try {
      const workers = readdirSync(`/proc/${w.pid}/task`).filter((t) => readFileSync(`/proc/${w.pid}/task/${t}/comm`, 'utf8').startsWith('iou-wrk'));
      assert.ok(workers.length > 0, 'the workload has no io_uring worker thread');
      const r = await dump(w.pid, h.tempDir());
      assertCliError(r, /fd \d+: \[io_uring\] is not supported/);
      assert.equal(r.code, 4, 'exit code of EUNSUPPORTED');
      await assertUntouched(w);
    } finally {
      await h.kill(w);
    }
  });
});

describe('a pid held only as a session id', () => {
  // A daemon the dumped root left in its session (orphaned, so not in the
  // tree) keeps the root's pid taken though no process has it: the restore
  // must say so, not fail later in clone3, and work once the daemon is gone.
  test('restore names the process that holds the pid, then works once it is gone', { timeout: 60_000 }, async () => {
    const w = await h.start('session_daemon');
    await waitForOk(w, 2);
    const daemon = Number(readLog(w).find((l) => l.startsWith('DAEMON '))!.split(' ')[1]);
    try {
      const images = path.join(w.dir, 'images');
      mkdirSync(images);
      assertCliOk(await dump(w.pid, images));
      assert.ok(await waitPidGone(w.pid, 5000));
      const r = await runCli(['restore', '--dir', images, '--json']);
      assertCliError(r, new RegExp(`pid ${w.pid} is already in use on this host: it is the (session|process group) id of process ${daemon} `));
      assert.ok(!pidExists(w.pid), 'a failed restore left the pid in use');
      // Not waited for: until this host's init reaps it, the dead daemon
      // still holds the id, and the restore waits for that.
      process.kill(daemon, 'SIGKILL');
      const okAtDump = lastOk(w);
      const pid = parseRestorePid(await runCli(['restore', '--dir', images, '--json']));
      h.track(pid, w.marker);
      assert.equal(pid, w.pid);
      await waitForOk(w, okAtDump + 5, 20_000);
      assertNoFail(w);
    } finally {
      try { process.kill(daemon, 'SIGKILL'); } catch { /* gone */ }
      await h.kill(w);
    }
  });
});

describe('restore failures', () => {
  let good = ''; // a complete image dir of a counter workload (which is dead now)
  let files: string[] = [];
  let dumpedPid = 0;
  let logPath = '';

  before(async () => {
    const w = await h.start('counter');
    logPath = w.log;
    await waitForOk(w, 2);
    good = path.join(w.dir, 'images');
    mkdirSync(good);
    const r = await dump(w.pid, good);
    assertCliOk(r);
    dumpedPid = w.pid;
    assert.ok(await waitPidGone(w.pid, 5000));
    files = readdirSync(good).filter((f) => statSync(path.join(good, f)).isFile());
  });

  /** Run restore on a damaged dir: it must fail cleanly and leave no process behind. */
  async function expectCleanFailure(dir: string, what: string): Promise<void> {
    const r = await runCli(['restore', '--dir', dir, '--json']);
    if (r.code === 0) {
      // a restore that "worked" on a broken image: do not leave it running
      try {
        const pid = parseRestorePid(r);
        h.track(pid, 'counter');
      } catch {
        /* ignore */
      }
      assert.fail(`${what}: restore succeeded\n${describeRun(r)}`);
    }
    assertCliError(r);
    assert.ok(await waitPidGone(dumpedPid, 5000), `${what}: pid ${dumpedPid} exists after a failed restore`);
  }

  test('a file the process holds was truncated since the dump', { timeout: 30_000 }, async () => {
    const saved = readFileSync(logPath);
    try {
      writeFileSync(logPath, '');
      const r = await runCli(['restore', '--dir', good, '--json']);
      assertCliError(r);
      assert.match(r.stderr, /has changed since the dump/);
      assert.ok(await waitPidGone(dumpedPid, 5000), 'no process left behind');
    } finally {
      writeFileSync(logPath, saved);
    }
  });

  test('empty dir', { timeout: 30_000 }, async () => {
    await expectCleanFailure(h.tempDir(), 'empty dir');
  });

  test('dir does not exist', { timeout: 30_000 }, async () => {
    await expectCleanFailure(path.join(h.tempDir(), 'nope'), 'missing dir');
  });

  test('truncated image file (each file in turn)', { timeout: 120_000 }, async () => {
    assert.ok(files.length > 0);
    for (const f of files) {
      if (statSync(path.join(good, f)).size === 0) continue;
      const dir = path.join(h.tempDir(), 'images');
      cpSync(good, dir, { recursive: true });
      const size = statSync(path.join(dir, f)).size;
      truncateSync(path.join(dir, f), Math.floor(size / 2));
      await expectCleanFailure(dir, `${f} truncated from ${size} to ${Math.floor(size / 2)} bytes`);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('missing image file (each file in turn)', { timeout: 120_000 }, async () => {
    assert.ok(files.length > 0);
    for (const f of files) {
      const dir = path.join(h.tempDir(), 'images');
      cpSync(good, dir, { recursive: true });
      rmSync(path.join(dir, f));
      await expectCleanFailure(dir, `${f} missing`);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
