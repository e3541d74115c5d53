// What an embedder writes: everything from the package entry, typed. This
// file is compiled by the normal build (a type error in the public API fails
// `npm run build`), and test/public-types.test.ts type-checks a copy of it
// that imports 'phaul' itself, through package.json "exports"/"types".
import {
  check, dump, migrate, preflight, restore, serve, PhaulError, ExitCode, exitCodeFor, isPhaulError,
  type CheckResult, type DumpOptions, type MigrateOptions, type MigrateProgress, type MigrateSummary,
  type PreflightReport, type RestoreOptions, type ServeEvent, type ServeHandle, type ServeOptions,
} from '../src/index.js';

export async function embed(pid: number, to: string, signal: AbortSignal): Promise<MigrateSummary | PreflightReport> {
  const host: CheckResult = await check();
  if (!host.ok) throw new PhaulError('EFEATURE', 'this host lacks a required feature');
  const report: PreflightReport = await preflight({ pid, to, signal });
  if (!report.ok) return report;
  const onProgress = (p: MigrateProgress): void => {
    switch (p.phase) {
      case 'round': console.log(p.round, p.bytes, p.sent_bytes, p.dirty_bytes, p.rate, p.estimate_ms); break;
      case 'round-start': console.log(p.round, p.estimate_ms); break;
      case 'freezing': console.log(p.reason, p.estimate_ms); break;
      case 'preflight': console.log(p.ok, p.report.problems); break;
      case 'restored': console.log(p.pid, p.frozen_ms); break;
      default: break;
    }
  };
  const options: MigrateOptions = { pid, to, signal, onProgress, maxDowntimeMs: 50, maxRounds: 8, track: 'auto' };
  try {
    return await migrate(options);
  } catch (e) {
    if (isPhaulError(e)) {
      const code: string = e.code;
      const exit: ExitCode = e.exitCode;
      console.error(code, exit === exitCodeFor(code), e.details);
    }
    throw e;
  }
}

export async function agent(onEvent: (e: ServeEvent) => void): Promise<ServeHandle> {
  const o: ServeOptions = { listen: '127.0.0.1:0', onEvent };
  return serve(o);
}

export async function snapshot(pid: number, dir: string): Promise<number> {
  const d: DumpOptions = { pid, dir, leaveRunning: true };
  await dump(d);
  const r: RestoreOptions = { dir, pidNs: true };
  const restored = await restore(r);
  return ExitCode.OK + (typeof restored === 'object' ? 0 : 0);
}
