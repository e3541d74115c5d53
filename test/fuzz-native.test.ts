// The page-stream fuzz lives in Rust (native/src/migrate/stream.rs, tests
// fuzz_header_decoder: 60,000 random headers; fuzz_frame_reader: 20,000
// random/mutated frame sequences through a receive_round-shaped reader).
// CI runs only node tests, so this file runs them, and the engine's other
// Rust tests (dirty-page trackers on real child processes, decoders),
// through cargo.
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

/** `cargo test --release CARGO_ARGS -- TEST_ARGS`: its output, or undefined (test skipped) without cargo. */
function cargoTest(t: { skip: (m: string) => void; diagnostic: (m: string) => void }, cargoArgs: string[], testArgs: string[]): string | undefined {
  const bin = cargo();
  if (!bin) {
    t.skip('cargo not found');
    return undefined;
  }
  const r = spawnSync(bin, ['test', '--release', '--manifest-path', path.join(REPO, 'native', 'Cargo.toml'), ...cargoArgs, '--', '--test-threads=2', ...testArgs], {
    cwd: REPO, encoding: 'utf8', timeout: 590_000,
  });
  const out = `${r.stdout}\n${r.stderr}`;
  t.diagnostic(out.split('\n').filter((l) => /^test |test result/.test(l)).join('\n'));
  assert.equal(r.status, 0, out.slice(-4000));
  return out;
}

test('page stream fuzz (cargo test fuzz: 80,000 cases)', { timeout: 600_000 }, (t) => {
  const out = cargoTest(t, [], ['fuzz']);
  if (out === undefined) return;
  assert.match(out, /fuzz_header_decoder \.\.\. ok/);
  assert.match(out, /fuzz_frame_reader \.\.\. ok/);
});

test('engine unit tests (cargo test --lib, fuzz excluded)', { timeout: 600_000 }, (t) => {
  const out = cargoTest(t, ['--lib'], ['--skip', 'fuzz']);
  if (out === undefined) return;
  assert.match(out, /uffd_wp_stale_layout_splits_nothing \.\.\. ok/);
  assert.match(out, /hash_tracks_a_child \.\.\. ok/);
});
