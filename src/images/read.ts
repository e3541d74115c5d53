// Joins the image files of a dump back into the state document.

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { PhaulError } from "../errors.js";
import { STATE_FORMAT, type ProcessState, type StateDocument } from "../types.js";
import { canonicalMessage, TO_OBJECT_OPTIONS } from "./convert.js";
import { unframeImage, type ImageKindName } from "./format.js";
import { coreFile, fdinfoFile, FILES_FILE, INVENTORY_FILE, isPlainFileName, mmFile, PSTREE_FILE } from "./names.js";
import { imageType } from "./schema.js";

type Obj = Record<string, any>;

// Key order of a process in the document, for readable JSON output.
const PROCESS_KEY_ORDER = [
  "pid", "ppid", "pgid", "sid", "comm", "exe", "cwd", "root", "umask", "rlimits",
  "mm", "vmas", "pages", "threads", "sigactions", "shared_pending", "itimers", "fds",
];

function readImage(dir: string, name: string, kind: ImageKindName): Obj {
  let data: Buffer;
  try {
    data = readFileSync(join(dir, name));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new PhaulError("EIMAGE", `image ${name} is missing from ${dir}`);
    throw new PhaulError("EIMAGE", `cannot read image ${name}: ${(e as Error).message}`);
  }
  const payload = unframeImage(name, data, kind);
  const type = imageType(kind);
  let decoded;
  try {
    decoded = type.decode(payload);
  } catch (e) {
    throw new PhaulError("EIMAGE", `image ${name} is corrupt (${(e as Error).message})`);
  }
  return canonicalMessage(type, type.toObject(decoded, TO_OBJECT_OPTIONS));
}

export interface Inventory {
  format: number;
  arch: string;
  kernel: string;
  xcr0: string;
  xsave_size: number;
  root_pid: number;
  created_ns: number | string;
  freeze_us?: number | string;
  images: string[];
  warnings?: string[];
}

export function hasInventory(dir: string): boolean {
  return existsSync(join(dir, INVENTORY_FILE));
}

/** Read and check inventory.img only. */
export function readInventory(dir: string): Inventory {
  if (!existsSync(dir)) throw new PhaulError("EIMAGE", `image directory ${dir} does not exist`);
  if (!hasInventory(dir)) throw new PhaulError("EIMAGE", `${dir} holds no ${INVENTORY_FILE}: not a phaul dump`);
  const inv = readImage(dir, INVENTORY_FILE, "inventory") as Inventory;
  if (inv.format !== STATE_FORMAT) {
    throw new PhaulError("EIMAGE", `dump in ${dir} has state format ${inv.format}, this phaul reads format ${STATE_FORMAT}`);
  }
  return inv;
}

function withoutPid(obj: Obj, name: string, pid: number): Obj {
  if (obj.pid !== pid) throw new PhaulError("EIMAGE", `image ${name} describes pid ${obj.pid}, not ${pid}`);
  const { pid: _pid, ...rest } = obj;
  return rest;
}

function orderProcess(p: Obj): ProcessState {
  const out: Obj = {};
  for (const key of PROCESS_KEY_ORDER) if (key in p) out[key] = p[key];
  for (const key of Object.keys(p)) if (!(key in out)) out[key] = p[key];
  return out as ProcessState;
}

/** Read every image of the dump in `dir` into one state document. */
export function readImages(dir: string): StateDocument {
  const { images, warnings, ...header } = readInventory(dir);
  for (const name of images) {
    if (typeof name !== "string" || !isPlainFileName(name)) {
      throw new PhaulError("EIMAGE", `${INVENTORY_FILE} lists an image named ${JSON.stringify(String(name).slice(0, 80))}, which is not a plain file name`);
    }
    if (!existsSync(join(dir, name))) {
      throw new PhaulError("EIMAGE", `image ${name} is missing from ${dir} (listed in ${INVENTORY_FILE})`);
    }
  }
  const pstree = readImage(dir, PSTREE_FILE, "pstree");
  const processes = (pstree.processes as Obj[]).map((entry) => {
    const pid = entry.pid as number;
    const core = withoutPid(readImage(dir, coreFile(pid), "core"), coreFile(pid), pid);
    const mm = withoutPid(readImage(dir, mmFile(pid), "mm"), mmFile(pid), pid);
    const fds = withoutPid(readImage(dir, fdinfoFile(pid), "fdinfo"), fdinfoFile(pid), pid);
    return orderProcess({ ...entry, ...core, ...mm, ...fds });
  });
  if (processes.length === 0) throw new PhaulError("EIMAGE", `image ${PSTREE_FILE} lists no processes`);
  const files = readImage(dir, FILES_FILE, "files");
  // An empty warnings list is the same as none: keep the document as it came.
  const extra = warnings && warnings.length > 0 ? { warnings } : {};
  return { ...header, ...extra, processes, files: files.files, pipes: files.pipes } as StateDocument;
}
