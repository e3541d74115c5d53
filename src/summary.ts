// Counts shown after a dump and by inspect.

import type { StateDocument } from "./types.js";

export const PAGE_SIZE = 4096;

export interface StateCounts {
  processes: number;
  threads: number;
  vmas: number;
  pages: number;
  bytes: number;
  files: number;
}

export function countState(state: StateDocument): StateCounts {
  let threads = 0;
  let vmas = 0;
  let pages = 0;
  for (const p of state.processes) {
    threads += p.threads.length;
    vmas += p.vmas.length;
    for (const e of p.pages?.entries ?? []) pages += e.nr_pages;
  }
  return {
    processes: state.processes.length,
    threads,
    vmas,
    pages,
    bytes: pages * PAGE_SIZE,
    files: state.files.length,
  };
}
