// Output conventions of every command: --help works and lists --json and the
// global options; --json errors are a JSON document with the stable code and
// exit code; --verbose and --log-file FILE write timestamped debug lines
// (command, native ops and their timings).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { commands } from '../src/cli/registry.js';
import { describe as describeCli, runCli } from './helpers/cli.js';
import { Harness } from './helpers/workload.js';

describe('CLI output conventions', () => {
  const h = new Harness();
  after(() => h.cleanup());

  test('--help on every command', async () => {
    for (const name of Object.keys(commands)) {
      for (const flag of ['--help', '-h']) {
        const r = await runCli([name, flag]);
        assert.equal(r.code, 0, describeCli(r));
        assert.match(r.stdout, new RegExp(`^Usage: phaul ${name}`), describeCli(r));
        assert.match(r.stdout, /--json/, `${name} --help does not list --json`);
        assert.match(r.stdout, /--verbose/, describeCli(r));
        assert.match(r.stdout, /--log-file FILE/, describeCli(r));
        assert.doesNotMatch(r.stdout, /not implemented/, describeCli(r));
      }
      const viaHelp = await runCli(['help', name]);
      assert.equal(viaHelp.code, 0, describeCli(viaHelp));
    }
    const top = await runCli(['--help']);
    assert.equal(top.code, 0);
    for (const name of Object.keys(commands)) assert.match(top.stdout, new RegExp(`\\n  ${name}\\s`));
    assert.match(top.stdout, /6 refused by the migration preflight/);
  });

  test('--json errors carry the stable code and exit code', async () => {
    const r = await runCli(['migrate', '--to', '127.0.0.1:1', '--pid', 'abc', '--json']);
    assert.equal(r.code, 2, describeCli(r));
    const doc = JSON.parse(r.stdout) as { error: { code: string; exit_code: number; message: string } };
    assert.equal(doc.error.exit_code, 2);
    assert.match(doc.error.code, /^E[A-Z]+$/);
    assert.equal(r.stderr.trim().split('\n').length, 1, describeCli(r));
    const conn = await runCli(['migrate', '--to', '127.0.0.1:1', '--pid', String(process.pid), '--dry-run', '--json']);
    assert.notEqual(conn.code, 0, describeCli(conn));
    assert.ok(JSON.parse(conn.stdout).error.code, describeCli(conn));
  });

  test('--verbose and --log-file: timestamped debug lines with native op timings', async () => {
    const d = h.tempDir();
    const log = path.join(d, 'phaul.log');
    const r = await runCli(['check', '--json', '--log-file', log]);
    assert.equal(r.code, 0, describeCli(r));
    JSON.parse(r.stdout); // stdout stays pure JSON
    const lines = readFileSync(log, 'utf8').trim().split('\n');
    for (const l of lines) assert.match(l, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z phaul\[\d+\] /, l);
    assert.ok(lines.some((l) => / native check ok [\d.]+ ms$/.test(l)), lines.join('\n'));
    assert.ok(lines.some((l) => / exit 0 after [\d.]+ ms$/.test(l)), lines.join('\n'));
    const v = await runCli(['--verbose', 'check']);
    assert.equal(v.code, 0, describeCli(v));
    assert.match(v.stderr, /phaul\[\d+\] native check ok/);
    const bad = await runCli(['check', '--log-file']);
    assert.equal(bad.code, 2, describeCli(bad));
  });
});
