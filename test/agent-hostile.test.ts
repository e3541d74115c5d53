// A live destination agent under hostile control input: 300 connections, each
// a valid hello followed by mutated, truncated, random or out-of-order
// messages (some of them valid prepares for random pids, which create stubs).
// The agent must stay up, end each connection with a clean error, leave no
// stub process behind, and then take a real migration. Deterministic seed.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, describe, test } from 'node:test';
import { Packr } from 'msgpackr';
import WebSocket from 'ws';
import { hello } from '../migrate/capabilities.js';
import { encode } from '../migrate/protocol.js';
import { Agent, startAgent } from './helpers/agent.js';
import { mutateBytes, randomValue, Rng } from './helpers/fuzz.js';
import { migrateAndCheck } from './helpers/migrate.js';
import { waitUntil } from './helpers/proc.js';
import { Harness, waitForOk } from './helpers/workload.js';

const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

function session(agent: Agent, frames: Buffer[]): Promise<string> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://${agent.address}/phaul`);
    let got = '';
    const timer = setTimeout(() => { ws.terminate(); resolve(`${got} timeout`); }, 10_000);
    ws.on('open', () => {
      for (const f of frames) ws.send(f, { binary: true });
      // Give the agent a moment to act on them, then leave.
      setTimeout(() => ws.close(), 30);
    });
    ws.on('message', (d) => (got += `${(packr.unpack(d as Buffer) as { type: string }).type} `));
    ws.on('error', () => undefined);
    ws.on('close', () => { clearTimeout(timer); resolve(got); });
  });
}

describe('destination agent under hostile control input', () => {
  const h = new Harness();
  const agents: Agent[] = [];
  after(async () => {
    for (const a of agents) await a.stop();
    await h.cleanup();
  });

  test('300 hostile sessions, then a real migration', { timeout: 300_000 }, async (t) => {
    const agent = await startAgent();
    agents.push(agent);
    const mine = encode(await hello('source'));
    const rng = new Rng(11);
    const prepare = (pid: number) => encode({
      type: 'prepare', migration: `hostile-${rng.next()}`, token: 'ab'.repeat(24),
      layout: { processes: [{ pid, ppid: 1, pgid: pid, sid: pid, tids: [pid] }] },
    });
    const others = [encode({ type: 'round', n: 0 }), encode({ type: 'freezing' }), encode({ type: 'done' }),
      encode({ type: 'final' }), encode({ type: 'failed', code: 'EX', message: 'x' })];
    const outcomes = new Map<string, number>();
    for (let i = 0; i < 300; i++) {
      const frames: Buffer[] = [];
      const k = i % 6;
      if (k === 0) frames.push(mutateBytes(rng, mine)); // a damaged hello
      else frames.push(mine);
      if (k === 1) frames.push(mutateBytes(rng, prepare(100_000 + rng.below(1000))));
      if (k === 2) frames.push(rng.pick(others)); // out of order
      if (k === 3) frames.push(packr.pack(randomValue(rng)));
      if (k === 4) frames.push(rng.bytes(rng.below(100)));
      if (k === 5) frames.push(prepare(200_000 + rng.below(1000))); // a valid prepare: stubs, then the peer leaves
      const got = (await session(agent, frames)).trim();
      outcomes.set(got, (outcomes.get(got) ?? 0) + 1);
    }
    t.diagnostic(`replies: ${JSON.stringify(Object.fromEntries(outcomes))}`);
    assert.equal(agent.exit, undefined, `agent died: ${agent.stderr}`);
    assert.ok(await waitUntil(() => agent.leftovers().length === 0, 20_000), `stubs left: ${agent.leftovers().join(' ')}`);
    const failed = agent.events.filter((e) => e.event === 'failed');
    assert.ok(failed.length >= 250, `failed events: ${failed.length}`);
    for (const f of failed) assert.match(String(f.code), /^E[A-Z]+$/, JSON.stringify(f));
    const w = await h.start('counter');
    await waitForOk(w, 1);
    await migrateAndCheck(h, w, agent);
    await h.kill(w);
  });

  test('page port: 400 hostile connections (random bytes, damaged and made-up HELLOs), then a real migration', { timeout: 300_000 }, async (t) => {
    const agent = await startAgent();
    agents.push(agent);
    const listening = agent.events.find((e) => e.event === 'listening')!;
    const pagePort = Number(String(listening.page_address).split(':').pop());
    const rng = new Rng(12);
    const helloFrame = (id: string) => {
      const body = Buffer.from(JSON.stringify({ migration: id, token: 'x'.repeat(64) }));
      const hdr = Buffer.alloc(24);
      hdr.write('PHPG', 0, 'latin1');
      hdr.writeUInt32LE(1, 4);
      hdr.writeUInt32LE(body.length, 12);
      return Buffer.concat([hdr, body]);
    };
    const socks: net.Socket[] = [];
    for (let i = 0; i < 400; i++) {
      const k = i % 4;
      const data = k === 0 ? rng.bytes(rng.below(200)) : k === 1 ? mutateBytes(rng, helloFrame(`m${i}`)) : helloFrame(`made-up-${i}`);
      const s = net.connect({ host: '127.0.0.1', port: pagePort }, () => s.write(data));
      s.on('error', () => undefined);
      socks.push(s);
    }
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(agent.exit, undefined, `agent died: ${agent.stderr}`);
    const w = await h.start('counter');
    await waitForOk(w, 1);
    await migrateAndCheck(h, w, agent);
    for (const s of socks) s.destroy();
    t.diagnostic('made-up HELLOs parked (the oldest unexpected ones evicted past 512); the real stream got through');
    await h.kill(w);
  });
});
