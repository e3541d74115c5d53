// A real program with a listening TCP socket: python3 -m http.server.
// GET works, dump (server gone, connection refused), restore (same pid),
// GET works again and serves the same content.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, test } from 'node:test';
import { assertCliOk, dump, restore } from './helpers/cli.js';
import { procStat, waitPidGone, sleep } from './helpers/proc.js';
import { Harness } from './helpers/workload.js';
import { freePort } from './helpers/servers.js';

const h = new Harness();
after(() => h.cleanup());

function get(port: number, urlPath: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent: false, timeout: 3000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

async function getOk(port: number, urlPath: string, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const r = await get(port, urlPath);
      if (r.status === 200) return r.body;
      last = new Error(`status ${r.status}`);
    } catch (e) {
      last = e;
    }
    await sleep(50);
  }
  throw new Error(`GET ${urlPath} on port ${port} never succeeded: ${String(last)}`);
}

test('python3 -m http.server survives dump and restore', { timeout: 90_000 }, async (t) => {
  let python: string;
  try {
    // resolve pyenv-style shims to the real interpreter so the pid we spawn is python itself
    python = execFileSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).trim();
  } catch {
    t.skip('python3 not available');
    return;
  }
  const dir = h.tempDir('phaul-http-');
  const www = path.join(dir, 'www');
  mkdirSync(www);
  const content = `hello from phaul ${Date.now()}\n`;
  writeFileSync(path.join(www, 'hello.txt'), content);
  const port = await freePort();
  const child = h.spawnDetached(python, ['-m', 'http.server', String(port), '--bind', '127.0.0.1', '--directory', www], dir, www);
  const pid = child.pid!;

  assert.equal(await getOk(port, '/hello.txt', 15_000), content);

  const images = path.join(dir, 'images');
  mkdirSync(images);
  const d = await dump(pid, images);
  assertCliOk(d);
  assert.ok(await waitPidGone(pid, 5000), 'server still exists after dump');
  await assert.rejects(get(port, '/hello.txt'), 'server still answers after dump');

  const restored = await restore(images);
  h.track(restored, www);
  assert.equal(restored, pid);
  assert.notEqual(procStat(restored)?.ppid, process.pid);
  assert.equal(await getOk(port, '/hello.txt', 15_000), content);
  // and it keeps serving
  for (let i = 0; i < 5; i++) assert.equal((await get(port, '/hello.txt')).body, content);
  await h.kill({ pid: restored, marker: www });
});
