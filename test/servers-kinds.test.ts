// Every kind of socket and event descriptor under live migration on one host
// (the dump/restore tests of test/sockets.test.ts and test/event-fds.test.ts,
// migrated instead): the workloads of test/workloads check their own objects
// from inside and keep counting after the move. Established TCP keeps
// streaming both ways with a peer outside the tree (the test itself) while
// the sockets change hands (docs/servers.md).
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { Agent, startAgent } from './helpers/agent.js';
import { migrateAndCheck, roundsText } from './helpers/migrate.js';
import { sleep } from './helpers/proc.js';
import { assertClean } from './helpers/servers.js';
import { Harness, readLog, waitForOk } from './helpers/workload.js';

/** Byte i of each direction's stream: byte i%4 (little endian) of counter i/4 (as sock_tcp.c). */
function streamByte(i: number): number {
  return (Math.floor(i / 4) >>> (8 * (i % 4))) & 0xff;
}

describe('sockets and event descriptors under live migration', () => {
  const h = new Harness();
  let agent: Agent;
  before(async () => {
    agent = await startAgent();
  });
  after(async () => {
    await agent?.stop();
    await h.cleanup();
  });

  for (const name of ['sock_listen', 'sock_udp', 'sock_unix']) {
    test(name, { timeout: 60_000 }, async (t) => {
      const w = await h.start(name);
      await waitForOk(w, 2);
      const { summary } = await migrateAndCheck(h, w, agent);
      t.diagnostic(roundsText(summary));
      await h.kill(w);
      assertClean(agent);
    });
  }

  test('sock_listen: the listeners accept connections from outside after the move', { timeout: 60_000 }, async () => {
    const w = await h.start('sock_listen');
    await waitForOk(w, 2);
    const ports = readLog(w).find((l) => l.startsWith('PORTS '))!.split(' ').slice(1).map(Number);
    await migrateAndCheck(h, w, agent);
    const connect = (host: string, port: number) =>
      new Promise<void>((resolve, reject) => {
        const s = net.connect(port, host, () => {
          s.destroy();
          resolve();
        });
        s.on('error', reject);
      });
    await connect('127.0.0.1', ports[0]!);
    await connect('::1', ports[1]!);
    await h.kill(w);
  });

  for (const family of [4, 6]) {
    test(`established TCP (IPv${family}) streaming both ways while migrated`, { timeout: 90_000 }, async (t) => {
      const server = net.createServer();
      let inPos = 0;
      let outPos = 0;
      const events: string[] = [];
      let timer: NodeJS.Timeout | undefined;
      let conn: net.Socket | undefined;
      server.on('connection', (s) => {
        conn = s;
        s.on('data', (buf: Buffer) => {
          for (const b of buf) {
            if (b !== streamByte(inPos)) events.push(`bad byte ${b} at ${inPos}`);
            inPos++;
          }
        });
        for (const ev of ['end', 'close', 'error'] as const) s.on(ev, (e?: unknown) => events.push(`${ev} ${e ?? ''}`));
        timer = setInterval(() => {
          if (s.writableLength < 65536) {
            const b = Buffer.alloc(4096);
            for (let i = 0; i < b.length; i++) b[i] = streamByte(outPos + i);
            outPos += b.length;
            s.write(b);
          }
        }, 5);
      });
      const port = await new Promise<number>((resolve) => server.listen(0, family === 4 ? '127.0.0.1' : '::1', () => resolve((server.address() as net.AddressInfo).port)));
      try {
        const w = await h.start('sock_tcp', { args: [String(port), String(family)] });
        await waitForOk(w, 3);
        const inAtStart = inPos;
        const { summary } = await migrateAndCheck(h, w, agent);
        await sleep(500);
        assert.ok(inPos > inAtStart, 'the peer receives nothing after the move');
        assert.deepEqual(events, [], 'the peer saw the connection break');
        t.diagnostic(`${roundsText(summary)}; peer read ${inPos} bytes, wrote ${outPos}`);
        await h.kill(w);
        assertClean(agent);
      } finally {
        clearInterval(timer);
        conn?.destroy();
        server.close();
      }
    });
  }

  for (const name of ['eventfd', 'epoll', 'timerfd', 'signalfd', 'inotify', 'memfd']) {
    test(`evfd_${name}`, { timeout: 60_000 }, async (t) => {
      const w = await h.start(`evfd_${name}`);
      await waitForOk(w, 5);
      const { summary } = await migrateAndCheck(h, w, agent);
      t.diagnostic(roundsText(summary));
      await h.kill(w);
      assertClean(agent);
    });
  }
});
