// Sockets across dump and restore (docs/sockets.md): TCP listeners (v4/v6),
// UDP bound and connected, unix pairs with queued data and listeners, and
// established TCP connections with data in flight both ways (TCP_REPAIR).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { assertCliError, assertCliOk, dump, restore } from './helpers/cli.js';
import { isAlive, procStat, sleep, waitPidGone } from './helpers/proc.js';
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

/** Byte i of each direction's stream: byte i%4 (little endian) of counter i/4 (as sock_tcp.c). */
function streamByte(i: number): number {
  return (Math.floor(i / 4) >>> (8 * (i % 4))) & 0xff;
}

/** The peer of sock_tcp: outside the dumped tree, sends and checks the counter streams. */
class Peer {
  server = net.createServer();
  sock?: net.Socket;
  inPos = 0;
  outPos = 0;
  held = false;
  events: string[] = [];
  private timer?: NodeJS.Timeout;

  listen(host: string): Promise<number> {
    this.server.on('connection', (s) => {
      this.sock = s;
      s.on('data', (buf: Buffer) => {
        for (const b of buf) {
          if (b !== streamByte(this.inPos)) this.events.push(`bad byte ${b} at ${this.inPos}`);
          this.inPos++;
        }
      });
      for (const ev of ['end', 'close', 'error'] as const) s.on(ev, (e?: unknown) => this.events.push(`${ev} ${e ?? ''}`));
      this.timer = setInterval(() => {
        if (!this.held && s.writableLength < 65536) this.write(8192);
      }, 5);
    });
    return new Promise((resolve) => this.server.listen(0, host, () => resolve((this.server.address() as net.AddressInfo).port)));
  }

  write(n: number): void {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = streamByte(this.outPos + i);
    this.outPos += n;
    this.sock!.write(b);
  }

  hold(): void {
    this.held = true;
    this.sock!.pause();
  }

  release(): void {
    this.held = false;
    this.sock!.resume();
  }

  close(): void {
    clearInterval(this.timer);
    this.sock?.destroy();
    this.server.close();
  }
}

