// Real servers, none written here, live-migrated between two agents on this
// host while clients talk to them (docs/servers.md): redis-server with a raw
// RESP client kept open, python3 -m http.server and a Node.js HTTP server
// under a request loop (the Node one on a keep-alive connection), nginx with
// a master and two www-data workers sharing anonymous memory, PostgreSQL (a
// postmaster, its five helpers and a client's backend, with System V and
// anonymous shared memory) under a psql session. Every check is
// made from outside, by talking to the server. Nothing may be left behind:
// servers, stubs, nftables tables.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdirSync, chmodSync, chownSync, readdirSync, readlinkSync, existsSync } from 'node:fs';
import { execFile, execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import readline from 'node:readline';
import { promisify } from 'node:util';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Agent, startAgent } from './helpers/agent.js';
import { cmdline, killTree, procStatus, sleep, waitUntil } from './helpers/proc.js';
import {
  assertClean, childrenOf, freePort, httpGet, migrateServer, python, RequestLoop, RespClient, stats, StepLoop, waitHttp, which,
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
    const loop = new StepLoop(async (i) => assert.equal(await c.command('INCR', 'counter'), `:${i + 1}\r\n`, 'INCR answered out of sequence'), 5);
    await sleep(300);
    const moved = await migrateServer(h, agent, child.pid!, marker, child);
    await sleep(500);
    const n = await loop.stop();
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
    t.diagnostic(`redis: frozen ${moved.summary.frozen_ms} ms, restore ${Math.round(moved.summary.restore_us / 1000)} ms, largest gap between answers on the open connection ${loop.largestGap} ms, ${n} commands`);
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

  test('PostgreSQL: postmaster and children move; a session open before keeps answering, new sessions fork backends', { timeout: 120_000 }, async (t) => {
    const bin = postgresBin();
    const passwd = readFileSync('/etc/passwd', 'utf8').match(/^postgres:[^:]*:(\d+):(\d+):/m);
    const setpriv = which('setpriv');
    const runuser = which('runuser');
    if (!bin || !passwd || !setpriv || !runuser) return t.skip('PostgreSQL is not installed (scripts/setup.sh installs it)');
    const [uid, gid] = [Number(passwd[1]), Number(passwd[2])];
    const dir = h.tempDir('phaul-pg-');
    chmodSync(dir, 0o755);
    chownSync(dir, uid, gid);
    const data = path.join(dir, 'data');
    execFileSync(runuser, ['-u', 'postgres', '--', path.join(path.dirname(bin), 'initdb'), '-D', data, '-A', 'trust', '--no-sync'], { stdio: 'ignore' });
    const port = await freePort();
    const child = h.spawnDetached(setpriv, ['--reuid=postgres', '--regid=postgres', '--init-groups', bin, '-D', data, '-k', dir, '-p', String(port), '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off'], dir, data);
    const psql = path.join(path.dirname(bin), 'psql');
    const once = (sql: string) => execFileSync(psql, ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-qAtc', sql], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    assert.ok(await waitUntil(() => { try { return once('select 1') === '1'; } catch { return false; } }, 20_000), 'postgres does not accept connections');
    once('create table t (i int primary key, at timestamptz default now())');
    // Its long-lived helpers (backends and autovacuum workers come and go).
    const helpers = (pid: number) => childrenOf(pid).map((c) => (cmdline(c) ?? '').trim()).filter((c) => /^postgres: (checkpointer|background writer|walwriter|autovacuum launcher|logical replication launcher)$/.test(c)).sort();
    // One session, open across the migration: an insert every 2 ms.
    const session = new Psql(psql, port);
    t.after(() => session.close());
    const loop = new StepLoop(async (i) => assert.equal(await session.query(`insert into t (i) values (${i}) returning i`), String(i), 'insert answered out of sequence'), 2);
    // And short sessions, one backend each, that end during pre-copy: what
    // they write to shared memory no tracker sees (see native/src/shmem.rs).
    once('create table churn (i int primary key, v text)');
    let stop = false;
    let acked = 0;
    let next = 0;
    const churn = Promise.all([0, 1, 2].map(async () => {
      while (!stop) {
        const i = next++;
        await execFileAsync(psql, ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-qAtc', `insert into churn values (${i}, repeat('x', 300))`]);
        acked++;
      }
    }));
    await sleep(500);
    const before = helpers(child.pid!);
    assert.ok(before.length >= 4, `postgres has only ${before.length} helper processes: ${before.join(', ')}`);
    const moved = await migrateServer(h, agent, child.pid!, data, child);
    await sleep(500);
    stop = true;
    const n = await loop.stop();
    await churn;
    assert.ok(n > 50, 'the session did not run');
    assert.ok(acked > 10, 'the short sessions did not run');
    assert.equal(once('select count(*) from churn'), String(acked), 'rows committed by short sessions during the migration were lost');
    assert.equal(await session.query('select count(*) from t'), String(n), 'rows lost in the open session');
    assert.deepEqual(helpers(moved.pid), before, 'the migrated postmaster has other helper processes');
    // New sessions: the migrated postmaster forks backends that attach its shared memory.
    assert.equal(once('select count(*) from t'), String(n));
    assert.equal(once(`insert into t (i) values (${n}) returning i`), String(n));
    assert.equal(once('select count(*) from t'), String(n + 1));
    assert.deepEqual(session.unexpected, [], 'psql printed more than the answers');
    session.close();
    t.diagnostic(`postgres: frozen ${moved.summary.frozen_ms} ms, restore ${Math.round(moved.summary.restore_us / 1000)} ms, largest gap between answers in the open session ${loop.largestGap} ms, ${n} inserts there, ${acked} through short sessions`);
    const left = await killTree(moved.pid, (p) => (cmdline(p) ?? '').startsWith('postgres') || (cmdline(p) ?? '').includes(data));
    assert.deepEqual(left, [], 'postgres processes left after SIGKILL');
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

const execFileAsync = promisify(execFile);

/** The newest PostgreSQL server installed from Debian's packages. */
function postgresBin(): string | undefined {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a));
  return versions.map((v) => `${root}/${v}/bin/postgres`).find((b) => existsSync(b));
}

/** A psql session answering one query at a time (tuples only, unaligned). */
class Psql {
  private readonly proc: ChildProcessWithoutNullStreams;
  private readonly waiting: Array<(line: string) => void> = [];
  private readonly lines: string[] = [];
  private errors = '';
  constructor(psql: string, port: number) {
    this.proc = spawn(psql, ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-qAt', '-v', 'ON_ERROR_STOP=1']);
    readline.createInterface({ input: this.proc.stdout }).on('line', (l) => {
      const w = this.waiting.shift();
      if (w) w(l);
      else this.lines.push(l);
    });
    this.proc.stderr.on('data', (d: Buffer) => {
      this.errors += d.toString();
    });
    this.proc.on('exit', (code, sig) => {
      for (const w of this.waiting.splice(0)) w(`(psql exited: ${code ?? sig}: ${this.errors.trim()})`);
    });
  }
  /** Lines nobody asked for (there should be none). */
  get unexpected(): string[] {
    return this.lines;
  }
  query(sql: string): Promise<string> {
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.proc.stdin.write(`${sql};\n`);
    });
  }
  close(): void {
    this.proc.stdin.end();
  }
}
