import { resolve } from "node:path";
import { callNative } from "./native.js";
import { readImages } from "./images/index.js";
import { validateRestoreDir } from "./validate.js";
import type { RestoreResult } from "./types.js";

export interface RestoreOptions {
  dir: string;
}

/** Restore the dump in `dir`; resolves with the pid of the restored root. */
export async function restore(options: RestoreOptions): Promise<RestoreResult> {
  validateRestoreDir(options.dir);
  const dir = resolve(options.dir);
  const state = readImages(dir);
  const reply = await callNative("restore", { dir, state });
  return { pid: Number(reply.pid) };
}
