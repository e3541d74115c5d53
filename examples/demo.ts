// The README's demo: start a counting workload, dump it, restore it, and show
// that it counts on from where it was, with the same pid; then live-migrate
// another one to a destination agent on this host and show it counting on
// there while the original is gone.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtempSync, readFileSync, readdirSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { dump, migrate, restore } from '../src/index.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function lastLine(log: string): string {
  const lines = readFileSync(log, 'utf8').trim().split('\n');
  return lines[lines.length - 1] ?? '';
}

async function waitGone(pid: number): Promise<void> {
  for (let i = 0; i < 100 && existsSync(`/proc/${pid}`); i++) await sleep(50);
}

/** Processes running `needle` in their command line (the workload wherever it now runs). */
function running(needle: string): number[] {
  const out: number[] = [];
  for (const n of readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    try {
      if (readFileSync(`/proc/${n}/cmdline`, 'utf8').includes(needle)) out.push(Number(n));
    } catch { /* gone */ }
  }
  return out;
}

/** `phaul serve` on a free loopback port, as a separate process (as on another host). */
async function startAgent(): Promise<{ agent: ChildProcess; address: string }> {
  const agent = spawn(process.execPath, [path.join(repo, 'bin', 'phaul.js'), 'serve', '--listen', '127.0.0.1:0', '--json'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: agent.stdout! });
  const address = await new Promise<string>((resolve, reject) => {
    agent.once('exit', (code) => reject(new Error(`the agent exited (${code})`)));
    lines.on('line', (l) => {
      try {
        const e = JSON.parse(l) as { event?: string; address?: string };
        if (e.event === 'listening' && e.address) resolve(e.address);
      } catch { /* not an event */ }
    });
  });
  return { agent, address };
}

async function liveMigration(work: string, bin: string): Promise<void> {
  const log = path.join(work, 'moving.log');
  const child = spawn(bin, [log], { detached: true, stdio: 'ignore' });
  child.unref();
  const pid = child.pid!;
  const { agent, address } = await startAgent();
  try {
    await sleep(1000);
    console.log(`\nworkload ${pid} is counting:   ${lastLine(log)}`);
    console.log(`destination agent on ${address}`);
    const s = await migrate({
      pid, to: address,
      onProgress: (p) => {
        if (p.phase === 'round') console.log(`  round ${p.round}: ${(p.bytes / 1048576).toFixed(1)} MiB in ${p.ms.toFixed(0)} ms`);
      },
    });
    console.log(`migrated with ${s.method}: frozen ${s.frozen_ms} ms; it runs there as pid ${s.dest_pid}${s.pid_ns ? ' (inside a new pid namespace: this host already had that pid)' : ''}`);
    await waitGone(pid);
    const before = lastLine(log);
    await sleep(1000);
    console.log(`the original is gone (${existsSync(`/proc/${pid}`) ? 'NOT gone' : 'gone'}); the moved one counts on: ${before} -> ${lastLine(log)}`);
  } finally {
    for (const p of running(log)) {
      try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
    }
    agent.kill('SIGTERM');
  }
}

async function main(): Promise<void> {
  const work = mkdtempSync(path.join(tmpdir(), 'phaul-demo-'));
  const log = path.join(work, 'counter.log');
  const images = path.join(work, 'images');
  const bin = path.join(repo, 'test', 'workloads', 'bin', 'counter');
  const child = spawn(bin, [log], { detached: true, stdio: 'ignore' });
  child.unref();
  const pid = child.pid!;
  try {
    await sleep(1000);
    console.log(`workload ${pid} is counting:   ${lastLine(log)}`);
    const d = await dump({ pid, dir: images });
    console.log(`dumped ${d.processes} process(es), ${(d.bytes / 1048576).toFixed(1)} MiB of pages; the workload is gone`);
    await waitGone(pid);
    await sleep(500);
    console.log(`while it was away:            ${lastLine(log)}`);
    const r = await restore({ dir: images });
    console.log(`restored as pid ${r.pid} (same pid: ${r.pid === pid})`);
    await sleep(1000);
    console.log(`after restore it counts on:   ${lastLine(log)}`);
    process.kill(r.pid, 'SIGKILL');
    await liveMigration(work, bin);
  } finally {
    try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(`demo: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
