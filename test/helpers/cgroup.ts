// A cgroup v2 of a test's own (under wherever this host mounts cgroup2),
// to put a workload in and find it back there after a restore.
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export interface TestCgroup {
  /** as /proc/PID/cgroup names it ("0::" + this) */
  path: string;
  add(pid: number): void;
  remove(): void;
}

/** Where cgroup2 is mounted and the cgroup path of that mount's root. */
function cgroup2Mount(): { at: string; root: string } | undefined {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [left, right] = line.split(' - ');
    if (!right?.startsWith('cgroup2 ')) continue;
    const f = left!.split(' ');
    return { at: f[4]!, root: f[3]! };
  }
  return undefined;
}

/** A new child of the cgroup2 root; undefined where there is none to make. */
export function makeTestCgroup(name: string): TestCgroup | undefined {
  const m = cgroup2Mount();
  if (!m || m.root !== '/') return undefined;
  const dir = path.join(m.at, name);
  try {
    if (!existsSync(dir)) mkdirSync(dir);
  } catch {
    return undefined;
  }
  return {
    path: `/${name}`,
    add: (pid) => writeFileSync(path.join(dir, 'cgroup.procs'), String(pid)),
    remove: () => {
      try {
        rmdirSync(dir);
      } catch {
        /* still in use or gone */
      }
    },
  };
}

/** The cgroup v2 path of process `pid`. */
export function cgroup2Of(pid: number): string | undefined {
  const line = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'));
  return line?.slice(3);
}