function counters(line: string): { inPos: number; outPos: number } {
  const m = /in=(\d+) out=(\d+)/.exec(line);
  assert.ok(m, `no in=/out= in ${line}`);
  return { inPos: Number(m[1]), outPos: Number(m[2]) };
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

  test('unix: descriptors in flight (a listener on an abstract name among them, some to a bound datagram socket) survive two round trips and are received after', { timeout: 90_000 }, async (t) => {
    const w = await h.start('sock_scm', { args: ['named,bound'] });
    await waitForOk(w, 2);
    await roundTrip(w, t);
    // the restored queues, refilled by phaul, dump again
    await roundTrip(w, t);
    await goAndWait(w, GO_CHECKS.sock_scm);
    assertOkSequence(w);
    await h.kill(w);
  });

  test('unix: an epoll descriptor in flight fails the dump with one line; the process and its queues are untouched', { timeout: 60_000 }, async () => {
    const w = await h.start('sock_scm', { args: ['epoll'] });
    await waitForOk(w, 2);
    const images = path.join(w.dir, 'images');
    mkdirSync(images);
    const r = await dump(w.pid, images);
    assertCliError(r, /process \d+: fd \d+: a descriptor in flight in its unix socket queue: epoll descriptor is not supported/);
    assert.equal(r.code, 4, 'exit code of EUNSUPPORTED');
    assert.ok(isAlive(w.pid), 'process was not left running');
    // every descriptor in flight is still there, once, with its message
    await goAndWait(w, GO_CHECKS.sock_scm);
    assertNoFail(w);
    await h.kill(w);
  });

  test("unix: queued datagrams keep their senders' addresses (senders in the tree, gone, or outside it) over two round trips", { timeout: 90_000 }, async (t) => {
    // "outside": a process outside the tree holds an abstract name and has
    // a datagram queued on a socket with a path: restored, it comes from a
    // socket bound to that name in a network namespace of its own.
    const w = await h.start('sock_senders', { args: ['outside'] });
    const outsider = { pid: Number(readLog(w).find((l) => l.startsWith('OUTSIDER '))!.split(' ')[1]), marker: w.marker };
    h.track(outsider.pid, outsider.marker);
    await waitForOk(w, 2);
    await roundTrip(w, t);
    // the restored queues, refilled from those senders, dump again
    await roundTrip(w, t);
    await goAndWait(w, GO_CHECKS.sock_senders);
    assertOkSequence(w);
    await h.kill(w);
    await h.kill(outsider);
  });

  test('unix: a datagram from an abstract name held outside the tree, queued on an abstract name, fails the dump with one line; the process keeps its queues', { timeout: 60_000 }, async () => {
    const w = await h.start('sock_senders', { args: ['outside,refused'] });
    const outsider = { pid: Number(readLog(w).find((l) => l.startsWith('OUTSIDER '))!.split(' ')[1]), marker: w.marker };
    h.track(outsider.pid, outsider.marker);
    await waitForOk(w, 2);
    const images = path.join(w.dir, 'images');
    mkdirSync(images);
    const r = await dump(w.pid, images);
    assertCliError(
      r,
      /process \d+: fd \d+: unix datagram socket @phaul-senders-r2-\d+ holds datagrams from @phaul-senders-out-\d+, a name held by socket:\[\d+\] outside the dumped process tree: restored, they could not carry that sender address/,
    );
    assert.equal(r.code, 4, 'exit code of EUNSUPPORTED');
    assert.ok(isAlive(w.pid), 'process was not left running');
    await goAndWait(w, GO_CHECKS.sock_senders);
    assertNoFail(w);
    await h.kill(w);
    await h.kill(outsider);
  });

  for (const family of [4, 6]) {
    test(`established TCP (IPv${family}) with data queued both ways survives dump and restore unnoticed by the peer`, { timeout: 120_000 }, async (t) => {
      const peer = new Peer();
      try {
        const port = await peer.listen(family === 4 ? '127.0.0.1' : '::1');
        const w = await h.start('sock_tcp', { args: [String(port), String(family)] });
        await waitForOk(w, 3);
        // stop both directions with data in flight: the peer stops reading and
        // writing, the workload stops reading and fills its socket
        peer.hold();
        const hold = `${w.log}.hold`;
        writeFileSync(hold, '');
        const held = counters(await waitForLine(w, (l) => l.startsWith('HELD'), 10_000, 'HELD'));
        peer.write(20000); // lands unread in the workload's receive queue
        await new Promise((r) => setTimeout(r, 300));
        const sentAtDump = peer.outPos;
        t.diagnostic(`workload sent ${held.outPos} bytes, peer has read ${peer.inPos}; peer sent ${sentAtDump}, workload has read ${held.inPos}`);
        assert.ok(held.outPos > peer.inPos, 'workload has data in flight');
        assert.ok(sentAtDump > held.inPos, 'peer has data in flight');

        const images = path.join(w.dir, 'images');
        mkdirSync(images);
        const d = await dump(w.pid, images);
        assertCliOk(d);
        assert.ok(await waitPidGone(w.pid, 5000), 'workload still exists after dump');
        const pid = await restore(images);
        h.track(pid, w.marker);
        assert.equal(pid, w.pid);
        rmSync(hold);
        peer.release();
        const okAtDump = lastOk(w);
        await waitForOk(w, okAtDump + 5, 20_000);
        // both streams continued past what was queued at the dump
        const deadline = Date.now() + 10_000;
        while (peer.inPos <= held.outPos && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
        assert.ok(peer.inPos > held.outPos, `peer read ${peer.inPos} bytes, workload had sent ${held.outPos} at the dump`);
        const last = readLog(w).filter((l) => l.startsWith('OK ')).pop()!;
        assert.ok(counters(last).inPos > sentAtDump, `workload read ${counters(last).inPos}, peer had sent ${sentAtDump}`);
        assert.deepEqual(peer.events, [], 'the peer saw the connection break');
        assertNoFail(w);
        assertOkSequence(w);
        await h.kill(w);
      } finally {
        peer.close();
      }
    });
  }

  test('an eBPF socket filter (SO_ATTACH_BPF) fails the dump with one line and the process keeps running', { timeout: 60_000 }, async () => {
    const w = await h.start('sock_filter', { args: ['bpf'] });
    await waitForOk(w, 2);
    const images = path.join(w.dir, 'images');
    mkdirSync(images);
    const r = await dump(w.pid, images);
    assertCliError(r, /fd \d+: socket:\[\d+\] has an eBPF filter \(SO_ATTACH_BPF\), whose program cannot be read back: not supported/);
    assert.equal(r.code, 4, 'exit code of EUNSUPPORTED');
    await waitForOk(w, lastOk(w) + 3, 10_000);
    assertNoFail(w);
    await h.kill(w);
  });

  test('an unsupported socket (vsock) fails the dump with one line and the process keeps running', { timeout: 60_000 }, async () => {
    const dir = h.tempDir('phaul-sock-unsup-');
    const marker = path.join(dir, 'marker');
    const py = execFileSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).trim();
    const child = h.spawnDetached(
      py,
      ['-c', 'import socket, time, sys; s = socket.socket(40, socket.SOCK_STREAM); open(sys.argv[1], "w").write("up"); time.sleep(600)', marker],
      dir,
      marker,
    );
    for (let i = 0; i < 200; i++) {
      try {
        execFileSync('test', ['-s', marker]);
        break;
      } catch {
        await sleep(25);
      }
    }
    const images = path.join(dir, 'images');
    mkdirSync(images);
    const r = await dump(child.pid!, images);
    assertCliError(r, /fd \d+: vsock stream socket .*is not supported/);
    assert.equal(r.code, 4, 'exit code of EUNSUPPORTED');
    assert.ok(isAlive(child.pid!), 'process was not left running');
    await h.kill({ pid: child.pid!, marker });
  });
});
