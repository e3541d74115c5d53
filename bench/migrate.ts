// Live migration benchmark: for dirtier workloads of several sizes that
// rewrite memory at a steady rate, migrate each to a destination agent on
// this host, once with pre-copy (default policy) and once stop-and-copy
// (--max-rounds 0), and report rounds, total time, frozen time (source's
// clock: freeze to the destination's COMMITTED) and what the workload itself
// saw between its 1 ms ticks:
//   downtime      the gap that spans the frozen window (the move itself);
//   largest gap   the largest gap anywhere while the migration ran,
//                 pre-copy included;
//   observer gap  the largest gap of an unrelated process on this host
//                 (a small dirtier, not migrated) over the same time: the
//                 stalls the machine itself imposes on everything while
//                 pre-copy fills fresh memory (on this VM, tens of ms; see
//                 docs/migrate.md).
// Raw loopback TCP throughput and the rate of filling fresh memory with
// process_vm_writev (the destination's share of the work, no network) are
// measured in the same run for comparison.
//
//   node dist/bench/migrate.js [--sizes 256,1024,4096] [--rate 16] [--out FILE]
//
// Prints a table and writes the results as JSON (default
// dist/bench/migrate-results.json).
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startAgent, type Agent } from '../test/helpers/agent.js';
import { PHAUL_JS, REPO, workloadBin } from '../test/helpers/paths.js';
import { Harness, lastOk, readLog, waitForOk, type Workload } from '../test/helpers/workload.js';
import { adoptMigrated } from '../test/helpers/migrate.js';
import { waitUntil } from '../test/helpers/proc.js';
import type { MigrateSummary } from '../src/index.js';

const { values } = parseArgs({
  options: {
    sizes: { type: 'string', default: '256,1024,4096' },
    rate: { type: 'string', default: '16' },
    out: { type: 'string', default: path.join(REPO, 'dist', 'bench', 'migrate-results.json') },
    'blast-mib': { type: 'string', default: '1024' },
  },
});
const sizes = values.sizes!.split(',').map(Number);
const rate = Number(values.rate);
const GAP_THRESHOLD_US = 2000;

interface Row {
  mib: number;
  mode: 'pre-copy' | 'stop-and-copy';
  ok: boolean;
  error?: string;
  method?: string;
  rounds?: { round: number; pages: number; bytes: number; ms: number }[];
  stop_reason?: string;
  final_bytes?: number;
  bytes?: number;
  total_ms?: number;
  frozen_ms?: number;
  restore_ms?: number;
  /** The workload's gap between 1 ms ticks that spans the frozen window, ms (below 2 ms counts as 2). */
  workload_downtime_ms?: number;
  /** Its largest gap anywhere during the migration, ms. */
  workload_max_gap_ms?: number;
  /** Largest gap of an unrelated process (not migrated) during the migration, ms. */
  observer_max_gap_ms?: number;
  /** Effective page throughput of the whole migration (handshake to commit), MB/s. */
  mbps?: number;
  /** Page throughput of the first pre-copy round (all memory streamed while the workload runs), MB/s. */
  round0_mbps?: number;
}

function run(file: string, args: string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { cwd: REPO, timeout: timeoutMs, maxBuffer: 64 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string }) | null;
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : null) : 0, stdout, stderr });
    });
  });
}

/** Build bench/NAME.c into dist/bench/NAME. */
function buildTool(name: string): string {
  const bin = path.join(REPO, 'dist', 'bench', name);
  try {
    mkdirSync(path.dirname(bin), { recursive: true });
    execFileSync('gcc', ['-O2', '-o', bin, path.join(REPO, 'bench', `${name}.c`)], { stdio: 'pipe' });
  } catch (e) {
    throw new Error(`cannot build bench/${name}.c: ${(e as Error).message}`);
  }
  return bin;
}

async function tcpThroughput(mib: number): Promise<{ tool: string; mbps: number; seconds: number }> {
  const bin = buildTool('tcpblast');
  let best = { tool: 'tcpblast (C, 1 MiB send/recv, loopback)', mbps: 0, seconds: 0 };
  for (let i = 0; i < 3; i++) {
    const r = await run(bin, [String(mib)], 120_000);
    const m = /seconds=([\d.]+) mbps=([\d.]+)/.exec(r.stdout);
    if (r.code !== 0 || !m) throw new Error(`tcpblast failed: ${r.stderr}`);
    if (Number(m[2]) > best.mbps) best = { ...best, seconds: Number(m[1]), mbps: Number(m[2]) };
  }
  return best;
}

