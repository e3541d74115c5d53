// One dump + restore round trip per workload: start it, let it report OK,
// dump it (the process must disappear), restore it (same pid, not our child)
// and wait until it reports OK with higher counters, never FAIL.
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { allowPingSockets } from './helpers/sysctl.js';
import { cgroup2Of, makeTestCgroup } from './helpers/cgroup.js';
import { assertCliError, assertCliOk, dump, restore, runCli } from './helpers/cli.js';
import { pidExists, procStat, waitPidGone } from './helpers/proc.js';
import {
  assertNoFail,
  assertOkSequence,
  goAndWait,
  GO_CHECKS,
  Harness,
  lastOk,
  readLog,
  waitForLine,
  waitForOk,
  type Workload,
} from './helpers/workload.js';

const BIGMEM_MIB = process.env.PHAUL_TEST_BIGMEM_MIB ?? '1024';

interface Spec {
  name: string;
  args?: string[];
  /** how long to wait for OK lines after the restore */
  okTimeoutMs?: number;
  /** extra checks after the restored process reported OK */
  afterRestore?: (w: Workload, linesAtDump: number, t: { diagnostic(msg: string): void }) => Promise<void>;
}

/** "TREE P A G B" line of tree.c */
function treePids(w: Workload): number[] {
  const line = readLog(w).find((l) => l.startsWith('TREE '));
  assert.ok(line, 'tree: no TREE line');
  return line.split(' ').slice(1).map(Number);
}

