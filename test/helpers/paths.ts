import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root: the nearest ancestor of this file holding package.json (works from test/ and dist/test/). */
function findRepo(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'test', 'workloads'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cannot find the repository root from ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

export const REPO = findRepo();
export const PHAUL_JS = path.join(REPO, 'bin', 'phaul.js');
export const WORKLOAD_DIR = path.join(REPO, 'test', 'workloads');

export function workloadBin(name: string): string {
  return path.join(WORKLOAD_DIR, 'bin', name);
}
