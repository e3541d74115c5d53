// Pure unit tests of the pre-copy stop policy (migrate/policy.ts).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { bandwidth, decide, estimateFinalMs, notConverging, policyOptions, type RoundSample } from '../migrate/policy.js';

const MB = 1_000_000;
const r = (round: number, bytes: number, ms: number): RoundSample => ({ round, pages: Math.ceil(bytes / 4096), bytes, ms });
const opts = { maxDowntimeMs: 50, maxRounds: 8 };

describe('pre-copy policy', () => {
  test('round 0 always runs first; max-rounds 0 is stop-and-copy', () => {
    assert.equal(decide([], opts).action, 'round');
    const d = decide([], { ...opts, maxRounds: 0 });
    assert.deepEqual([d.action, d.action === 'freeze' && d.reason], ['freeze', 'stop-and-copy']);
  });

  test('bandwidth is bytes over time of all rounds', () => {
    assert.equal(bandwidth([r(0, 1000 * MB, 1000), r(1, 100 * MB, 100)]), MB);
    assert.equal(bandwidth([r(0, 10, 0)]), Infinity);
    assert.equal(bandwidth([r(0, 0, 0)]), Infinity);
    assert.equal(estimateFinalMs([r(0, 1000 * MB, 1000), r(1, 20 * MB, 20)]), 20);
    assert.equal(estimateFinalMs([r(0, 1000 * MB, 1000), r(1, 0, 1)]), 0);
  });

  test('a small tree freezes right after round 0', () => {
    const d = decide([r(0, 2 * MB, 3)], opts); // 3 ms at 0.67 MB/ms
    assert.equal(d.action, 'freeze');
    assert.equal(d.action === 'freeze' && d.reason, 'converged');
  });

  test('uses half the downtime budget for pages', () => {
    // 1 MB/ms; 30 MB dirty = 30 ms > 25 ms -> another round
    const h = [r(0, 1000 * MB, 1000), r(1, 30 * MB, 30)];
    assert.equal(decide(h, opts).action, 'round');
    // budget 80 ms -> 40 ms for pages -> freeze
    assert.equal(decide(h, { ...opts, maxDowntimeMs: 80 }).action, 'freeze');
    assert.equal(decide(h, { ...opts, pageShare: 1 }).action, 'freeze');
  });

  test('a converging workload iterates until the rest fits', () => {
    const h = [r(0, 1000 * MB, 1000), r(1, 100 * MB, 100)];
    assert.equal(decide(h, opts).action, 'round');
    h.push(r(2, 40 * MB, 40));
    assert.equal(decide(h, opts).action, 'round');
    h.push(r(3, 10 * MB, 10));
    const d = decide(h, opts);
    assert.equal(d.action === 'freeze' && d.reason, 'converged');
  });

  test('dirty bytes not shrinking for two rounds stops iterating', () => {
    const h = [r(0, 1000 * MB, 1000), r(1, 300 * MB, 300), r(2, 300 * MB, 300)];
    assert.equal(notConverging(h), false);
    assert.equal(decide(h, opts).action, 'round');
    h.push(r(3, 310 * MB, 310));
    assert.equal(notConverging(h), true);
    const d = decide(h, opts);
    assert.equal(d.action === 'freeze' && d.reason, 'not-converging');
    // a shrink in between resets it
    assert.equal(notConverging([r(0, 9, 1), r(1, 5, 1), r(2, 6, 1), r(3, 4, 1), r(4, 4, 1)]), false);
  });

  test('max-rounds caps the pre-copy', () => {
    const h: RoundSample[] = [r(0, 1000 * MB, 1000)];
    for (let i = 1; i < 3; i++) h.push(r(i, (400 - i * 100) * MB, (400 - i * 100)));
    const d = decide(h, { ...opts, maxRounds: 3 });
    assert.equal(d.action === 'freeze' && d.reason, 'max-rounds');
    assert.equal(decide(h.slice(0, 2), { ...opts, maxRounds: 3 }).action, 'round');
    assert.equal(decide(h.slice(0, 1), { ...opts, maxRounds: 1 }).action === 'freeze', true);
  });

  test('options are checked', () => {
    assert.deepEqual(policyOptions(), { maxDowntimeMs: 50, maxRounds: 8 });
    assert.throws(() => policyOptions(0), /positive/);
    assert.throws(() => policyOptions(10, -1), /rounds/);
    assert.throws(() => policyOptions(10, 1.5), /rounds/);
  });
});
