// A destination agent (`node bin/phaul.js serve --json`) as a child process,
// optionally inside a network namespace, with its JSON event lines collected.
// Each agent gets a unique --dir, which also marks its processes (and stubs
// forked from it) in /proc/PID/cmdline.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PHAUL_JS, REPO } from './paths.js';
import { cmdline, isAlive, sleep, waitUntil } from './proc.js';

export interface AgentEvent {
  event: string;
  [k: string]: unknown;
}

export interface AgentOptions {
  host?: string;
  /** run inside `ip netns exec NS` */
  netns?: string;
  /** PHAUL_FAULT for the agent (test-only fault injection) */
  fault?: string;
  /** extra `serve` arguments */
  args?: string[];
  /** command prefix, e.g. ['unshare', '--pid', '--fork', ...] (argv before node) */
  wrap?: string[];
}

export class Agent {
  events: AgentEvent[] = [];
  stderr = '';
  exit: { code: number | null; signal: string | null } | undefined;
  port = 0;
  host: string;
  readonly dir: string;
  readonly child: ChildProcess;

  constructor(readonly opts: AgentOptions = {}) {
    this.host = opts.host ?? '127.0.0.1';
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'phaul-agent-'));
    const node = [process.execPath, PHAUL_JS, 'serve', '--listen', `${this.host}:0`, '--json', '--dir', this.dir, ...(opts.args ?? [])];
    const argv = [...(opts.netns ? ['ip', 'netns', 'exec', opts.netns] : []), ...(opts.wrap ?? []), ...node];
    const env = { ...process.env };
    delete env.PHAUL_FAULT;
    if (opts.fault) env.PHAUL_FAULT = opts.fault;
    this.child = spawn(argv[0]!, argv.slice(1), { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let buf = '';
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          this.events.push(JSON.parse(line) as AgentEvent);
        } catch {
          this.stderr += `[stdout] ${line}\n`;
        }
      }
    });
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
    this.child.on('exit', (code, signal) => (this.exit = { code, signal }));
    this.child.on('error', (e) => (this.stderr += `[spawn error] ${e.message}\n`));
  }

  get address(): string {
    return `${this.host}:${this.port}`;
  }

  /** Wait for the "listening" event; returns this. */
  async ready(timeoutMs = 15_000): Promise<this> {
    const ev = await this.waitEvent((e) => e.event === 'listening', timeoutMs, 'listening');
    this.port = Number(String(ev.address).split(':').pop());
    return this;
  }

  async waitEvent(pred: (e: AgentEvent) => boolean, timeoutMs: number, what: string): Promise<AgentEvent> {
    let hit: AgentEvent | undefined;
    await waitUntil(() => (hit = this.events.find(pred)) !== undefined || this.exit !== undefined, timeoutMs);
    if (!hit) hit = this.events.find(pred);
    if (!hit) throw new Error(`agent: no ${what} event (exit ${JSON.stringify(this.exit)}); stderr:\n${this.stderr}\nevents:\n${this.describe()}`);
    return hit;
  }

  describe(): string {
    return this.events.map((e) => JSON.stringify(e)).join('\n');
  }

  /** Live processes other than the agent itself that carry its marker (stubs forked from it). */
  leftovers(): number[] {
    const out: number[] = [];
    for (const n of readdirSync('/proc')) {
      if (!/^\d+$/.test(n)) continue;
      const pid = Number(n);
      if (pid === this.child.pid) continue;
      if ((cmdline(pid) ?? '').includes(this.dir) && isAlive(pid)) out.push(pid);
    }
    return out;
  }

  async waitExit(timeoutMs = 10_000): Promise<boolean> {
    return waitUntil(() => this.exit !== undefined, timeoutMs);
  }

  /** SIGTERM, then SIGKILL; removes its dir. */
  async stop(): Promise<void> {
    if (!this.exit) {
      this.child.kill('SIGTERM');
      if (!(await this.waitExit(5000))) {
        this.child.kill('SIGKILL');
        await this.waitExit(5000);
      }
    }
    await sleep(0);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export async function startAgent(opts: AgentOptions = {}): Promise<Agent> {
  return new Agent(opts).ready();
}
