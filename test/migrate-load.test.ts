// Load on one destination agent: 8 migrations started at once (8 `phaul
// migrate` processes), while silent peers hold connections to its control
// and page ports. The agent handshakes them concurrently and runs them one
// after the other through its engine; each tree must arrive whole, as its
// own (same pid inside its namespace, its own log counting on), and each
// agent record must name the right migration and pid.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, describe, test } from 'node:test';
import { Agent, startAgent } from './helpers/agent.js';
import { migrateAndCheck } from './helpers/migrate.js';
import { Harness, waitForOk } from './helpers/workload.js';

describe('one agent under load', () => {
  const h = new Harness();
  const agents: Agent[] = [];
  const silent: net.Socket[] = [];
  after(async () => {
    for (const s of silent) s.destroy();
    for (const a of agents) await a.stop();
    await h.cleanup();
  });

  test('8 migrations at once, with silent peers connected', { timeout: 300_000 }, async (t) => {
    const agent = await startAgent();
    agents.push(agent);
    const listening = agent.events.find((e) => e.event === 'listening')!;
    const pagePort = Number(String(listening.page_address).split(':').pop());
    for (const port of [agent.port, pagePort, agent.port, pagePort]) {
      const s = net.connect({ host: '127.0.0.1', port });
      s.on('error', () => undefined);
      silent.push(s);
    }
    const ws = await Promise.all(Array.from({ length: 8 }, (_, i) => h.start(i % 2 ? 'threads' : 'counter')));
    for (const w of ws) await waitForOk(w, 1);
    const t0 = Date.now();
    const runs = await Promise.all(ws.map((w) => migrateAndCheck(h, w, agent)));
    t.diagnostic(`8 migrations in ${Date.now() - t0} ms`);
    const ids = new Set(runs.map((r) => r.summary.migration));
    assert.equal(ids.size, 8);
    const restored = agent.events.filter((e) => e.event === 'restored');
    assert.equal(restored.length, 8, agent.describe());
    for (const r of runs) {
      const ev = restored.find((e) => e.migration === r.summary.migration)!;
      assert.equal(ev.pid, r.summary.pid, 'agent record names another pid for this migration');
    }
    assert.equal(agent.events.filter((e) => e.event === 'failed').length, 0, agent.describe());
    for (const w of ws) await h.kill(w);
  });
});
