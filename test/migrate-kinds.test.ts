// Every kind of state of the dump+restore suite, under live migration: each
// workload checks its own state from inside, before and after the move.
import { after, before, describe, test } from 'node:test';
import { Agent, startAgent } from './helpers/agent.js';
import { migrateAndCheck, roundsText } from './helpers/migrate.js';
import { assertNoFail, goAndWait, GO_CHECKS, Harness, waitForOk, waitReady, lastOk, readLog, type Workload } from './helpers/workload.js';
import { workloadBin } from './helpers/paths.js';
import { allowPingSockets } from './helpers/sysctl.js';
import { cgroup2Of, makeTestCgroup } from './helpers/cgroup.js';
import path from 'node:path';
import { assertCliError, runCli } from './helpers/cli.js';
import assert from 'node:assert/strict';

describe('state kinds under live migration', () => {
  const h = new Harness();
  let agent: Agent;
  let pingBack = () => {};
  before(async () => {
    pingBack = allowPingSockets();
    agent = await startAgent();
  });
  after(async () => {
    pingBack();
    await agent?.stop();
    await h.cleanup();
  });

  for (const name of ['syscall_block', 'thread_crowd', 'sysv_shm', 'thread_creds', 'memory_kinds', 'vma_advice', 'signals', 'files', 'fifo_unlinked', 'sem_unlinked', 'procattrs', 'seccomp_filters', 'job_stop', 'pidfd_kinds', 'sock_scm', 'sock_senders', 'ptimers_thread', 'tcp_halfclosed', 'sock_filter', 'tcp_closed', 'aio_ring', 'cwd_deleted', 'fanotify_kinds', 'netlink_kinds', 'packet_kinds', 'creds', 'prctls', 'shm_tree', 'tree', 'zombie', 'uffd_kinds', 'sparse_reserve', 'many_areas', 'sock_opts', 'sock_raw', 'exe_deleted', 'fd_limit', 'mlock_future', 'epoll_closed', 'linked_elsewhere', 'huge_none']) {
    test(name, { timeout: 90_000 }, async (t) => {
      const w = await h.start(name);
      await waitForOk(w, 3, 30_000);
      const { summary } = await migrateAndCheck(h, w, agent, { okTimeoutMs: 30_000 });
      t.diagnostic(roundsText(summary));
      // (a process with a userfaultfd is tracked by hashing unless told otherwise)
      if (name === 'uffd_kinds') assert.equal(summary.method, 'hash');
      // (nor is there room for phaul's userfaultfd in a process at its descriptor limit)
      if (name === 'fd_limit') assert.equal(summary.method, 'hash');
      // the dump's warnings reach the summary
      if (name === 'sysv_shm') assert.ok(summary.warnings.some((m) => /SysV shared memory segment/.test(m)), summary.warnings.join('; '));
      // the state survived the move (checked every pass); now the last check
      if (GO_CHECKS[name]) await goAndWait(w, GO_CHECKS[name]);
      if (name === 'vma_advice') {
        // Its passes are 100 ms apart: the OK lines migrateAndCheck waited
        // for may all be the source's; these come from the moved copy.
        await waitForOk(w, lastOk(w) + 2, 10_000);
        assertNoFail(w);
      }
      await h.kill(w);
    });
  }

  // Signal-driven I/O (O_ASYNC, owner, signal) moves; file leases cannot
  // move within one host (the destination's open of the file would break
  // the source's lease): refused at the freeze, the source keeps them.
  test('file_owner: signal-driven I/O moves', { timeout: 90_000 }, async (t) => {
    const w = await h.start('file_owner', { args: ['0'] });
    await waitForOk(w, 3, 30_000);
    const { summary } = await migrateAndCheck(h, w, agent, { okTimeoutMs: 30_000 });
    t.diagnostic(roundsText(summary));
    await h.kill(w);
  });

  // On one host the handoff frees a socket's name by closing the source's
  // descriptors of it, and gives them back on a rollback: a named socket
  // held only in flight has none, and one handed back could not get the
  // descriptors of its queue. Both are refused at the freeze.
  for (const [mode, refusal] of [
    ['named', /the unix socket bound to @phaul-scm-\d+ is held only in flight in a unix socket queue: a migration to this same host cannot carry it/],
    ['bound', /the unix socket bound to \S+\/scm\.sock has descriptors in flight in its queue: a migration to this same host cannot carry it/],
  ] as const) {
    test(`sock_scm ${mode}: refused on one host, the source keeps its queues`, { timeout: 90_000 }, async () => {
      const w = await h.start('sock_scm', { args: [mode] });
      await waitForOk(w, 3, 30_000);
      const r = await runCli(['migrate', '--to', agent.address, '--pid', String(w.pid), '--json'], 60_000);
      assertCliError(r, refusal);
      await waitForOk(w, lastOk(w) + 3, 10_000);
      await goAndWait(w, GO_CHECKS.sock_scm);
      assertNoFail(w);
      await h.kill(w);
    });
  }

  // Pipes to a process outside the tree (a supervisor or a shell pipeline
  // reading the output): on one host the restored ends are the same pipes,
  // opened through /proc of the frozen source, so the helper outside keeps
  // exchanging values with the moved process, none lost or repeated.
  test('pipe_outside: pipes to a process outside the tree stay connected on one host', { timeout: 90_000 }, async (t) => {
    const w = await h.start('pipe_outside');
    await waitForOk(w, 3, 30_000);
    const { summary } = await migrateAndCheck(h, w, agent, { okTimeoutMs: 30_000 });
    t.diagnostic(roundsText(summary));
    const echoed = () => readLog(w).filter((l) => l.startsWith('PIPE_OK ')).length;
    const before = echoed();
    await waitForOk(w, lastOk(w) + 3, 10_000);
    assert.ok(echoed() >= before + 2, `the helper outside the tree stopped hearing from the moved process (${before} -> ${echoed()} PIPE_OK lines)`);
    assertNoFail(w);
    await h.kill(w);
  });

  test('posix_mq: a POSIX message queue is refused clearly, the source runs on', { timeout: 90_000 }, async () => {
    const w = await h.start('posix_mq');
    await waitForOk(w, 3, 30_000);
    const r = await runCli(['migrate', '--to', agent.address, '--pid', String(w.pid), '--json'], 60_000);
    assertCliError(r, /fd \d+: POSIX message queue \/phaul-test-mq-\d+( \(deleted\))? \(mq_open\) is not supported.*still running here/);
    await waitForOk(w, lastOk(w) + 3, 10_000);
    assertNoFail(w);
    await h.kill(w);
  });

  test('io_uring_busy: io_uring is refused before pre-copy, the source runs on', { timeout: 90_000 }, async () => {
    const w = await h.start('io_uring_busy');
    await waitForOk(w, 3, 30_000);
    const r = await runCli(['migrate', '--to', agent.address, '--pid', String(w.pid), '--json'], 60_000);
    assertCliError(r, /process \d+: fd \d+: io_uring is not supported.*still running here/);
    assert.ok(r.ms < 20_000, `refusal took ${r.ms} ms`);
    await waitForOk(w, lastOk(w) + 3, 10_000);
    assertNoFail(w);
    await h.kill(w);
  });

  test('file_owner: leases on one host are refused, the source keeps them', { timeout: 90_000 }, async () => {
    const w = await h.start('file_owner', { args: ['1'] });
    await waitForOk(w, 3, 30_000);
    const r = await runCli(['migrate', '--to', agent.address, '--pid', String(w.pid), '--json'], 60_000);
    assertCliError(r, /holds a lease on fd \d+: a migration to this same host cannot carry file leases.*still running here/);
    assert.ok(r.ms < 20_000, `refusal took ${r.ms} ms`);
    await waitForOk(w, lastOk(w) + 3, 10_000);
    assertNoFail(w);
    await h.kill(w);
  });

  test('fanotify_kinds: a pending permission event is refused at the freeze, the source runs on', { timeout: 90_000 }, async () => {
    const w = await h.start('fanotify_kinds', { args: ['pending'] });
    await waitForOk(w, 3, 30_000);
    const r = await runCli(['migrate', '--to', agent.address, '--pid', String(w.pid), '--json'], 60_000);
    assertCliError(r, /fanotify group with permission events while process \d+ waits for a permission decision/);
    await waitForOk(w, lastOk(w) + 3, 10_000);
    await goAndWait(w, 'PERM_ANSWERED');
    assertNoFail(w);
    await h.kill(w);
  });

  // Processes sharing a descriptor table or cwd/umask (clone flags), and
  // descriptors and cwd under /proc/PID (the destination runs the tree in
  // a pid namespace: the entries must name the moved processes).
  for (const [name, args] of [['share_files', []], ['share_fs', []], ['proc_entries', []], ['proc_entries', ['dead']]] as const) {
    test([name, ...args].join(' '), { timeout: 90_000 }, async (t) => {
      const w = await h.start(name, { args: [...args] });
      await waitForOk(w, 3, 30_000);
      const { summary } = await migrateAndCheck(h, w, agent, { okTimeoutMs: 30_000 });
      t.diagnostic(roundsText(summary));
      // These OK lines come from the moved copy (the source is gone).
      await waitForOk(w, lastOk(w) + 2, 10_000);
      assertNoFail(w);
      await h.kill(w);
    });
  }

  // A namespace the tree does not share with phaul (here UTS) is not
  // carried: the tree moves, and the summary says so.
  test('counter in a UTS namespace of its own: moved, with a warning', { timeout: 90_000 }, async () => {
    const dir = h.tempDir('phaul-uts-');
    const log = path.join(dir, 'counter.log');
    const child = h.spawnDetached('unshare', ['--uts', '--', workloadBin('counter'), log], dir, log);
    const w: Workload = { name: 'counter', pid: child.pid!, dir, log, marker: log, child };
    await waitReady(w);
    await waitForOk(w, 3, 30_000);
    const pid = w.pid; // (migrateAndCheck moves w to the restored copy)
    const { summary } = await migrateAndCheck(h, w, agent, { okTimeoutMs: 30_000 });
    assert.ok(summary.warnings.some((m) => new RegExp(`process ${pid} runs in a UTS \\(host name\\) namespace other than phaul's`).test(m)), summary.warnings.join('; '));
    await waitForOk(w, lastOk(w) + 2, 10_000);
    assertNoFail(w);
    await h.kill(w);
  });

  // Refused at the start (an address space shared by two processes): the
  // source keeps running.
  for (const [name, args, pattern] of [
    ['share_vm', [], /processes \d+ and \d+ share one address space \(CLONE_VM\): not supported.*still running here/],
  ] as const) {
    test(`${name} ${args.join(' ')}: refused, the source keeps running`, { timeout: 90_000 }, async () => {
      const w = await h.start(name, { args: [...args] });
      await waitForOk(w, 3, 30_000);
      const r = await runCli(['migrate', '--to', agent.address, '--pid', String(w.pid), '--json'], 60_000);
      assertCliError(r, pattern);
      await waitForOk(w, lastOk(w) + 3, 10_000);
      assertNoFail(w);
      await h.kill(w);
    });
  }

  // By default a process with a userfaultfd is tracked by hashing (it could
  // not register an area phaul's uffd-wp tracking holds: EBUSY). Asked for,
  // uffd-wp tracking works beside it: the process's own areas refuse the
  // tracker's registration and are sent whole every round, and the moved
  // copy gets the process's registrations and none of the tracker's.
  test('uffd_kinds (uffd-wp tracking asked for)', { timeout: 90_000 }, async (t) => {
    const w = await h.start('uffd_kinds');
    await waitForOk(w, 3, 30_000);
    const { summary } = await migrateAndCheck(h, w, agent, { okTimeoutMs: 30_000, extra: ['--track', 'uffd-wp'] });
    t.diagnostic(roundsText(summary));
    assert.equal(summary.method, 'uffd-wp');
    await goAndWait(w, GO_CHECKS.uffd_kinds);
    await h.kill(w);
  });

  test('uffd_kinds: a wait in the kernel for a userfaultfd page is refused at the freeze, the source runs on', { timeout: 90_000 }, async () => {
    const w = await h.start('uffd_kinds', { args: ['syscall'] });
    await waitForOk(w, 3, 30_000);
    const r = await runCli(['migrate', '--to', agent.address, '--pid', String(w.pid), '--json'], 60_000);
    assertCliError(r, /does not stop: it waits in the kernel for its userfaultfd \(fd \d+\) handler, most likely a page fault in a system call/);
    await waitForOk(w, lastOk(w) + 3, 10_000);
    await goAndWait(w, GO_CHECKS.uffd_kinds);
    assertNoFail(w);
    await h.kill(w);
  });

  // Cgroup membership: a restored tree is forked by the destination's
  // engine, in its cgroups; it is put back in the cgroups of the source's
  // paths where they exist there (on one host, the same ones).
  test('cgroup: the moved process is back in its cgroup', { timeout: 90_000 }, async (t) => {
    const cg = makeTestCgroup(`phaul-test-${process.pid}`);
    if (!cg) return t.skip('no cgroup2 hierarchy to make a test cgroup in');
    try {
      const w = await h.start('counter');
      cg.add(w.pid);
      await waitForOk(w, 3, 30_000);
      assert.equal(cgroup2Of(w.pid), cg.path);
      const { summary } = await migrateAndCheck(h, w, agent, { okTimeoutMs: 30_000 });
      t.diagnostic(roundsText(summary));
      assert.equal(cgroup2Of(w.pid), cg.path, 'the moved process is not in its cgroup');
      await h.kill(w);
    } finally {
      cg.remove();
    }
  });

  // Shared memory written only by children that live and end during
  // pre-copy (postgres's backends): no tracker sees their writes, so the
  // final round reads what the object holds and sends the pages that differ
  // from what was sent of them, not all of them again.
  test('shm_writers: writes of processes that ended unseen arrive; only changed pages go again', { timeout: 90_000 }, async (t) => {
    const w = await h.start('shm_writers');
    await waitForOk(w, 3, 30_000);
    const { summary } = await migrateAndCheck(h, w, agent, { okTimeoutMs: 30_000 });
    t.diagnostic(roundsText(summary));
    assert.ok(summary.final.pages < 16384, `the final round sent ${summary.final.pages} pages: every page of the shared memory again`);
    await h.kill(w);
  });

  // The tree changes during pre-copy and at the freeze (children forked and
  // reaped every few ms): the final round drops the destination's stubs of
  // the processes gone (each reaped by its parent's stub), makes the new
  // ones (their whole memory in the final round) and zombies as they are.
  for (const [mode, extra] of [['pre-copy', []], ['stop-and-copy', ['--max-rounds', '0']], ['pre-copy, hash tracking', ['--track', 'hash']]] as const) {
    test(`churn_children (${mode})`, { timeout: 90_000 }, async (t) => {
      const w = await h.start('churn_children');
      await waitForOk(w, 3, 30_000);
      const { summary } = await migrateAndCheck(h, w, agent, { okTimeoutMs: 30_000, extra: [...extra] });
      t.diagnostic(roundsText(summary));
      await h.kill(w);
    });
  }

  // The layout changes inside a round (mmap, munmap and mremap every 2 ms):
  // the destination applies the round's layout, on the thread that traces
  // its stubs, before the pages that follow it; maps anew what the source
  // replaced (new areas at old addresses must not show old bytes); and keeps
  // each area one kernel VMA (the workload mremaps whole areas).
  for (const [mode, extra] of [['pre-copy', []], ['stop-and-copy', ['--max-rounds', '0']], ['pre-copy, hash tracking', ['--track', 'hash']]] as const) {
    test(`mmap_churn (${mode})`, { timeout: 90_000 }, async (t) => {
      const w = await h.start('mmap_churn', { args: ['128'] });
      await waitForOk(w, 3, 30_000);
      const { summary } = await migrateAndCheck(h, w, agent, { okTimeoutMs: 30_000, extra: [...extra] });
      t.diagnostic(roundsText(summary));
      await h.kill(w);
    });
  }
});
