// `phaul wizard` driven through a pseudo-terminal from start to a finished
// migration: type to filter the process list down to a counter workload,
// pick the destination with the arrow keys among recent ones, read the
// preflight report, confirm, watch the progress; the workload counts on,
// migrated. A second run types a new address and is refused by the preflight
// (destination faked to lack the workload's executable): nothing frozen.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { Agent, startAgent } from './helpers/agent.js';
import { adoptMigrated } from './helpers/migrate.js';
import { PHAUL_JS, REPO } from './helpers/paths.js';
import { KEY, Terminal } from './helpers/pty.js';
import { runningFreely, sleep, waitUntil } from './helpers/proc.js';
import { assertNoFail, assertOkSequence, Harness, lastOk, waitForOk } from './helpers/workload.js';

describe('phaul wizard through a pseudo-terminal', () => {
  const h = new Harness();
  const agents: Agent[] = [];
  const terms: Terminal[] = [];
  after(async () => {
    for (const t of terms) t.kill();
    for (const a of agents) await a.stop();
    await h.cleanup();
  });

  test('pick a process, pick a destination, preflight, confirm, progress, finished', { timeout: 90_000 }, async () => {
    const agent = await startAgent();
    agents.push(agent);
    const w = await h.start('counter');
    await waitForOk(w, 1);
    const ok0 = lastOk(w);
    const sourcePid = w.pid;
    // recent destinations (latest first): a dead one on top, the agent second
    const config = h.tempDir('phaul-wizard-config-');
    mkdirSync(path.join(config, 'phaul'));
    writeFileSync(path.join(config, 'phaul', 'destinations'), `${agent.address}\n127.0.0.1:9\n`);
    const term = new Terminal([process.execPath, PHAUL_JS, 'wizard'], { cwd: REPO, env: { ...process.env, XDG_CONFIG_HOME: config } });
    terms.push(term);

    let at = await term.waitFor('Process to migrate');
    await sleep(200);
    term.write(String(w.pid)); // filter the list down to the workload
    at = await term.waitFor(new RegExp(`❯\\s+${w.pid}\\s+[\\d.]+ MiB\\s+\\S*counter`), 10_000, at);
    term.write(KEY.enter);
    at = await term.waitFor('Destination agent', 10_000, at);
    await term.waitFor('another address', 10_000, at);
    await sleep(100);
    term.write(KEY.down); // from 127.0.0.1:9 to the agent
    await term.waitFor(`❯ ${agent.address}`, 10_000, at);
    term.write(KEY.enter);
    at = await term.waitFor(`would be migrated to ${agent.address}`, 30_000, at);
    at = await term.waitFor('now?', 10_000, at);
    term.write(KEY.enter);
    at = await term.waitFor(/round 0: [\d.]+ MB sent/, 30_000, at);
    at = await term.waitFor(new RegExp(`migration finished: pid ${sourcePid} runs on ${agent.address.replace(/\./g, '\\.')}`), 60_000, at);
    assert.equal(await term.waitExit(), 0, term.text.slice(-2000));

    assert.ok(await waitUntil(() => w.child.signalCode !== null, 5000), 'source copy still running');
    await adoptMigrated(h, w, sourcePid);
    assert.ok(runningFreely(w.pid).ok, runningFreely(w.pid).why);
    await waitForOk(w, ok0 + 3);
    assertNoFail(w);
    assertOkSequence(w);
    assert.match(readFileSync(path.join(config, 'phaul', 'destinations'), 'utf8'), new RegExp(`${agent.address}\\n$`));
    await h.kill(w);
  });

  test('typed address, preflight refuses: exit 6, process untouched', { timeout: 60_000 }, async () => {
    const w = await h.start('counter');
    await waitForOk(w, 1);
    const exe = readlinkSync(`/proc/${w.pid}/exe`);
    process.env.PHAUL_FAKE_MISSING_FILES = exe;
    let agent: Agent;
    try {
      agent = await startAgent();
    } finally {
      delete process.env.PHAUL_FAKE_MISSING_FILES;
    }
    agents.push(agent);
    const ok0 = lastOk(w);
    const config = h.tempDir('phaul-wizard-config-'); // no recent destinations: asks for an address
    const term = new Terminal([process.execPath, PHAUL_JS, 'wizard'], { cwd: REPO, env: { ...process.env, XDG_CONFIG_HOME: config } });
    terms.push(term);
    let at = await term.waitFor('Process to migrate');
    await sleep(200);
    term.write(String(w.pid));
    at = await term.waitFor(new RegExp(`❯\\s+${w.pid}\\s`), 10_000, at);
    term.write(KEY.enter);
    at = await term.waitFor('HOST:PORT of', 10_000, at);
    term.write('not an address');
    term.write(KEY.enter);
    at = await term.waitFor('e.g. 10.0.0.2:7070', 10_000, at); // refused by validation
    term.write('\x7f'.repeat(20) + agent.address);
    term.write(KEY.enter);
    at = await term.waitFor('would NOT be migrated', 30_000, at);
    await term.waitFor(`refuse: file ${exe} missing on the destination`, 10_000, at);
    assert.equal(await term.waitExit(), 6, term.text.slice(-2000));
    assert.ok(runningFreely(w.pid).ok, runningFreely(w.pid).why);
    assert.equal(w.child.exitCode, null);
    await waitForOk(w, ok0 + 2);
    assertNoFail(w);
    assert.equal(agent.events.filter((e) => e.event === 'prepared').length, 0);
    await h.kill(w);
  });
});
