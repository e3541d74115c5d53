// Real servers under live migration on one host (test/servers-*.test.ts):
// free ports, HTTP and RESP clients, a request loop that runs during the
// migration, finding the migrated tree by NSpid, and the leftover checks
// (no nftables table of phaul, no stub of the agent).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import type { Agent } from './agent.js';
import { cmdline, isAlive, procStat, procStatus, sleep, waitUntil } from './proc.js';
import type { Harness } from './workload.js';
import { migrate, type MigrateSummary } from '../../src/index.js';

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

export function python(): string | undefined {
  try {
    return execFileSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).trim();
  } catch {
    return undefined;
  }
}

export function which(cmd: string): string | undefined {
  for (const d of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/usr/bin', '/sbin'])) {
    try {
      execFileSync('test', ['-x', `${d}/${cmd}`]);
      return `${d}/${cmd}`;
    } catch {
      /* next */
    }
  }
  return undefined;
}

export function httpGet(port: number, urlPath: string, agent: http.Agent | false = false, timeoutMs = 10_000): Promise<{ status: number; body: string; localPort: number }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent, timeout: timeoutMs }, (res) => {
      let body = '';
      const localPort = res.socket.localPort ?? 0;
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, localPort }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${urlPath}: no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

export async function waitHttp(port: number, urlPath: string, timeoutMs = 15_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const r = await httpGet(port, urlPath, false, 3000);
      if (r.status === 200) return r.body;
      last = new Error(`status ${r.status}`);
    } catch (e) {
      last = e;
    }
    await sleep(50);
  }
  throw new Error(`GET ${urlPath} on port ${port} never succeeded: ${String(last)}`);
}

/** `step(i)` for i = 0, 1, ... with a pause between, until stop(): the
 * gaps between the ends of two steps (what a client saw of the downtime).
 * A step that throws ends the loop, and stop() throws it. */
export class StepLoop {
  count = 0;
  gaps: number[] = [];
  private stopped = false;
  private readonly done: Promise<void>;

  constructor(step: (i: number) => Promise<void>, pauseMs: number) {
    this.done = (async () => {
      let last = performance.now();
      while (!this.stopped) {
        await step(this.count);
        this.count++;
        const now = performance.now();
        this.gaps.push(now - last);
        last = now;
        await sleep(pauseMs);
      }
    })();
  }

  /** The number of steps done. */
  async stop(): Promise<number> {
    this.stopped = true;
    await this.done;
    return this.count;
  }

  get largestGap(): number {
    return Math.round(Math.max(...this.gaps));
  }
}

/** Requests one after another until stop(): each one's latency, failures kept. */
export class RequestLoop {
  latencies: number[] = [];
  failures: string[] = [];
  localPorts = new Set<number>();
  private stopped = false;
  private done: Promise<void>;

  constructor(port: number, urlPath: string, check: (body: string) => boolean, agent: http.Agent | false = false, pauseMs = 10) {
    this.done = (async () => {
      while (!this.stopped) {
        const t0 = performance.now();
        try {
          const r = await httpGet(port, urlPath, agent, 15_000);
          if (r.status !== 200 || !check(r.body)) this.failures.push(`status ${r.status} body ${JSON.stringify(r.body.slice(0, 80))}`);
          this.localPorts.add(r.localPort);
          this.latencies.push(performance.now() - t0);
        } catch (e) {
          this.failures.push(String(e));
        }
        await sleep(pauseMs);
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }

  get max(): number {
    return this.latencies.length ? Math.round(Math.max(...this.latencies)) : 0;
  }
}

/** A raw RESP client on one TCP connection, kept open by the test. */
export class RespClient {
  sock: net.Socket;
  events: string[] = [];
  private buf = '';
  private waiters: ((s: string) => void)[] = [];

  constructor(port: number) {
    this.sock = net.connect(port, '127.0.0.1');
    this.sock.setEncoding('latin1');
    this.sock.on('data', (d: string) => {
      this.buf += d;
      for (;;) {
        const n = replyLength(this.buf);
        if (n === 0) break;
        const reply = this.buf.slice(0, n);
        this.buf = this.buf.slice(n);
        this.waiters.shift()?.(reply);
      }
    });
    for (const ev of ['end', 'close', 'error'] as const) this.sock.on(ev, (e?: unknown) => this.events.push(`${ev} ${e ?? ''}`));
  }

  ready(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.sock.once('connect', () => resolve());
      this.sock.once('error', reject);
    });
  }

  /** Send one command; resolves with the raw reply. */
  command(...args: string[]): Promise<string> {
    const wire = `*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('');
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no reply to ${args[0]} in 20 s`)), 20_000);
      this.waiters.push((s) => {
        clearTimeout(timer);
        resolve(s);
      });
      this.sock.write(wire);
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

