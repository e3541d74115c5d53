// Dump and restore cost by memory size: for each size, a workload fills that
// much memory, is dumped (killed), and restored; prints dump time, restore
// time, frozen time and image size. `npm run bench` (as root).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { dump, restore } from '../src/index.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sizes = (process.env.PHAUL_BENCH_SIZES ?? '64,512,2048').split(',').map(Number);

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function dirBytes(dir: string): number {
  return readdirSync(dir).reduce((n, f) => n + statSync(path.join(dir, f)).size, 0);
}

interface Row { mib: number; dump_ms: number; frozen_ms: number; restore_ms: number; image_mib: number; ok_after: boolean }

async function one(mib: number): Promise<Row> {
  const work = mkdtempSync(path.join(tmpdir(), 'phaul-bench-'));
  const log = path.join(work, 'log');
  const images = path.join(work, 'images');
  const bin = path.join(repo, 'test', 'workloads', 'bin', 'bigmem');
  const child = spawn(bin, [log, String(mib)], { detached: true, stdio: 'ignore' });
  child.unref();
  const pid = child.pid!;
  let restored = 0;
  try {
    const oks = () => (existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter((l) => l.startsWith('OK')).length : 0);
    await waitFor(() => oks() >= 1, 120_000, 'the workload to fill its memory');
    const t0 = performance.now();
    const d = await dump({ pid, dir: images });
    const dumpMs = performance.now() - t0;
    await waitFor(() => !existsSync(`/proc/${pid}`), 10_000, 'the dumped process to be gone');
    const before = oks();
    const t1 = performance.now();
    const r = await restore({ dir: images });
    const restoreMs = performance.now() - t1;
    restored = r.pid;
    let okAfter = true;
    try { await waitFor(() => oks() > before, 120_000, 'a verified pass after restore'); } catch { okAfter = false; }
    const fail = readFileSync(log, 'utf8').includes('FAIL');
    return { mib, dump_ms: Math.round(dumpMs), frozen_ms: Math.round(d.frozen_ms), restore_ms: Math.round(restoreMs), image_mib: +(dirBytes(images) / 1048576).toFixed(1), ok_after: okAfter && !fail };
  } finally {
    for (const p of [pid, restored]) { try { if (p) process.kill(p, 'SIGKILL'); } catch { /* gone */ } }
    rmSync(work, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const rows: Row[] = [];
  for (const mib of sizes) rows.push(await one(mib));
  console.log('size MiB | dump ms | frozen ms | restore ms | image MiB | verified after restore');
  for (const r of rows) console.log(`${String(r.mib).padStart(8)} | ${String(r.dump_ms).padStart(7)} | ${String(r.frozen_ms).padStart(9)} | ${String(r.restore_ms).padStart(10)} | ${String(r.image_mib).padStart(9)} | ${r.ok_after}`);
  const out = path.join(repo, 'bench', 'results-engine.json');
  writeFileSync(out, JSON.stringify({ when: new Date().toISOString(), rows }, null, 2));
  console.log(`(also in ${path.relative(repo, out)})`);
}

main().catch((e: unknown) => { console.error(`bench: ${e instanceof Error ? e.message : String(e)}`); process.exit(1); });