/**
 * Fresh-memory fill rate (bench/fillblast.c): process_vm_writev into memory
 * a child never touched, one thread, no network: the work the destination
 * does for every page. Three runs: the first usually lands on memory the
 * VM has not used lately (slow on this host), the later ones on memory the
 * previous run just freed.
 */
async function fillRate(mib: number): Promise<{ first_mbps: number; best_mbps: number }> {
  const bin = buildTool('fillblast');
  const rates: number[] = [];
  for (let i = 0; i < 3; i++) {
    const r = await run(bin, [String(mib)], 120_000);
    const m = /mbps=([\d.]+)/.exec(r.stdout);
    if (r.code !== 0 || !m) throw new Error(`fillblast failed: ${r.stderr}`);
    rates.push(Number(m[1]));
  }
  return { first_mbps: rates[0]!, best_mbps: Math.max(...rates) };
}

interface Gap { us: number; at: number }

function gapsOf(lines: string[]): Gap[] {
  return lines.filter((l) => l.startsWith('GAP ')).map((l) => {
    const f = l.split(' ');
    return { us: Number(f[1]), at: Number(f[3]) };
  });
}

const ms = (us: number) => Math.round(Math.max(us, GAP_THRESHOLD_US) / 100) / 10;

async function once(h: Harness, agent: Agent, mib: number, mode: Row['mode']): Promise<Row> {
  const row: Row = { mib, mode, ok: false };
  let w: Workload | undefined;
  let observer: Workload | undefined;
  try {
    w = await h.start('dirtier', { args: [String(mib), String(rate), String(GAP_THRESHOLD_US)], readyTimeoutMs: 120_000 });
    await waitForOk(w, 5, 30_000);
    observer = await h.start('dirtier', { args: ['64', '1', String(GAP_THRESHOLD_US)], readyTimeoutMs: 30_000 });
    await waitForOk(observer, 2, 30_000);
    const linesAt = readLog(w).length;
    const observerAt = readLog(observer).length;
    const extra = mode === 'stop-and-copy' ? ['--max-rounds', '0'] : [];
    const r = await run(process.execPath, [PHAUL_JS, 'migrate', '--to', agent.address, '--pid', String(w.pid), '--json', ...extra], 600_000);
    if (r.code !== 0) throw new Error(r.stderr.trim() || `exit ${r.code}`);
    const s = JSON.parse(r.stdout) as MigrateSummary;
    const observed = gapsOf(readLog(observer).slice(observerAt));
    await waitUntil(() => w!.child.signalCode !== null || w!.child.exitCode !== null, 5000);
    await adoptMigrated(h, w, s.dest_pid);
    const okAt = lastOk(w);
    await waitForOk(w, okAt + 3, 30_000);
    const lines = readLog(w).slice(linesAt);
    const fail = lines.find((l) => l.startsWith('FAIL'));
    if (fail) throw new Error(`workload: ${fail}`);
    const gaps = gapsOf(lines);
    // A gap spans the frozen window if it began before the window ended and ended after it began.
    const win = s.frozen_window_us;
    const across = gaps.filter((g) => g.at - g.us <= win.end && g.at >= win.start);
    Object.assign(row, {
      ok: true,
      method: s.method,
      rounds: s.rounds,
      stop_reason: s.stop_reason,
      final_bytes: s.final.bytes,
      bytes: s.bytes,
      total_ms: s.total_ms,
      frozen_ms: s.frozen_ms,
      restore_ms: Math.round(s.restore_us / 100) / 10,
      workload_downtime_ms: ms(Math.max(0, ...across.map((g) => g.us))),
      workload_max_gap_ms: ms(Math.max(0, ...gaps.map((g) => g.us))),
      observer_max_gap_ms: ms(Math.max(0, ...observed.map((g) => g.us))),
      mbps: Math.round(s.bytes / 1e3 / s.total_ms),
      round0_mbps: s.rounds[0] && s.rounds[0].ms > 0 ? Math.round(s.rounds[0].bytes / 1e3 / s.rounds[0].ms) : undefined,
    });
  } catch (e) {
    row.error = (e as Error).message.split('\n')[0];
  } finally {
    if (w) await h.kill(w).catch(() => undefined);
    if (observer) await h.kill(observer).catch(() => undefined);
  }
  return row;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === 0 || i === 1 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')).join('\n');
}