const specs: Spec[] = [
  { name: 'counter' },
  { name: 'threads' },
  { name: 'thread_crowd' },
  { name: 'sysv_shm' },
  { name: 'thread_creds' },
  { name: 'bigmem', args: [BIGMEM_MIB], okTimeoutMs: 40_000 },
  { name: 'syscall_block', okTimeoutMs: 30_000 },
  { name: 'memory_kinds' },
  { name: 'vma_advice' },
  {
    name: 'signals',
    async afterRestore(w) {
      // pending signals survived (checked by the workload every pass); now let them be delivered
      writeFileSync(`${w.log}.go`, '');
      await waitForLine(w, (l) => l === 'DELIVERED', 10_000, 'DELIVERED');
      const idx = readLog(w).indexOf('DELIVERED');
      const okAfter = readLog(w).slice(idx).find((l) => l.startsWith('OK '));
      await waitForOk(w, okAfter ? Number(okAfter.split(' ')[1]) + 2 : lastOk(w) + 2);
    },
  },
  { name: 'files' },
  // removed FIFOs come back nameless with their bytes; one-ended ones read end-of-file / fail with EPIPE
  { name: 'fifo_unlinked', afterRestore: (w) => goAndWait(w, GO_CHECKS.fifo_unlinked) },
  { name: 'procattrs' },
  { name: 'file_owner' },
  { name: 'cwd_deleted' },
  { name: 'sem_unlinked' },
  { name: 'tcp_halfclosed' },
  { name: 'sock_filter' },
  // errors pending at the dump are reported once, after the restore
  { name: 'tcp_closed', afterRestore: (w) => goAndWait(w, GO_CHECKS.tcp_closed) },
  // completed AIO events left in the ring at the dump are reaped after the restore
  { name: 'aio_ring', afterRestore: (w) => goAndWait(w, GO_CHECKS.aio_ring) },
  { name: 'ptimers_thread' },
  // the restored pidfd kills and reaps the restored child
  { name: 'pidfd_kinds', afterRestore: (w) => goAndWait(w, GO_CHECKS.pidfd_kinds) },
  // descriptors in flight in unix socket queues are received and checked
  { name: 'sock_scm', afterRestore: (w) => goAndWait(w, GO_CHECKS.sock_scm) },
  // queued datagrams keep their senders' addresses (senders gone too)
  { name: 'sock_senders', afterRestore: (w) => goAndWait(w, GO_CHECKS.sock_senders) },
  // the child came back stopped (checked by the workload); now continue it
  { name: 'job_stop', afterRestore: (w) => goAndWait(w, GO_CHECKS.job_stop) },
  // the restored child is still in strict mode: a forbidden call kills it
  { name: 'seccomp_filters', afterRestore: (w) => goAndWait(w, GO_CHECKS.seccomp_filters) },
  // the restored permission group denies an open from outside the tree
  { name: 'fanotify_kinds', afterRestore: (w) => goAndWait(w, GO_CHECKS.fanotify_kinds) },
  // userfaultfds: never-touched pages still fault to the handler, filled
  // ones do not, write-protected pages still trap, a thread waiting in a
  // fault at the dump gets its page
  { name: 'uffd_kinds', afterRestore: (w) => goAndWait(w, GO_CHECKS.uffd_kinds) },
  { name: 'netlink_kinds' },
  { name: 'packet_kinds' },
  { name: 'creds' },
  { name: 'zombie' },
  // a 32 GiB MAP_NORESERVE reservation with 4096 pages written
  { name: 'sparse_reserve' },
  // 6000 kernel areas (3000 of two pages, each with a read-only half)
  { name: 'many_areas' },
  // children forked and reaped every few ms, zombies among them at the dump
  { name: 'churn_children' },
  { name: 'shm_tree' },
  { name: 'shm_writers' },
  { name: 'fd_limit' },
  { name: 'mlock_future' },
  { name: 'mlock_future', args: ['onfault'] },
  { name: 'epoll_closed' },
  { name: 'linked_elsewhere' },
  { name: 'huge_none' },
  // processes sharing a descriptor table (CLONE_FILES) or cwd and umask (CLONE_FS)
  { name: 'share_files' },
  { name: 'share_fs' },
  // descriptors and cwd on /proc/self, /proc/thread-self and /proc/<child>
  { name: 'proc_entries' },
  // a descriptor on the /proc directory and one on a file of reaped
  // children, and the cwd in the directory of a third: dead entries again
  { name: 'proc_entries', args: ['dead'] },
  { name: 'prctls' },
  // buffer sizes and reception flags set on sockets, a datagram from a closed end
  { name: 'sock_opts' },
  // its executable removed while it runs
  { name: 'exe_deleted' },
  // raw ICMP (with a filter), IPPROTO_RAW, UDP-Lite and a connected ping socket
  { name: 'sock_raw', async afterRestore(w) { assert.ok(readLog(w).includes('PING yes'), 'sock_raw: no ping socket was made'); } },
  {
    name: 'tree',
    async afterRestore(w) {
      const [P, A, G, B] = treePids(w);
      for (const p of [P, A, G, B]) assert.ok(pidExists(p), `tree: pid ${p} was not restored`);
      assert.equal(procStat(A)?.ppid, P, 'tree: parent of A');
      assert.equal(procStat(G)?.ppid, A, 'tree: parent of G');
      assert.equal(procStat(B)?.ppid, P, 'tree: parent of B');
    },
  },
  {
    name: 'tick',
    async afterRestore(w, linesAtDump, t) {
      const gaps = readLog(w)
        .slice(linesAtDump)
        .filter((l) => l.startsWith('GAP '))
        .map((l) => Number(l.split(' ')[1]));
      assert.ok(gaps.length > 0, 'tick: no GAP line after the restore');
      t.diagnostic(`tick: largest gap after restore ${Math.max(...gaps)} us`);
    },
  },
];

