// While a tree is frozen the agents only wait for their engines, but V8 may
// start a major garbage collection at any moment (after pre-copy's
// allocations, on "external memory pressure"), and its worker threads then
// take CPU time from the frozen processes running injected calls and from
// the destination's stubs. Measured on the 2-CPU test machine: a serve
// agent's collections took a quarter of the CPU time of a PostgreSQL
// migration's frozen window. So every thread of this Node process steps
// back (a higher nice value) for that window, and returns after it.
// The engines are processes of their own and keep their priority.

import { readdirSync } from "node:fs";
import { getPriority, setPriority } from "node:os";

const STEP = 10;

/** Whether this process may lower a nice value again (root, CAP_SYS_NICE,
 *  or RLIMIT_NICE room); probed once, with a step of one on the calling thread. */
let canReturn: boolean | undefined;

function probe(): boolean {
  if (canReturn !== undefined) return canReturn;
  try {
    const p = getPriority(0);
    if (p >= 19) return (canReturn = false);
    setPriority(0, p + 1);
    try {
      setPriority(0, p);
      canReturn = true;
    } catch {
      canReturn = false; // left one step back: harmless
    }
  } catch {
    canReturn = false;
  }
  return canReturn;
}

/** Threads stepped back and their own nice values, while any caller is. */
let held: { depth: number; before: Map<number, number> } | undefined;

function putBack(before: Map<number, number>): void {
  for (const [tid, p] of before) {
    try {
      setPriority(tid, p);
    } catch {
      /* ended */
    }
  }
}

/**
 * Lower the priority of every thread of this process; the function returned
 * puts each back. Nested calls (migrations run at once by one scheduler)
 * share one step: the last to return puts the threads back. A no-op where
 * a nice value could not be lowered again.
 */
export function stepBack(): () => void {
  if (!probe()) return () => undefined;
  if (held) {
    held.depth++;
  } else {
    let tids: number[];
    try {
      tids = readdirSync("/proc/self/task").map(Number).filter((t) => Number.isInteger(t) && t > 0);
    } catch {
      return () => undefined;
    }
    const before = new Map<number, number>();
    for (const tid of tids) {
      try {
        const p = getPriority(tid);
        setPriority(tid, Math.min(19, p + STEP));
        before.set(tid, p);
      } catch {
        /* the thread ended meanwhile */
      }
    }
    held = { depth: 1, before };
  }
  let done = false;
  return () => {
    if (done || !held) return;
    done = true;
    if (--held.depth > 0) return;
    const { before } = held;
    held = undefined;
    putBack(before);
  };
}
