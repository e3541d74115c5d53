// Migration across two network namespaces joined by a veth pair
// (10.77.0.1/24 source side, 10.77.0.2/24 destination side): the agent runs
// inside the destination namespace (`ip netns exec`), `phaul migrate` inside
// the source one, so control and page connections really cross the link.
// Skipped only when the `ip` tool is missing.
import { execFile, spawnSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Agent, startAgent } from './helpers/agent.js';
import type { CliResult } from './helpers/cli.js';
import { migrateAndCheck, roundsText } from './helpers/migrate.js';
import { PHAUL_JS, REPO } from './helpers/paths.js';
import { Harness, waitForOk } from './helpers/workload.js';

const hasIp = spawnSync('ip', ['-V'], { stdio: 'ignore' }).status === 0;
const tag = String(process.pid % 100000);
const NS_SRC = `phaul-s-${tag}`;
const NS_DST = `phaul-d-${tag}`;
const SRC_IP = '10.77.0.1';
const DST_IP = '10.77.0.2';

function ip(...args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr || r.error?.message}`);
}

function inNetns(ns: string) {
  return (args: string[]): Promise<CliResult> => {
    const t0 = Date.now();
    return new Promise((resolve) => {
      execFile('ip', ['netns', 'exec', ns, process.execPath, PHAUL_JS, ...args],
        { cwd: REPO, timeout: 120_000, killSignal: 'SIGKILL', encoding: 'utf8', maxBuffer: 16 << 20 },
        (err, stdout, stderr) => {
          const e = err as (NodeJS.ErrnoException & { code?: number | string; signal?: string | null }) | null;
          resolve({ args, code: e ? (typeof e.code === 'number' ? e.code : null) : 0, signal: e?.signal ?? null, stdout, stderr, ms: Date.now() - t0 });
        });
    });
  };
}

describe('live migration across network namespaces', { skip: hasIp ? false : 'the ip tool (iproute2) is not installed' }, () => {
  const h = new Harness();
  let agent: Agent | undefined;

  before(() => {
    for (const ns of [NS_SRC, NS_DST]) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    ip('netns', 'add', NS_SRC);
    ip('netns', 'add', NS_DST);
    ip('link', 'add', `pv${tag}s`, 'netns', NS_SRC, 'type', 'veth', 'peer', 'name', `pv${tag}d`, 'netns', NS_DST);
    ip('-n', NS_SRC, 'addr', 'add', `${SRC_IP}/24`, 'dev', `pv${tag}s`);
    ip('-n', NS_DST, 'addr', 'add', `${DST_IP}/24`, 'dev', `pv${tag}d`);
    for (const [ns, dev] of [[NS_SRC, `pv${tag}s`], [NS_DST, `pv${tag}d`]] as const) {
      ip('-n', ns, 'link', 'set', dev, 'up');
      ip('-n', ns, 'link', 'set', 'lo', 'up');
    }
  });

  after(async () => {
    await agent?.stop();
    await h.cleanup();
    for (const ns of [NS_SRC, NS_DST]) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
  });

  test('counter from 10.77.0.1 to an agent on 10.77.0.2', { timeout: 90_000 }, async (t) => {
    // Not loopback: the agent requires authentication (docs/security.md).
    const secretDir = mkdtempSync(path.join(os.tmpdir(), 'phaul-netns-secret-'));
    t.after(() => rmSync(secretDir, { recursive: true, force: true }));
    const secret = path.join(secretDir, 'secret');
    writeFileSync(secret, 'netns test secret 0123456789abcdef\n', { mode: 0o600 });
    agent = await startAgent({ host: DST_IP, netns: NS_DST, args: ['--token-file', secret] });
    const w = await h.start('counter');
    await waitForOk(w, 2);
    const { summary } = await migrateAndCheck(h, w, agent, { runner: inNetns(NS_SRC), extra: ['--token-file', secret] });
    t.diagnostic(roundsText(summary));
    const restored = agent.events.find((e) => e.event === 'restored');
    t.diagnostic(`agent saw the source as ${String(restored?.peer)}`);
    if (!String(restored?.peer).includes(SRC_IP)) throw new Error(`control connection did not come from ${SRC_IP}: ${String(restored?.peer)}`);
    await h.kill(w);
  });
});
