import { resolve } from "node:path";
import { callNative } from "./native.js";
import { writeImages } from "./images/index.js";
import { countState } from "./summary.js";
import { prepareDumpDir, validateDumpPid } from "./validate.js";
import type { DumpSummary, StateDocument } from "./types.js";

export interface DumpOptions {
  pid: number | string;
  dir: string;
  /** Resume the tree after the dump instead of killing it. */
  leaveRunning?: boolean;
  /** Replace an earlier dump in `dir`. */
  force?: boolean;
}

/**
 * Freeze the tree rooted at `pid`, write its images into `dir`, then kill the
 * tree (or resume it with leaveRunning). If the images cannot be written the
 * tree is resumed, so a failed dump never loses the process.
 */
export async function dump(options: DumpOptions): Promise<DumpSummary> {
  const pid = validateDumpPid(options.pid);
  prepareDumpDir(options.dir, options.force);
  const dir = resolve(options.dir);
  const started = performance.now();
  const reply = await callNative("dump", { pid, dir });
  const session = reply.session;
  const state = reply.state as StateDocument;
  let images: string[];
  try {
    images = writeImages(dir, state);
  } catch (e) {
    await callNative("dump_finish", { session, action: "resume" }).catch(() => undefined);
    throw e;
  }
  const action = options.leaveRunning ? "resume" : "kill";
  await callNative("dump_finish", { session, action });
  return {
    dir,
    root_pid: pid,
    ...countState(state),
    frozen_ms: Math.round((performance.now() - started) * 10) / 10,
    action,
    images,
    warnings: state.warnings ?? [],
  };
}
