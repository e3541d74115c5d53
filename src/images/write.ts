// Splits a state document into image files (docs/images.md). Page files are
// already in the directory: the engine writes them during the dump.

import { existsSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { PhaulError } from "../errors.js";
import { STATE_FORMAT, type StateDocument } from "../types.js";
import { checkMessage, pickFields } from "./convert.js";
import { frameImage, type ImageKindName } from "./format.js";
import {
  coreFile, fdinfoFile, FILES_FILE, INVENTORY_FILE, isPlainFileName, mmFile, PSTREE_FILE,
} from "./names.js";
import { imageType, messageType } from "./schema.js";

const DOC_LISTS = new Set(["processes", "files", "pipes"]);

function invalid(why: string): PhaulError {
  return new PhaulError("EIMAGE", `state document: ${why}`);
}

function encode(kind: ImageKindName, obj: Record<string, unknown>): Buffer {
  const type = imageType(kind);
  return frameImage(kind, type.encode(type.fromObject(obj)).finish());
}

interface PlannedImage {
  name: string;
  data: Buffer;
}

function planProcess(p: Record<string, unknown>, index: number, dir: string): PlannedImage[] {
  const path = `processes[${index}]`;
  const pstreeEntry = messageType("PstreeEntry");
  const core = imageType("core");
  const mm = imageType("mm");
  const fdinfo = imageType("fdinfo");
  for (const key of Object.keys(p)) {
    if (!pstreeEntry.fields[key] && !core.fields[key] && !mm.fields[key] && !fdinfo.fields[key]) {
      throw invalid(`${path}.${key} is not part of the image schema`);
    }
  }
  const pid = p.pid;
  if (typeof pid !== "number" || !Number.isInteger(pid) || pid <= 0) throw invalid(`${path}.pid must be a positive integer`);
  const own = (type: typeof core) => new Set(Object.keys(p).filter((k) => !type.fields[k]));
  checkMessage(pstreeEntry, p, path, own(pstreeEntry));
  checkMessage(core, p, path, own(core));
  checkMessage(mm, p, path, own(mm));
  checkMessage(fdinfo, p, path, own(fdinfo));

  const pages = p.pages as { file?: unknown } | undefined;
  if (pages && pages.file !== undefined && pages.file !== null && pages.file !== "") {
    const file = String(pages.file);
    if (!isPlainFileName(file)) throw invalid(`${path}.pages.file must be a plain file name, got ${JSON.stringify(file)}`);
    if (!existsSync(join(dir, file))) throw invalid(`page file ${file} of pid ${pid} was not written by the engine`);
  }
  return [
    { name: coreFile(pid), data: encode("core", pickFields(core, p)) },
    { name: mmFile(pid), data: encode("mm", pickFields(mm, p)) },
    { name: fdinfoFile(pid), data: encode("fdinfo", pickFields(fdinfo, p)) },
  ];
}

/**
 * Write the images of `state` into `dir` and return the names of every file
 * of the dump (page files included). inventory.img is written last, under a
 * temporary name then renamed, so its presence means the dump is complete.
 */
export function writeImages(dir: string, state: StateDocument): string[] {
  const doc = state as unknown as Record<string, unknown>;
  if (doc === null || typeof doc !== "object") throw invalid("is not an object");
  if (doc.format !== STATE_FORMAT) {
    throw invalid(`has format ${JSON.stringify(doc.format)}, this phaul writes format ${STATE_FORMAT}`);
  }
  const inventory = imageType("inventory");
  checkMessage(inventory, doc, "state", DOC_LISTS);
  if ("images" in doc) throw invalid("images is not part of the state document");
  if (!Array.isArray(doc.processes) || doc.processes.length === 0) throw invalid("processes must be a non-empty array");

  const planned: PlannedImage[] = [];
  const seen = new Set<number>();
  const pageFiles: string[] = [];
  doc.processes.forEach((p: Record<string, unknown>, i: number) => {
    if (p === null || typeof p !== "object") throw invalid(`processes[${i}] must be an object`);
    planned.push(...planProcess(p, i, dir));
    if (seen.has(p.pid as number)) throw invalid(`pid ${p.pid} appears twice in processes`);
    seen.add(p.pid as number);
    const file = (p.pages as { file?: string } | undefined)?.file;
    if (file) pageFiles.push(file);
  });
  if (!seen.has(doc.root_pid as number)) throw invalid(`root_pid ${doc.root_pid} is not among the processes`);

  const pstreeEntry = messageType("PstreeEntry");
  const pstree = { processes: doc.processes.map((p: Record<string, unknown>) => pickFields(pstreeEntry, p)) };
  planned.unshift({ name: PSTREE_FILE, data: encode("pstree", pstree) });

  const filesType = imageType("files");
  const filesDoc = { files: doc.files ?? [], pipes: doc.pipes ?? [] };
  checkMessage(filesType, filesDoc, "state");
  planned.push({ name: FILES_FILE, data: encode("files", filesDoc) });

  const images = [...planned.map((img) => img.name), ...pageFiles];
  const inv = { ...pickFields(inventory, doc), images };
  const invData = encode("inventory", inv);

  for (const img of planned) writeFileSync(join(dir, img.name), img.data);
  const tmp = join(dir, `.${INVENTORY_FILE}.tmp`);
  writeFileSync(tmp, invData);
  renameSync(tmp, join(dir, INVENTORY_FILE));
  return [INVENTORY_FILE, ...images];
}