/** Length of the first complete RESP reply in buf (simple, error, integer, bulk), or 0. */
function replyLength(buf: string): number {
  const eol = buf.indexOf('\r\n');
  if (eol < 0) return 0;
  if (buf[0] === '$') {
    const len = Number(buf.slice(1, eol));
    if (len < 0) return eol + 2;
    return buf.length >= eol + 2 + len + 2 ? eol + 2 + len + 2 : 0;
  }
  return eol + 2;
}

/** Live processes whose innermost NSpid is inner and whose command line contains marker. */
export function findByNsPid(inner: number, marker: string): number | undefined {
  for (const n of readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    const pid = Number(n);
    if (!(cmdline(pid) ?? '').includes(marker)) continue;
    const ns = (procStatus(pid)?.NSpid ?? '').split(/\s+/).map(Number);
    if (ns.length > 1 && ns[ns.length - 1] === inner && isAlive(pid)) return pid;
  }
  return undefined;
}

/** Children (host view) of pid. */
export function childrenOf(pid: number): number[] {
  return readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .map(Number)
    .filter((p) => procStat(p)?.ppid === pid);
}

export interface Moved {
  summary: MigrateSummary;
  /** pid of the migrated root as this host sees it */
  pid: number;
}

/**
 * Live-migrate the tree rooted at pid (a child we spawned, found again by
 * marker) to the agent; checks the source copy is gone and returns the new
 * host pid, tracked for cleanup.
 */
export async function migrateServer(h: Harness, agent: Agent, pid: number, marker: string, child?: { exitCode: number | null; signalCode: string | null }): Promise<Moved> {
  const summary = await migrate({ pid, to: agent.address });
  assert.equal(summary.dest_pid, pid, 'migrated under another pid');
  if (child) assert.ok(await waitUntil(() => child.exitCode !== null || child.signalCode !== null, 5000), 'source copy still running');
  let found: number | undefined;
  await waitUntil(() => (found = findByNsPid(pid, marker)) !== undefined, 5000);
  assert.ok(found !== undefined, `cannot find the migrated process (pid ${pid} inside its namespace, marker ${marker})`);
  h.track(found, marker);
  await agent.waitEvent((e) => e.event === 'restored' && e.migration === summary.migration, 10_000, 'restored');
  return { summary, pid: found };
}

/** nftables tables phaul left behind (must be none). */
export function phaulNftTables(): string[] {
  const nft = which('nft');
  if (!nft) return [];
  try {
    return execFileSync(nft, ['list', 'tables'], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => l.includes('phaul_'));
  } catch {
    return [];
  }
}

/** iptables-legacy NFQUEUE rules of phaul's handoff left behind (must be none). */
export function phaulQueueRules(): string[] {
  const out: string[] = [];
  for (const prog of ['iptables-legacy', 'ip6tables-legacy']) {
    const path = which(prog);
    if (!path) continue;
    try {
      out.push(...execFileSync(path, ['-w', '-t', 'raw', '-S', 'PREROUTING'], { encoding: 'utf8' }).split('\n').filter((l) => l.includes('NFQUEUE') && l.includes('0x4000ffff')));
    } catch {
      /* no raw table: nothing left */
    }
  }
  return out;
}

export function assertClean(agent: Agent): void {
  assert.deepEqual(phaulNftTables(), [], 'nftables tables left behind');
  assert.deepEqual(phaulQueueRules(), [], 'NFQUEUE rules left behind');
  assert.deepEqual(agent.leftovers(), [], 'stubs of the agent left behind');
}

export function stats(loop: RequestLoop): string {
  const l = [...loop.latencies].sort((a, b) => a - b);
  const p50 = l.length ? Math.round(l[Math.floor(l.length / 2)]!) : 0;
  return `${l.length} requests, p50 ${p50} ms, max ${loop.max} ms, ${loop.failures.length} failed`;
}
