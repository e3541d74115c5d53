// A small scheduler built on the library: drain a set of processes from this
// host onto a destination agent (`phaul serve`), several migrations at once
// (Promise.all over migrate()), with one progress line per event.
//
//   node dist/examples/scheduler.js --to 10.0.0.2:7070 PID [PID...]
//
// The agent runs one migration at a time and answers EBUSY to the others; the
// scheduler starts them all together and retries a busy one after a short
// pause, so the queue forms at the destination. Every failure leaves that
// process running here (migrate() rolls back); the others go on.
import { fileURLToPath } from 'node:url';
import { migrate, isPhaulError, PhaulError, type MigrateProgress, type MigrateSummary } from '../src/index.js';

export interface DrainOptions {
  /** Destination agent, HOST:PORT. */
  to: string;
  pids: number[];
  /** Called for every progress event of every migration. */
  onProgress?: (pid: number, p: MigrateProgress) => void;
  /** Aborts every migration not yet finished (each rolls back). */
  signal?: AbortSignal;
  /** Give up on a process after the agent stayed busy this long (default 10 min). */
  busyTimeoutMs?: number;
}

export interface DrainResult {
  pid: number;
  ok: boolean;
  summary?: MigrateSummary;
  /** PhaulError code and message when ok is false. */
  code?: string;
  message?: string;
  /** How many times the agent answered busy. */
  retries: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function migrateOne(pid: number, o: DrainOptions): Promise<DrainResult> {
  const deadline = Date.now() + (o.busyTimeoutMs ?? 600_000);
  let retries = 0;
  for (;;) {
    try {
      const summary = await migrate({
        pid,
        to: o.to,
        ...(o.signal ? { signal: o.signal } : {}),
        onProgress: (p) => o.onProgress?.(pid, p),
      });
      return { pid, ok: true, summary, retries };
    } catch (e) {
      const err = isPhaulError(e) ? e : new PhaulError('EFAILED', String(e));
      if (err.code === 'EBUSY' && Date.now() < deadline && !o.signal?.aborted) {
        retries++;
        await sleep(50 + Math.random() * 150);
        continue;
      }
      return { pid, ok: false, code: err.code, message: err.message, retries };
    }
  }
}

/** Migrate every pid to `to`, all at once; resolves with one result per pid (never rejects). */
export function drain(o: DrainOptions): Promise<DrainResult[]> {
  return Promise.all(o.pids.map((pid) => migrateOne(pid, o)));
}

/** One human line per progress event. */
export function describeProgress(pid: number, p: MigrateProgress): string {
  const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;
  switch (p.phase) {
    case 'connecting': return `[${pid}] connecting to ${p.to}`;
    case 'preflight': return `[${pid}] preflight: ${p.ok ? 'ok' : 'refused'}`;
    case 'tracking': return `[${pid}] dirty tracking: ${p.method}`;
    case 'round-start': return `[${pid}] round ${p.round} (estimate ${p.estimate_ms} ms)`;
    case 'round': return `[${pid}] round ${p.round}: ${mb(p.bytes)} sent (${mb(p.sent_bytes)} in all), ${mb(p.dirty_bytes)} dirty left, final round ~${p.estimate_ms} ms`;
    case 'freezing': return `[${pid}] freezing (${p.reason}), estimate ${p.estimate_ms} ms`;
    case 'restoring': return `[${pid}] final ${mb(p.bytes)} sent, restoring`;
    case 'restored': return `[${pid}] running on the destination as pid ${p.pid}, frozen ${p.frozen_ms} ms`;
    default: return `[${pid}] ${(p as { phase: string }).phase}`;
  }
}

async function main(argv: string[]): Promise<number> {
  const i = argv.indexOf('--to');
  const json = argv.includes('--json');
  if (i < 0 || !argv[i + 1]) {
    process.stderr.write('usage: scheduler --to HOST:PORT [--json] PID [PID...]\n');
    return 2;
  }
  const to = argv[i + 1]!;
  const pids = argv.filter((a, k) => k !== i && k !== i + 1 && /^\d+$/.test(a)).map(Number);
  const controller = new AbortController();
  process.once('SIGINT', () => controller.abort());
  const results = await drain({
    to, pids, signal: controller.signal,
    onProgress: (pid, p) => {
      if (json) process.stdout.write(JSON.stringify({ event: 'progress', pid, ...p }) + '\n');
      else process.stderr.write(describeProgress(pid, p) + '\n');
    },
  });
  for (const r of results) {
    if (json) process.stdout.write(JSON.stringify({ event: 'result', ...r }) + '\n');
    else process.stdout.write(r.ok ? `pid ${r.pid}: migrated (frozen ${r.summary!.frozen_ms} ms, ${r.retries} busy retries)\n` : `pid ${r.pid}: FAILED ${r.code}: ${r.message}\n`);
  }
  return results.every((r) => r.ok) ? 0 : 1;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).then((code) => process.exit(code));
}
