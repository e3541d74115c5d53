// The README's demo (`npm run setup` ends with it) must keep working: dump
// and restore with the same pid, then a live migration to a local agent.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { REPO } from './helpers/paths.js';

test('examples/demo.ts: dump, restore and a live migration, the workload counting on', { timeout: 120_000 }, async (t) => {
  const out = await new Promise<string>((resolve, reject) => {
    execFile(process.execPath, [path.join(REPO, 'dist', 'examples', 'demo.js')], { cwd: REPO, timeout: 110_000, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`demo failed: ${err.message}\n${stdout}\n${stderr}`));
      else resolve(stdout);
    });
  });
  t.diagnostic(out.trim());
  assert.match(out, /restored as pid \d+ \(same pid: true\)/);
  assert.match(out, /migrated with \S+: frozen [\d.]+ ms/);
  const m = /the original is gone \(gone\); the moved one counts on: OK (\d+) -> OK (\d+)/.exec(out);
  assert.ok(m, out);
  assert.ok(Number(m[2]) > Number(m[1]), `the moved workload did not count on: ${m[0]}`);
});
