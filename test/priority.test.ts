// The agents step back for the frozen window (src/priority.ts): every
// thread of this Node process gets a higher nice value, and its own back.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { stepBack } from '../src/priority.js';

/** nice of each thread of this process, from /proc (field 19 of stat). */
function niceOfThreads(): Map<number, number> {
  const out = new Map<number, number>();
  for (const t of readdirSync('/proc/self/task')) {
    try {
      const stat = readFileSync(`/proc/self/task/${t}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(Number(t), Number(fields[16]));
    } catch {
      /* ended */
    }
  }
  return out;
}

test('stepBack lowers every thread of the process by 10 nice levels, and its return puts each back', () => {
  const before = niceOfThreads();
  assert.ok(before.size > 1, 'Node runs more than one thread');
  const back = stepBack();
  const during = niceOfThreads();
  for (const [tid, n] of before) {
    if (!during.has(tid)) continue;
    assert.equal(during.get(tid), Math.min(19, n + 10), `thread ${tid}: nice ${during.get(tid)} while stepped back, was ${n}`);
  }
  back();
  back(); // twice is once
  const after = niceOfThreads();
  for (const [tid, n] of before) {
    if (!after.has(tid)) continue;
    assert.equal(after.get(tid), n, `thread ${tid}: nice ${after.get(tid)} after, was ${n}`);
  }
});

test('nested steps back share one step: threads are back only when the last returns', () => {
  const before = niceOfThreads();
  const main = [...before.keys()].find((t) => t === process.pid) ?? [...before.keys()][0];
  const n = before.get(main) ?? 0;
  const a = stepBack();
  const b = stepBack();
  assert.equal(niceOfThreads().get(main), Math.min(19, n + 10), 'one step of 10, not two');
  a();
  assert.equal(niceOfThreads().get(main), Math.min(19, n + 10), 'still back while the other runs');
  b();
  assert.equal(niceOfThreads().get(main), n, 'back to its own');
});