describe('dump and restore', () => {
  const h = new Harness();
  let pingBack = () => {};
  before(() => {
    pingBack = allowPingSockets();
  });
  after(async () => {
    pingBack();
    await h.cleanup();
  });

  for (const spec of specs) {
    test([spec.name, ...(spec.args ?? [])].join(' '), { timeout: 90_000 }, async (t) => {
      const w = await h.start(spec.name, { args: spec.args });
      const tree = spec.name === 'tree' ? treePids(w) : [w.pid];
      await waitForOk(w, 2);

      const images = path.join(w.dir, 'images');
      mkdirSync(images);
      const d = await dump(w.pid, images);
      assertCliOk(d);
      t.diagnostic(`dump took ${d.ms} ms`);
      for (const p of tree) assert.ok(await waitPidGone(p, 5000), `pid ${p} still exists after dump`);
      assert.ok(readdirSync(images).length > 0, 'dump wrote no files');
      // Every dump can be read back by a person and by a program.
      const text = await runCli(['inspect', images]);
      assertCliOk(text);
      assert.match(text.stdout, new RegExp(`^process ${w.pid} `, 'm'), text.stdout);
      const doc = await runCli(['inspect', images, '--json']);
      assertCliOk(doc);
      assert.equal(JSON.parse(doc.stdout).processes[0].pid, w.pid);
      assertNoFail(w);
      const okAtDump = lastOk(w);
      const linesAtDump = readLog(w).length;

      const pid = await restore(images);
      h.track(pid, w.marker);
      assert.equal(pid, w.pid, 'restored under another pid');
      assert.notEqual(procStat(pid)?.ppid, process.pid, 'restored process is a child of the test');

      await waitForOk(w, okAtDump + 2, spec.okTimeoutMs ?? 20_000);
      if (spec.afterRestore) await spec.afterRestore(w, linesAtDump, t);
      assertNoFail(w);
      assertOkSequence(w);
      await h.kill(w);
    });
  }

  // Cgroup membership comes back where the path exists; where it no longer
  // does, the process stays in phaul's and the restore says so.
  test('cgroup: back in its cgroup, or left where it is with a warning', { timeout: 90_000 }, async (t) => {
    const cg = makeTestCgroup(`phaul-test-${process.pid}`);
    if (!cg) return t.skip('no cgroup2 hierarchy to make a test cgroup in');
    try {
      for (const gone of [false, true]) {
        const w = await h.start('counter');
        cg.add(w.pid);
        await waitForOk(w, 2);
        const images = path.join(w.dir, 'images');
        mkdirSync(images);
        assertCliOk(await dump(w.pid, images));
        assert.ok(await waitPidGone(w.pid, 5000));
        if (gone) cg.remove();
        const r = await runCli(['restore', '--dir', images]);
        assertCliOk(r);
        h.track(w.pid, w.marker);
        await waitForOk(w, lastOk(w) + 2, 20_000);
        if (gone) {
          assert.notEqual(cgroup2Of(w.pid), cg.path);
          assert.match(r.stderr, new RegExp(`process ${w.pid}: cgroup v2 ${cg.path} does not exist here: left in phaul's`), r.stderr);
        } else {
          assert.equal(cgroup2Of(w.pid), cg.path, 'the restored process is not in its cgroup');
        }
        await h.kill(w);
      }
    } finally {
      cg.remove();
    }
  });

  // What cannot be carried over is refused at the dump, and the process runs on.
  const refusals: { name: string; args: string[]; error: RegExp; go?: string }[] = [
    {
      // a process outside the tree waits for the group's decision on an open
      name: 'fanotify_kinds',
      args: ['pending'],
      error: /fd \d+: fanotify group with permission events while process \d+ waits for a permission decision .* is not supported/,
      go: 'PERM_ANSWERED',
    },
    { name: 'packet_kinds', args: ['ring'], error: /fd \d+: packet socket with a memory-mapped ring \(PACKET_RX_RING\) .* is not supported/ },
    // two processes sharing one address space (clone with CLONE_VM, not vfork)
    { name: 'share_vm', args: [], error: /processes \d+ and \d+ share one address space \(CLONE_VM\): not supported/ },
    // a child keeps the userfaultfds it inherited: one context, two processes
    {
      name: 'uffd_kinds',
      args: ['fork'],
      error: /process \d+: fd \d+: userfaultfd shared with process \d+ \(inherited across fork or passed over a socket\) is not supported/,
      go: 'UFFD_CHECKED',
    },
    // a fork event gave the parent a context of its child's memory
    {
      name: 'uffd_kinds',
      args: ['forkevent'],
      error: /fd \d+: userfaultfd of another process's memory \(passed over a socket, or made by a fork event\) is not supported/,
      go: 'UFFD_CHECKED',
    },
    // a read() into a page the handler has not provided yet cannot be stopped
    {
      name: 'uffd_kinds',
      args: ['syscall'],
      error: /thread \d+ of process \d+ does not stop: it waits in the kernel for its userfaultfd \(fd \d+\) handler, most likely a page fault in a system call/,
      go: 'UFFD_CHECKED',
    },
  ];
  for (const r of refusals) {
    test(`${r.name} ${r.args.join(' ')}: refused, the process runs on`, { timeout: 60_000 }, async () => {
      const w = await h.start(r.name, { args: r.args });
      await waitForOk(w, 2);
      const images = path.join(w.dir, 'images');
      mkdirSync(images);
      assertCliError(await dump(w.pid, images), r.error);
      await waitForOk(w, lastOk(w) + 2);
      if (r.go) await goAndWait(w, r.go);
      assertNoFail(w);
      await h.kill(w);
    });
  }
});
