// Security of the agents (docs/security.md): shared-secret authentication,
// mutual TLS on the control channel, loopback-only without either, and
// silent peers on the control and page ports.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import WebSocket from 'ws';
import { Agent, startAgent } from './helpers/agent.js';
import { assertCliError, describe as describeCli, runCli } from './helpers/cli.js';
import { copiesOf, migrateAndCheck } from './helpers/migrate.js';
import { relay } from './helpers/relay.js';
import { freePort } from './helpers/servers.js';
import { runningFreely, sleep, waitUntil } from './helpers/proc.js';
import { assertNoFail, assertOkSequence, Harness, lastOk, waitForOk, type Workload } from './helpers/workload.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'phaul-sec-'));
const secret = path.join(tmp, 'secret');
const wrong = path.join(tmp, 'wrong');
writeFileSync(secret, 'correct horse battery staple 0123456789\n', { mode: 0o600 });
writeFileSync(wrong, 'wrong horse battery staple 9876543210\n', { mode: 0o600 });


async function assertStillHere(w: Workload, agent: Agent): Promise<void> {
  assert.equal(w.child.exitCode, null);
  assert.ok(await waitUntil(() => runningFreely(w.pid).ok, 5000), runningFreely(w.pid).why);
  await waitForOk(w, lastOk(w) + 2, 20_000);
  assertNoFail(w);
  assertOkSequence(w);
  assert.ok(await waitUntil(() => agent.leftovers().length === 0, 6000), `stubs left: ${agent.leftovers().join(' ')}`);
  assert.deepEqual(copiesOf(w), []);
}

function makeCerts(dir: string): Record<string, string> {
  const f = (n: string) => path.join(dir, n);
  const ssl = (args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  ssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', '/CN=phaul test CA',
    '-keyout', f('ca.key'), '-out', f('ca.pem')]);
  for (const who of ['agent', 'source', 'stranger']) {
    ssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${who}`,
      '-keyout', f(`${who}.key`), '-out', f(`${who}.csr`)]);
    writeFileSync(f(`${who}.ext`), 'subjectAltName=IP:127.0.0.1,IP:127.0.0.2,DNS:localhost\n');
    if (who === 'stranger') {
      // signed by a CA of its own, unknown to the agent
      ssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', '/CN=other CA',
        '-keyout', f('other.key'), '-out', f('other.pem')]);
      ssl(['x509', '-req', '-in', f(`${who}.csr`), '-CA', f('other.pem'), '-CAkey', f('other.key'), '-CAcreateserial', '-days', '2',
        '-extfile', f(`${who}.ext`), '-out', f(`${who}.pem`)]);
    } else {
      ssl(['x509', '-req', '-in', f(`${who}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2',
        '-extfile', f(`${who}.ext`), '-out', f(`${who}.pem`)]);
    }
  }
  return { dir };
}

