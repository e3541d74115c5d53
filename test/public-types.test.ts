// The library's public face: examples/consumer.ts, rewritten to import
// 'phaul' itself, must type-check against the shipped declarations
// (package.json "exports"/"types" -> dist/src/index.d.ts), and a misuse of the
// API must not. Also: cancellation with an AbortSignal rolls back (the source
// keeps running) with the stable code ECANCELED.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import * as phaul from '../src/index.js';
import { migrate, PhaulError } from '../src/index.js';
import { Agent, startAgent } from './helpers/agent.js';
import { REPO } from './helpers/paths.js';
import { runningFreely } from './helpers/proc.js';
import { assertNoFail, assertOkSequence, Harness, lastOk, waitForOk } from './helpers/workload.js';

const dir = path.join(REPO, 'dist', 'public-types-check');

function tsc(file: string): Promise<{ code: number; out: string }> {
  const bin = path.join(REPO, 'node_modules', 'typescript', 'bin', 'tsc');
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, '--noEmit', '--strict', '--module', 'NodeNext', '--moduleResolution', 'NodeNext', '--target', 'ES2022',
      '--skipLibCheck', '--types', 'node', file], { cwd: REPO }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, out: stdout + stderr }));
  });
}

describe('public types', () => {
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('the entry exports the documented API', () => {
    for (const name of ['migrate', 'serve', 'dump', 'restore', 'check', 'preflight', 'inspect', 'PhaulError', 'ExitCode', 'exitCodeFor', 'isPhaulError']) {
      assert.ok(name in phaul, `phaul does not export ${name}`);
    }
    const pkg = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8'));
    assert.equal(pkg.types, 'dist/src/index.d.ts');
    assert.equal(pkg.exports['.'].types, './dist/src/index.d.ts');
  });

  test("examples/consumer.ts type-checks when importing 'phaul'; a misuse does not", { timeout: 60_000 }, async () => {
    mkdirSync(dir, { recursive: true });
    const src = readFileSync(path.join(REPO, 'examples', 'consumer.ts'), 'utf8').replace("from '../src/index.js'", "from 'phaul'");
    assert.match(src, /from 'phaul'/);
    const good = path.join(dir, 'consumer.ts');
    writeFileSync(good, src);
    const ok = await tsc(good);
    assert.equal(ok.code, 0, ok.out);
    const bad = path.join(dir, 'misuse.ts');
    writeFileSync(bad, "import { migrate } from 'phaul';\nvoid migrate({ pid: 1, to: 'h:1', maxDowntimeMs: 'fast' });\n" +
      "import type { MigrateProgress } from 'phaul';\nexport const f = (p: MigrateProgress) => p.phase === 'round' && p.nonexistent;\n");
    const ko = await tsc(bad);
    assert.notEqual(ko.code, 0, 'a type error was not caught');
    assert.match(ko.out, /misuse\.ts\(2,\d+\): error TS2322/);
    assert.match(ko.out, /nonexistent/);
  });
});

describe('cancellation', () => {
  const h = new Harness();
  let agent: Agent | undefined;
  after(async () => {
    await agent?.stop();
    await h.cleanup();
  });

  test('abort during pre-copy rolls back: ECANCELED, the source keeps running', { timeout: 120_000 }, async () => {
    agent = await startAgent();
    const w = await h.start('bigmem', { args: ['256'], readyTimeoutMs: 30_000 });
    await waitForOk(w, 1, 40_000);
    const ok0 = lastOk(w);
    const controller = new AbortController();
    const phases: string[] = [];
    await assert.rejects(
      migrate({
        pid: w.pid, to: agent.address, signal: controller.signal,
        onProgress: (p) => {
          phases.push(p.phase);
          if (p.phase === 'round-start') controller.abort();
        },
      }),
      (e: PhaulError) => {
        assert.equal(e.code, 'ECANCELED', e.message);
        assert.match(e.message, /still running here/);
        return true;
      },
    );
    assert.ok(!phases.includes('freezing'), phases.join(' '));
    assert.ok(runningFreely(w.pid).ok, runningFreely(w.pid).why);
    assert.equal(w.child.exitCode, null);
    await waitForOk(w, ok0 + 1, 60_000);
    assertNoFail(w);
    assertOkSequence(w);
    await assert.rejects(migrate({ pid: w.pid, to: agent.address, signal: AbortSignal.abort() }), (e: PhaulError) => e.code === 'ECANCELED');
    await h.kill(w);
  });
});
