// The README's demo: start a counting workload, dump it, restore it, and show
// that it counts on from where it was, with the same pid.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { dump, restore } from '../src/index.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function lastLine(log: string): string {
  const lines = readFileSync(log, 'utf8').trim().split('\n');
  return lines[lines.length - 1] ?? '';
}

async function waitGone(pid: number): Promise<void> {
  for (let i = 0; i < 100 && existsSync(`/proc/${pid}`); i++) await sleep(50);
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
  } finally {
    try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(`demo: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