describe('security', () => {
  const h = new Harness();
  const agents: Agent[] = [];
  after(async () => {
    for (const a of agents) await a.stop();
    await h.cleanup();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('serve refuses a non-loopback address without authentication', async () => {
    const open = await startAgent();
    agents.push(open);
    assert.equal(open.events.find((e) => e.event === 'listening')?.auth, 'none');
    const r = await runCli(['serve', '--listen', '0.0.0.0:0'], 20_000);
    assertCliError(r, /refusing to listen on 0\.0\.0\.0:0 without authentication.*--token-file/);
    const short = path.join(tmp, 'short');
    writeFileSync(short, 'abc\n');
    assertCliError(await runCli(['serve', '--token-file', short], 20_000), /at least 16 bytes/);
    assertCliError(await runCli(['serve', '--tls-cert', secret], 20_000), /all of --tls-cert, --tls-key and --tls-ca/);
  });

  test('token: a source without the secret or with a wrong one is refused, the process stays here', { timeout: 120_000 }, async (t) => {
    const w = await h.start('counter');
    await waitForOk(w, 1);
    const agent = await startAgent({ args: ['--token-file', secret] });
    agents.push(agent);
    const none = await runCli(['migrate', '--to', agent.address, '--pid', String(w.pid)], 60_000);
    t.diagnostic(none.stderr.trim());
    assertCliError(none, /authentication required.*still running here/);
    const bad = await runCli(['migrate', '--to', agent.address, '--pid', String(w.pid), '--token-file', wrong], 60_000);
    t.diagnostic(bad.stderr.trim());
    assertCliError(bad, /wrong shared secret.*still running here/);
    // The agent never got to prepare: its records show failures at the handshake.
    const failed = agent.events.filter((e) => e.event === 'failed');
    assert.equal(failed.length, 2, agent.describe());
    for (const f of failed) {
      assert.equal(f.phase, 'handshake');
      assert.equal(f.code, 'EAUTH');
    }
    await assertStillHere(w, agent);
    // A source that holds the secret, talking to an agent without it, refuses the agent.
    const open = await startAgent();
    agents.push(open);
    const r = await runCli(['migrate', '--to', open.address, '--pid', String(w.pid), '--token-file', secret], 60_000);
    assertCliError(r, /did not prove it holds the shared secret.*still running here/);
    await assertStillHere(w, open);
    await h.kill(w);
  });

  test('token: with the secret on both sides the migration goes through', { timeout: 120_000 }, async () => {
    const w = await h.start('counter');
    await waitForOk(w, 1);
    const agent = await startAgent({ args: ['--token-file', secret] });
    agents.push(agent);
    assert.equal(agent.events.find((e) => e.event === 'listening')?.auth, 'token');
    await migrateAndCheck(h, w, agent, { extra: ['--token-file', secret] });
    await h.kill(w);
  });

  test('mutual TLS: a source with a certificate of the CA migrates; no or a foreign certificate is refused', { timeout: 120_000 }, async (t) => {
    const dir = path.join(tmp, 'tls');
    execFileSync('mkdir', ['-p', dir]);
    makeCerts(dir);
    const f = (n: string) => path.join(dir, n);
    const agent = await startAgent({ args: ['--tls-cert', f('agent.pem'), '--tls-key', f('agent.key'), '--tls-ca', f('ca.pem')] });
    agents.push(agent);
    // no client certificate, then a certificate from another CA: the TLS handshake fails
    for (const opts of [{}, { cert: readFile(f('stranger.pem')), key: readFile(f('stranger.key')) }]) {
      const err = await new Promise<string>((resolve) => {
        const ws = new WebSocket(`wss://${agent.address}/phaul`, { ca: readFile(f('ca.pem')), ...opts });
        ws.on('open', () => { ws.terminate(); resolve('open'); });
        ws.on('error', (e) => resolve(e.message));
        ws.on('close', () => resolve('closed'));
      });
      t.diagnostic(`without a valid client certificate: ${err}`);
      assert.notEqual(err, 'open');
    }
    assert.equal(agent.events.filter((e) => e.event === 'connected').length, 0, 'a peer without a certificate reached the agent');
    const w = await h.start('counter');
    await waitForOk(w, 1);
    await migrateAndCheck(h, w, agent, { extra: ['--tls-cert', f('source.pem'), '--tls-key', f('source.key'), '--tls-ca', f('ca.pem')] });
    await h.kill(w);
  });

  test('TLS page channel: pages cross encrypted; a plain page connection gets nothing', { timeout: 120_000 }, async (t) => {
    const dir = path.join(tmp, 'tls-pages');
    execFileSync('mkdir', ['-p', dir]);
    makeCerts(dir);
    const f = (n: string) => path.join(dir, n);
    const pagePort = await freePort();
    const agent = await startAgent({ args: ['--tls-cert', f('agent.pem'), '--tls-key', f('agent.key'), '--tls-ca', f('ca.pem'), '--page-port', String(pagePort)] });
    agents.push(agent);

    // A page-stream HELLO in clear text on the page port: the TLS front
    // answers with at most a TLS alert, never with the page protocol.
    const answer = await new Promise<Buffer>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port: pagePort }, () => {
        const body = Buffer.from(JSON.stringify({ migration: 'x', token: 'y' }));
        const head = Buffer.alloc(24);
        head.write('PHPG');
        head.writeUInt32LE(1, 4);
        head.writeUInt32LE(body.length, 12);
        s.write(Buffer.concat([head, body]));
      });
      const got: Buffer[] = [];
      s.on('data', (d) => got.push(d));
      s.on('error', () => undefined);
      s.on('close', () => resolve(Buffer.concat(got)));
      setTimeout(() => s.destroy(), 5000);
    });
    assert.ok(!answer.includes('PHPG'), 'the page port spoke the page protocol in clear text');

    // The real migration, its page connection through a sniffing relay on
    // 127.0.0.2: what crosses must be TLS records, without the workload's
    // memory in clear (its marker is in its argv, on its stack).
    const seen: Buffer[] = [];
    let seenBytes = 0;
    const sniff = await relay('127.0.0.2', pagePort, pagePort, (d) => {
      seen.push(d);
      seenBytes += d.length;
      return d;
    });
    const control = await relay('127.0.0.2', 0, agent.port);
    try {
      const w = await h.start('counter');
      await waitForOk(w, 1);
      await migrateAndCheck(h, w, agent, {
        to: `127.0.0.2:${(control.address() as net.AddressInfo).port}`,
        extra: ['--tls-cert', f('source.pem'), '--tls-key', f('source.key'), '--tls-ca', f('ca.pem')],
      });
      const all = Buffer.concat(seen);
      t.diagnostic(`${seenBytes} bytes crossed the page connection`);
      assert.ok(seenBytes > 100_000, `only ${seenBytes} bytes crossed the sniffed page connection`);
      assert.equal(all[0], 0x16, 'the page connection does not start with a TLS handshake record');
      assert.ok(!all.includes('PHPG'), 'page-stream frames crossed in clear text');
      assert.ok(!all.includes(w.marker), 'the workload\'s memory crossed in clear text');
      await h.kill(w);
    } finally {
      sniff.close();
      control.close();
    }
  });

  test('silent peers on the control and page ports do not stop a migration', { timeout: 120_000 }, async () => {
    const agent = await startAgent();
    agents.push(agent);
    const listening = agent.events.find((e) => e.event === 'listening')!;
    const pagePort = Number(String(listening.page_address).split(':').pop());
    const silent: net.Socket[] = [];
    for (let i = 0; i < 4; i++) {
      for (const port of [agent.port, pagePort]) {
        const s = net.connect({ host: '127.0.0.1', port });
        s.on('error', () => undefined);
        silent.push(s);
      }
    }
    // and one that sends a half page-stream header then stops
    const half = net.connect({ host: '127.0.0.1', port: pagePort }, () => half.write(Buffer.from('PHPG\x01\x00')));
    half.on('error', () => undefined);
    silent.push(half);
    await sleep(200);
    const w = await h.start('counter');
    await waitForOk(w, 1);
    await migrateAndCheck(h, w, agent);
    assert.equal(agent.exit, undefined, 'agent died');
    for (const s of silent) s.destroy();
    await h.kill(w);
  });
});

function readFile(p: string): Buffer {
  return execFileSync('cat', [p]);
}
