// Unit tests of the control protocol (migrate/protocol.ts, migrate/channel.ts)
// and of the source's handshake against fake destination agents: a refusal
// or a malformed message must end in a clean error with the process untouched.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { pack } from 'msgpackr';
import { WebSocketServer, type WebSocket } from 'ws';
import { Channel, connect, parseAddress } from '../migrate/channel.js';
import { decode, encode, incompatibility, PROTOCOL, validate, type HelloMsg } from '../migrate/protocol.js';
import { localCapabilities } from '../migrate/capabilities.js';
import { migrate } from '../src/index.js';
import { PhaulError } from '../src/errors.js';
import { runningFreely } from './helpers/proc.js';
import { assertNoFail, Harness, lastOk, waitForOk } from './helpers/workload.js';

const caps = { arch: 'x86_64', kernel: '6.18', xcr0: '0xe7', xsave_size: 2432, features: ['ptrace'] };
const helloSrc: HelloMsg = { type: 'hello', protocol: PROTOCOL, role: 'source', capabilities: caps };
const helloDst: HelloMsg = { ...helloSrc, role: 'destination', page_port: 7071 };
const layout = { processes: [{ pid: 100, ppid: 1, pgid: 100, sid: 100, tids: [100, 101] }] };

function rejects(value: unknown, pattern: RegExp) {
  assert.throws(() => validate(value), (e: unknown) => e instanceof PhaulError && e.code === 'EPROTO' && pattern.test(e.message));
}

describe('protocol messages', () => {
  test('every message type round-trips through msgpack', () => {
    const msgs = [
      helloSrc,
      helloDst,
      { type: 'prepare', migration: 'm-1', token: 'abc', layout },
      // a process sharing its parent's descriptor table and cwd (clone flags)
      { type: 'prepare', migration: 'm-2', token: 'abc', layout: { processes: [...layout.processes, { pid: 102, ppid: 100, pgid: 100, sid: 100, tids: [102], shares: { files: 100, fs: 100 } }] } },
      { type: 'prepared', page_port: 7071 },
      { type: 'round', n: 3 },
      { type: 'round_done', stats: { round: 3, pages: 10, bytes: 40960, ms: 1.5 } },
      { type: 'freezing' },
      { type: 'final' },
      { type: 'restored', pid: 100, restore_us: 1234, pages: 3, bytes: 12288 },
      { type: 'failed', code: 'EPIDTAKEN', message: 'pid 100 is taken' },
      { type: 'done' },
    ] as const;
    for (const m of msgs) assert.deepEqual(decode(encode(m as never)), m);
  });

  test('malformed messages are refused with EPROTO', () => {
    rejects(null, /must be a map/);
    rejects([1, 2], /must be a map/);
    rejects({ n: 1 }, /without a type/);
    rejects({ type: 'bogus' }, /unknown message type/);
    rejects({ type: 'round' }, /round\.n/);
    rejects({ type: 'round', n: -1 }, /round\.n/);
    rejects({ type: 'round', n: 1.5 }, /round\.n/);
    rejects({ type: 'round', n: '1' }, /round\.n/);
    rejects({ ...helloSrc, role: 'peer' }, /role/);
    rejects({ ...helloSrc, capabilities: { ...caps, xcr0: 'e7' } }, /xcr0/);
    rejects({ ...helloSrc, capabilities: { ...caps, features: [1] } }, /features/);
    rejects({ ...helloSrc, page_port: 70000 }, /page_port/);
    rejects({ type: 'prepare', migration: 'a b', token: 't', layout }, /migration/);
    rejects({ type: 'prepare', migration: 'm', token: 't', layout: { processes: [] } }, /processes/);
    rejects({ type: 'prepare', migration: 'm', token: 't', layout: { processes: [{ ...layout.processes[0], tids: [] }] } }, /tids/);
    rejects({ type: 'prepare', migration: 'm', token: 't', layout: { processes: [{ ...layout.processes[0], pid: 0 }] } }, /pid/);
    rejects({ type: 'prepare', migration: 'm', token: 't', layout: { processes: [{ ...layout.processes[0], shares: { vm: 1 } }] } }, /shares\.vm/);
    rejects({ type: 'prepare', migration: 'm', token: 't', layout: { processes: [{ ...layout.processes[0], shares: { files: 0 } }] } }, /shares\.files/);
    rejects({ type: 'round_done', stats: { round: 0, pages: 1, bytes: 1 } }, /ms/);
    rejects({ type: 'restored', pid: 5 }, /restore_us/);
    rejects({ type: 'failed', code: 'lower', message: 'x' }, /code/);
    assert.throws(() => decode(Buffer.from([0xc1])), /protocol error/);
    assert.throws(() => decode(pack('just a string')), /must be a map/);
  });

  test('extra fields are dropped, not refused', () => {
    assert.deepEqual(validate({ type: 'round', n: 1, extra: true }), { type: 'round', n: 1 });
  });

  test('compatibility: protocol major, arch, xcr0 subset', () => {
    assert.equal(incompatibility(helloSrc, helloDst), undefined);
    assert.match(incompatibility(helloSrc, { ...helloDst, protocol: PROTOCOL + 1 })!, /protocol version mismatch/);
    assert.match(incompatibility(helloSrc, { ...helloDst, capabilities: { ...caps, arch: 'aarch64' } })!, /architecture mismatch/);
    // destination lacking AVX-512 (0xe0) refuses a source using it
    assert.match(incompatibility(helloSrc, { ...helloDst, capabilities: { ...caps, xcr0: '0x7' } })!, /lacks register state.*missing bits 0xe0/);
    // a destination with more features is fine
    assert.equal(incompatibility({ ...helloSrc, capabilities: { ...caps, xcr0: '0x7' } }, helloDst), undefined);
  });

  test('addresses', () => {
    assert.deepEqual(parseAddress('10.0.0.2:7070', '--to'), { host: '10.0.0.2', port: 7070 });
    assert.deepEqual(parseAddress('[::1]:7070', '--to'), { host: '::1', port: 7070 });
    assert.throws(() => parseAddress('10.0.0.2', '--to'), /HOST:PORT/);
    assert.throws(() => parseAddress('h:0', '--to'), /HOST:PORT/);
    assert.deepEqual(parseAddress('h:0', '--listen', true), { host: 'h', port: 0 });
  });
});

