// Real servers, none written here, live-migrated between two agents on this
// host while clients talk to them (docs/servers.md): redis-server with a raw
// RESP client kept open, python3 -m http.server and a Node.js HTTP server
// under a request loop (the Node one on a keep-alive connection), nginx with
// a master and two www-data workers sharing anonymous memory. Every check is
// made from outside, by talking to the server. Nothing may be left behind:
// servers, stubs, nftables tables.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdirSync, chmodSync, readdirSync, readlinkSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Agent, startAgent } from './helpers/agent.js';
import { procStatus, sleep, waitUntil } from './helpers/proc.js';
import {
  assertClean, childrenOf, freePort, httpGet, migrateServer, python, RequestLoop, RespClient, stats, waitHttp, which,
} from './helpers/servers.js';
import { Harness } from './helpers/workload.js';
import { migrate } from '../src/index.js';

describe('real servers under live migration on one host', () => {
  const h = new Harness();
  let agent: Agent;
  before(async () => {
    agent = await startAgent();
  });
  after(async () => {
    await agent?.stop();
    await h.cleanup();
  });

  test('redis-server: keys survive, a client connected before keeps getting answers', { timeout: 90_000 }, async (t) => {
    const redis = which('redis-server');
    if (!redis) return t.skip('redis-server is not installed (scripts/setup.sh installs it)');
    const dir = h.tempDir('phaul-redis-');
    const port = await freePort();
    const marker = `127.0.0.1:${port}`;
    const child = h.spawnDetached(redis, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--dir', dir], dir, marker);
    // redis rewrites its command line to "redis-server 127.0.0.1:PORT"
    await waitUntil(() => readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').includes(marker), 10_000);
    const c = new RespClient(port);
    await c.ready();
    for (let i = 0; i < 100; i++) assert.equal(await c.command('SET', `key:${i}`, `value ${i}`), '+OK\r\n');
    // a command stream on the same connection during the migration
    let n = 0;
    const gaps: number[] = [];
    let stop = false;
    const loop = (async () => {
      let last = performance.now();
      while (!stop) {
        const r = await c.command('INCR', 'counter');
        n++;
        assert.equal(r, `:${n}\r\n`, 'INCR answered out of sequence');
        const now = performance.now();
        gaps.push(now - last);
        last = now;
        await sleep(5);
      }
    })();
    await sleep(300);
    const moved = await migrateServer(h, agent, child.pid!, marker, child);
    await sleep(500);
    stop = true;
    await loop;
    const nAtEnd = n;
    assert.ok(n > 20, 'the command stream did not run');
    for (let i = 0; i < 100; i += 7) assert.equal(await c.command('GET', `key:${i}`), `$${`value ${i}`.length}\r\nvalue ${i}\r\n`);
    assert.equal(await c.command('INCR', 'counter'), `:${nAtEnd + 1}\r\n`);
    assert.deepEqual(c.events, [], 'the client connection broke');
    // a new client too
    const c2 = new RespClient(port);
    await c2.ready();
    assert.equal(await c2.command('GET', 'key:42'), '$8\r\nvalue 42\r\n');
    c2.close();
    c.close();
    t.diagnostic(`redis: frozen ${moved.summary.frozen_ms} ms, restore ${Math.round(moved.summary.restore_us / 1000)} ms, largest gap between answers on the open connection ${Math.round(Math.max(...gaps))} ms, ${n} commands`);
    await h.kill({ pid: moved.pid, marker });
    assertClean(agent);
  });

  test('python3 -m http.server answers during and after the migration', { timeout: 90_000 }, async (t) => {
    const py = python();
    if (!py) return t.skip('python3 not available');
    const dir = h.tempDir('phaul-pyhttp-');
    const www = path.join(dir, 'www');
    mkdirSync(www);
    const content = `hello from python ${Date.now()}\n`;
    writeFileSync(path.join(www, 'hello.txt'), content);
    const port = await freePort();
    const child = h.spawnDetached(py, ['-m', 'http.server', String(port), '--bind', '127.0.0.1', '--directory', www], dir, www);
    assert.equal(await waitHttp(port, '/hello.txt'), content);
    const loop = new RequestLoop(port, '/hello.txt', (b) => b === content);
    await sleep(500);
    const moved = await migrateServer(h, agent, child.pid!, www, child);
    await sleep(1500);
    await loop.stop();
    assert.deepEqual(loop.failures, [], 'requests failed');
    assert.equal((await httpGet(port, '/hello.txt')).body, content);
    t.diagnostic(`python http.server: frozen ${moved.summary.frozen_ms} ms; ${stats(loop)}`);
    await h.kill({ pid: moved.pid, marker: www });
    assertClean(agent);
  });

  test('Node.js HTTP server: keep-alive connection open across the migration', { timeout: 90_000 }, async (t) => {
    const dir = h.tempDir('phaul-nodehttp-');
    const script = path.join(dir, 'server.cjs');
    writeFileSync(script, [
      "const http = require('http');",
      'let ticks = 0;',
      'setInterval(() => ticks++, 10);',
      "http.createServer((req, res) => res.end(`hello ${ticks} ${req.socket.remotePort}\\n`)).listen(+process.argv[2], '127.0.0.1');",
    ].join('\n'));
    const port = await freePort();
    // libuv may use io_uring for file operations; phaul does not migrate a ring
    process.env.UV_USE_IO_URING = '0';
    const child = h.spawnDetached(process.execPath, [script, String(port)], dir, script);
    delete process.env.UV_USE_IO_URING;
    await waitHttp(port, '/');
    const fds = readdirSync(`/proc/${child.pid}/fd`).map((f) => { try { return readlinkSync(`/proc/${child.pid}/fd/${f}`); } catch { return ''; } });
    assert.ok(!fds.some((f) => f.includes('io_uring')), `node has an io_uring: ${fds.join(' ')}`);
    const ka = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const loop = new RequestLoop(port, '/', (b) => b.startsWith('hello '), ka);
    await sleep(500);
    const before = (await httpGet(port, '/', ka)).body;
    const moved = await migrateServer(h, agent, child.pid!, script, child);
    await sleep(1500);
    await loop.stop();
    assert.deepEqual(loop.failures, [], 'requests failed');
    assert.equal(loop.localPorts.size, 1, `keep-alive connection replaced: client ports ${[...loop.localPorts].join(' ')}`);
    const afterBody = (await httpGet(port, '/', ka)).body;
    assert.ok(Number(afterBody.split(' ')[1]) > Number(before.split(' ')[1]), `timers stopped: ${before} then ${afterBody}`);
    ka.destroy();
    t.diagnostic(`node http: frozen ${moved.summary.frozen_ms} ms, restore ${Math.round(moved.summary.restore_us / 1000)} ms; ${stats(loop)}; threads ${readdirSync(`/proc/${moved.pid}/task`).length}`);
    await h.kill({ pid: moved.pid, marker: script });
    assertClean(agent);
  });

  test('nginx: master and two www-data workers, shared memory stays shared', { timeout: 90_000 }, async (t) => {
    const nginx = which('nginx');
    if (!nginx) return t.skip('nginx is not installed (scripts/setup.sh installs nginx-light)');
    const dir = h.tempDir('phaul-nginx-');
    chmodSync(dir, 0o755);
    const www = path.join(dir, 'www');
    mkdirSync(www);
    chmodSync(www, 0o755);
    const content = `hello from nginx ${Date.now()}\n`;
    writeFileSync(path.join(www, 'index.html'), content);
    const port = await freePort();
    const conf = path.join(dir, 'nginx.conf');
    const user = /^www-data:/m.test(readFileSync('/etc/passwd', 'utf8')) ? 'www-data' : 'nobody';
    writeFileSync(conf, `daemon off;
master_process on;
worker_processes 2;
user ${user};
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events { worker_connections 64; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server { listen 127.0.0.1:${port}; root ${www}; }
}
`);
    const child = h.spawnDetached(nginx, ['-c', conf, '-p', dir], dir, conf);
    assert.equal(await waitHttp(port, '/'), content);
    let workers: number[] = [];
    await waitUntil(() => (workers = childrenOf(child.pid!)).length === 2, 10_000);
    assert.equal(workers.length, 2, 'nginx has not two workers');
    for (const w of workers) h.track(w, 'nginx: worker process');
    const sharedOf = (pid: number) => readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => / rw-s .*\/dev\/zero/.test(l)).map((l) => l.split(/\s+/)[4]);
    assert.ok(sharedOf(child.pid!).length > 0, 'nginx master has no shared anonymous mapping');

    const loop = new RequestLoop(port, '/', (b) => b === content);
    await sleep(500);
    const moved = await migrateServer(h, agent, child.pid!, conf, child);
    await sleep(1500);
    await loop.stop();
    assert.deepEqual(loop.failures, [], 'requests failed');
    const newWorkers = childrenOf(moved.pid);
    for (const w of newWorkers) h.track(w, 'nginx: worker process');
    assert.equal(newWorkers.length, 2, 'the migrated master has not two workers');
    const uid = (pid: number) => (procStatus(pid)?.Uid ?? '').split(/\s+/);
    for (const w of newWorkers) {
      assert.match(readFileSync(`/proc/${w}/cmdline`, 'utf8'), /nginx: worker process/);
      const u = uid(w);
      assert.ok(u.length === 4 && u.every((x) => x !== '0'), `worker ${w} credentials ${u.join(' ')} (should be ${user})`);
    }
    assert.equal(uid(moved.pid)[0], '0', 'master is not root');
    // one shared object, mapped by the master and by both workers
    const inode = sharedOf(moved.pid);
    assert.ok(inode.length > 0, 'shared mapping missing in the migrated master');
    for (const w of newWorkers) assert.deepEqual(sharedOf(w), inode, `worker ${w} does not share the master's anonymous memory`);
    for (let i = 0; i < 10; i++) assert.equal((await httpGet(port, '/')).body, content);
    t.diagnostic(`nginx: frozen ${moved.summary.frozen_ms} ms, restore ${Math.round(moved.summary.restore_us / 1000)} ms; ${stats(loop)}`);
    await h.kill({ pid: moved.pid, marker: conf });
    for (const w of newWorkers) await h.kill({ pid: w, marker: 'nginx: worker process' });
    assertClean(agent);
  });

  test('rollback after the sockets were handed over: the source gets them back (Node.js, epoll, keep-alive)', { timeout: 90_000 }, async (t) => {
    // Dropped when the source announces its freeze: the source freezes and
    // hands its sockets over, then finds no destination to commit to.
    const failing = await startAgent({ fault: 'freeze:close' });
    try {
      const dir = h.tempDir('phaul-noderb-');
      const script = path.join(dir, 'server.cjs');
      writeFileSync(script, "require('http').createServer((q, r) => r.end('still here\\n')).listen(+process.argv[2], '127.0.0.1');\n");
      const port = await freePort();
      process.env.UV_USE_IO_URING = '0';
      const child = h.spawnDetached(process.execPath, [script, String(port)], dir, script);
      delete process.env.UV_USE_IO_URING;
      await waitHttp(port, '/');
      const ka = new http.Agent({ keepAlive: true, maxSockets: 1 });
      const loop = new RequestLoop(port, '/', (b) => b === 'still here\n', ka);
      try {
        await sleep(300);
        await assert.rejects(migrate({ pid: child.pid!, to: failing.address }), /still running here/);
        await sleep(1500);
      } finally {
        // Stopped whatever happened: a loop left running would keep this file from ever ending.
        await loop.stop();
        ka.destroy();
      }
      assert.deepEqual(loop.failures, [], 'requests failed');
      assert.equal(loop.localPorts.size, 1, 'keep-alive connection replaced');
      assert.equal((await httpGet(port, '/')).body, 'still here\n');
      t.diagnostic(`rollback: ${stats(loop)}`);
      await h.kill({ pid: child.pid!, marker: script });
      assertClean(failing);
    } finally {
      await failing.stop();
    }
  });
});
