import { resolve } from "node:path";
import { callNative } from "./native.js";
import { readImages } from "./images/index.js";
import { validateRestoreDir } from "./validate.js";
import type { RestoreResult } from "./types.js";

export interface RestoreOptions {
  dir: string;
  /**
   * Restore into a new pid namespace, where the processes keep their pids
   * even when those are taken on this host (they see their old pids; the
   * host sees others). Without it, a taken pid is an error.
   */
  pidNs?: boolean;
}

/** Restore the dump in `dir`; resolves with the pid of the restored root. */
export async function restore(options: RestoreOptions): Promise<RestoreResult> {
  validateRestoreDir(options.dir);
  const dir = resolve(options.dir);
  const state = readImages(dir);
  const reply = await callNative("restore", { dir, state, pid_ns: options.pidNs === true });
  return { pid: Number(reply.pid), hostPid: Number(reply.host_pid ?? reply.pid) };
}
