// The page-stream fuzz lives in Rust (native/src/migrate/stream.rs, tests
// fuzz_header_decoder: 60,000 random headers; fuzz_frame_reader: 20,000
// random/mutated frame sequences through a receive_round-shaped reader).
// CI runs only node tests, so this one runs them through cargo.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { REPO } from './helpers/paths.js';

function cargo(): string | undefined {
  for (const dir of [...(process.env.PATH ?? '').split(':'), path.join(os.homedir(), '.cargo', 'bin')]) {
    const p = path.join(dir, 'cargo');
    if (dir && existsSync(p)) return p;
  }
  return undefined;
}

test('page stream fuzz (cargo test fuzz: 80,000 cases)', { timeout: 600_000 }, (t) => {
  const bin = cargo();
  if (!bin) {
    t.skip('cargo not found');
    return;
  }
  const r = spawnSync(bin, ['test', '--release', '--manifest-path', path.join(REPO, 'native', 'Cargo.toml'), 'fuzz', '--', '--test-threads=2'], {
    cwd: REPO, encoding: 'utf8', timeout: 590_000,
  });
  const out = `${r.stdout}\n${r.stderr}`;
  t.diagnostic(out.split('\n').filter((l) => /^test |test result/.test(l)).join('\n'));
  assert.equal(r.status, 0, out.slice(-4000));
  assert.match(out, /fuzz_header_decoder \.\.\. ok/);
  assert.match(out, /fuzz_frame_reader \.\.\. ok/);
});
