// Running the phaul CLI (node bin/phaul.js ...) and checking its results.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { PHAUL_JS, REPO } from './paths.js';

export interface CliResult {
  args: string[];
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Run `node bin/phaul.js ...args`; never rejects (the exit status is in the result). */
export function runCli(args: string[], timeoutMs = 45_000): Promise<CliResult> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [PHAUL_JS, ...args],
      { cwd: REPO, timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 64 << 20, encoding: 'utf8' },
      (err, stdout, stderr) => {
        let code: number | null = 0;
        let signal: string | null = null;
        if (err) {
          const e = err as NodeJS.ErrnoException & { code?: number | string; signal?: string | null };
          code = typeof e.code === 'number' ? e.code : null;
          signal = e.signal ?? null;
          if (code === null && signal === null) stderr = `${stderr}\n[spawn error: ${e.message}]`;
        }
        resolve({ args, code, signal, stdout, stderr, ms: Date.now() - t0 });
      },
    );
  });
}

export function describe(r: CliResult): string {
  return `phaul ${r.args.join(' ')} -> exit ${r.code}${r.signal ? ' signal ' + r.signal : ''} after ${r.ms} ms\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`;
}

export function assertCliOk(r: CliResult): void {
  assert.equal(r.code, 0, `expected success:\n${describe(r)}`);
}

/** A failure must be a non-zero exit with exactly one stderr line starting with "phaul:" and no stack trace. */
export function assertCliError(r: CliResult, pattern?: RegExp): void {
  assert.notEqual(r.code, 0, `expected failure:\n${describe(r)}`);
  assert.equal(r.signal, null, `killed by a signal:\n${describe(r)}`);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  assert.equal(lines.length, 1, `expected one stderr line:\n${describe(r)}`);
  assert.match(lines[0], /^phaul: \S/, `stderr must start with "phaul:":\n${describe(r)}`);
  assert.doesNotMatch(r.stderr + r.stdout, /\n\s+at .+[:(]|panicked at|RUST_BACKTRACE/, `stack trace in output:\n${describe(r)}`);
  if (pattern) assert.match(lines[0], pattern, describe(r));
}

export function dump(pid: number, dir: string, extra: string[] = []): Promise<CliResult> {
  return runCli(['dump', '--pid', String(pid), '--dir', dir, ...extra]);
}

/** restore --json; asserts success and returns the pid from {"pid":N}. */
export async function restore(dir: string): Promise<number> {
  const r = await runCli(['restore', '--dir', dir, '--json']);
  assertCliOk(r);
  return parseRestorePid(r);
}

export function parseRestorePid(r: CliResult): number {
  const lines = r.stdout.split('\n').filter((l) => l.trim() !== '');
  assert.ok(lines.length > 0, `restore printed nothing:\n${describe(r)}`);
  let doc: unknown;
  try {
    doc = JSON.parse(lines[lines.length - 1]);
  } catch {
    assert.fail(`restore --json did not print JSON:\n${describe(r)}`);
  }
  const pid = (doc as { pid?: unknown }).pid;
  assert.ok(typeof pid === 'number' && Number.isInteger(pid) && pid > 1, `bad pid in restore output:\n${describe(r)}`);
  return pid;
}