async function main(): Promise<void> {
  if (!existsSync(workloadBin('dirtier'))) throw new Error('test/workloads/bin/dirtier is missing: run `npm run build:workloads`');
  const h = new Harness();
  const agent = await startAgent();
  const results: Row[] = [];
  let tcp;
  let fill;
  try {
    tcp = await tcpThroughput(Number(values['blast-mib']));
    process.stderr.write(`loopback TCP: ${tcp.mbps} MB/s (${tcp.tool})\n`);
    fill = await fillRate(Number(values['blast-mib']));
    process.stderr.write(`fresh-memory fill: ${fill.first_mbps} MB/s first run, ${fill.best_mbps} MB/s best of 3\n`);
    for (const mib of sizes) {
      for (const mode of ['pre-copy', 'stop-and-copy'] as const) {
        process.stderr.write(`${mib} MiB ${mode} ...\n`);
        const row = await once(h, agent, mib, mode);
        results.push(row);
        process.stderr.write(row.ok
          ? `  frozen ${row.frozen_ms} ms, downtime seen ${row.workload_downtime_ms} ms, largest gap ${row.workload_max_gap_ms} ms (observer ${row.observer_max_gap_ms} ms), total ${row.total_ms} ms\n`
          : `  failed: ${row.error}\n  destination agent said:\n${agent.stderr.split('\n').slice(-30).join('\n')}\n`);
      }
    }
  } finally {
    await agent.stop();
    await h.cleanup().catch(() => undefined);
  }
  const header = ['size', 'mode', 'rounds', 'sent MB', 'final MB', 'total ms', 'frozen ms', 'restore ms', 'downtime ms', 'largest gap ms', 'observer gap ms', 'MB/s', 'round 0 MB/s', '% of TCP'];
  const body = results.map((r) =>
    r.ok
      ? [`${r.mib} MiB`, r.mode, String(r.rounds!.length), (r.bytes! / 1e6).toFixed(0), (r.final_bytes! / 1e6).toFixed(1),
         String(r.total_ms), String(r.frozen_ms), String(r.restore_ms), String(r.workload_downtime_ms),
         String(r.workload_max_gap_ms), String(r.observer_max_gap_ms), String(r.mbps), r.round0_mbps ? String(r.round0_mbps) : '-',
         r.round0_mbps && tcp ? String(Math.round((100 * r.round0_mbps) / tcp.mbps)) : '-']
      : [`${r.mib} MiB`, r.mode, 'failed', '', '', '', '', '', '', '', '', '', '', ''],
  );
  const failures = results.filter((r) => !r.ok).map((r) => `${r.mib} MiB ${r.mode}: ${r.error}\n`).join('');
  process.stdout.write(
    `\nphaul live migration, dirtier writing ${rate} MB/s, ${os.cpus().length} CPUs, Linux ${os.release()}\n` +
      `raw loopback TCP: ${tcp?.mbps} MB/s\n` +
      `fresh-memory fill (process_vm_writev, 1 thread, no network): ${fill?.first_mbps} MB/s first run, ${fill?.best_mbps} MB/s best of 3\n\n` + table([header, ...body]) + '\n' + (failures ? `\n${failures}` : ''),
  );
  const doc = { date: new Date().toISOString(), kernel: os.release(), cpus: os.cpus().length, rate_mbps: rate, tcp, fill, results };
  mkdirSync(path.dirname(values.out!), { recursive: true });
  writeFileSync(values.out!, JSON.stringify(doc, null, 2) + '\n');
  process.stdout.write(`\nresults: ${values.out}\n`);
  if (results.some((r) => !r.ok)) process.exitCode = 1;
}

main().catch((e) => {
  process.stderr.write(`bench: ${(e as Error).message}\n`);
  process.exit(1);
});
