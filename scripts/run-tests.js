#!/usr/bin/env node
// Runs the compiled tests (dist/test/*.test.js) one file at a time with the
// node:test runner and exits with the runner's exit code. Extra arguments are
// passed to the runner (e.g. --test-name-pattern=counter) or, when they end in
// .test.js / .test.ts, select test files by name.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const testDir = path.join(repo, 'dist', 'test');
if (!existsSync(testDir)) {
  console.error('run-tests: dist/test does not exist: run `npm run build` first');
  process.exit(2);
}

const extra = process.argv.slice(2);
const wanted = extra.filter((a) => /\.test\.[jt]s$/.test(a)).map((a) => path.basename(a).replace(/\.ts$/, '.js'));
const runnerArgs = extra.filter((a) => !/\.test\.[jt]s$/.test(a));

let files = readdirSync(testDir)
  .filter((f) => f.endsWith('.test.js'))
  .sort();
if (wanted.length) files = files.filter((f) => wanted.includes(f));
if (files.length === 0) {
  console.error('run-tests: no test files found in dist/test');
  process.exit(2);
}

// The spec reporter prints each test and, at the end, the runner's summary
// (tests, suites, pass, fail, cancelled, skipped, todo, duration).
const args = [
  '--test',
  '--test-concurrency=1',
  '--test-reporter=spec',
  ...runnerArgs,
  ...files.map((f) => path.join(testDir, f)),
];
const r = spawnSync(process.execPath, args, { cwd: repo, stdio: 'inherit' });
if (r.error) {
  console.error(`run-tests: ${r.error.message}`);
  process.exit(2);
}
process.exit(r.status ?? 1);
