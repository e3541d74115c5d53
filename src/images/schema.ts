// Loads the .proto files of images/ once. They are read at run time (not
// generated into code) so the schema stays the single source of truth.

import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import protobuf from "protobufjs";
import { PhaulError } from "../errors.js";
import type { ImageKindName } from "./format.js";

const PROTO_FILES = ["inventory.proto", "pstree.proto", "core.proto", "mm.proto", "fdinfo.proto", "files.proto"];

/** Message type at the top of each image kind. */
const TOP_TYPE: Record<ImageKindName, string> = {
  inventory: "phaul.images.Inventory",
  pstree: "phaul.images.Pstree",
  core: "phaul.images.Core",
  mm: "phaul.images.Mm",
  fdinfo: "phaul.images.Fdinfo",
  files: "phaul.images.Files",
};

// Works from src/images (ts-node style) and from dist/src/images alike.
function findSchemaDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const candidate = join(dir, "images", "inventory.proto");
    if (existsSync(candidate)) return dirname(candidate);
    dir = dirname(dir);
  }
  throw new PhaulError("EIMAGE", "image schema (images/*.proto) not found next to phaul");
}

let root: protobuf.Root | undefined;

export function schemaRoot(): protobuf.Root {
  if (root) return root;
  const dir = findSchemaDir();
  const r = new protobuf.Root();
  r.loadSync(PROTO_FILES.map((f) => join(dir, f)), { keepCase: true });
  r.resolveAll();
  root = r;
  return r;
}

export function imageType(kind: ImageKindName): protobuf.Type {
  return schemaRoot().lookupType(TOP_TYPE[kind]);
}

export function messageType(name: string): protobuf.Type {
  return schemaRoot().lookupType(`phaul.images.${name}`);
}