/** A fake destination agent: `script` gets each connection. */
async function fakeAgent(script: (ws: WebSocket) => void): Promise<{ port: number; close: () => Promise<void> }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.once('listening', r));
  wss.on('connection', script);
  const port = (wss.address() as { port: number }).port;
  return {
    port,
    close: () =>
      new Promise<void>((r) => {
        for (const c of wss.clients) c.terminate();
        wss.close(() => r());
      }),
  };
}

describe('channel and source handshake against fake agents', () => {
  const h = new Harness();
  after(() => h.cleanup());

  test('channel: garbage frame ends the channel with EPROTO', async () => {
    const agent = await fakeAgent((ws) => ws.send(Buffer.from([0xc1, 0x00])));
    try {
      const chan = await connect('127.0.0.1', agent.port);
      await assert.rejects(chan.receive(['hello'], 5000, 'hello'), (e: PhaulError) => e.code === 'EPROTO');
      assert.equal(chan.failed?.code, 'EPROTO');
    } finally {
      await agent.close();
    }
  });

  test('channel: unexpected type, timeout, peer close', async () => {
    let sock: WebSocket | undefined;
    const agent = await fakeAgent((ws) => {
      sock = ws;
      ws.send(encode({ type: 'round', n: 1 }));
    });
    try {
      const a = await connect('127.0.0.1', agent.port);
      await assert.rejects(a.receive(['hello'], 5000, 'hello'), /sent round while hello was expected/);
      const b: Channel = await connect('127.0.0.1', agent.port);
      await b.receive(['round'], 5000, 'round');
      await assert.rejects(b.receive(['round'], 100, 'round'), (e: PhaulError) => e.code === 'ETIMEDOUT');
      const c: Channel = await connect('127.0.0.1', agent.port);
      await c.receive(['round'], 5000, 'round');
      const pending = c.receive(['round'], 5000, 'round');
      sock!.terminate();
      await assert.rejects(pending, (e: PhaulError) => e.code === 'ECONNRESET');
    } finally {
      await agent.close();
    }
  });

  test('migrate: closed port, refusal, incompatible CPU, malformed reply leave the process running', async () => {
    const w = await h.start('counter');
    await waitForOk(w, 1);
    const mine = await localCapabilities();
    const scripts: [string, (ws: WebSocket) => void, RegExp, string][] = [
      ['refusal', (ws) => ws.send(encode({ type: 'failed', code: 'EBUSY', message: 'busy' })), /busy/, 'EBUSY'],
      ['incompatible xcr0', (ws) => ws.send(encode({ ...helloDst, capabilities: { ...mine, xcr0: '0x3' } })), /lacks register state/, 'EINCOMPAT'],
      ['other protocol', (ws) => ws.send(encode({ ...helloDst, protocol: 99, capabilities: mine })), /protocol version mismatch/, 'EINCOMPAT'],
      ['malformed hello', (ws) => ws.send(pack({ type: 'hello', protocol: 1, role: 'destination' })), /protocol error/, 'EPROTO'],
      ['close', (ws) => ws.close(), /closed the control connection/, 'ECONNRESET'],
    ];
    for (const [name, script, pattern, code] of scripts) {
      const agent = await fakeAgent(script);
      try {
        await assert.rejects(
          migrate({ pid: w.pid, to: `127.0.0.1:${agent.port}` }),
          (e: PhaulError) => {
            assert.equal(e.code, code, `${name}: ${e.message}`);
            assert.match(e.message, pattern, name);
            assert.match(e.message, /still running here/, name);
            return true;
          },
        );
      } finally {
        await agent.close();
      }
    }
    // a closed port
    const agent = await fakeAgent(() => undefined);
    const port = agent.port;
    await agent.close();
    await assert.rejects(migrate({ pid: w.pid, to: `127.0.0.1:${port}` }), (e: PhaulError) => e.code === 'ECONNREFUSED' && /connection refused/.test(e.message));
    const ok = lastOk(w);
    assert.ok(runningFreely(w.pid).ok, runningFreely(w.pid).why);
    await waitForOk(w, ok + 1);
    assertNoFail(w);
    await h.kill(w);
  });
});
