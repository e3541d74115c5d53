// Framing of one image file: a fixed header, then one protobuf message.
//
//   0  8 bytes  magic "PHAULIMG"
//   8  u32 LE   image format version (IMAGE_VERSION)
//  12  u32 LE   kind code (ImageKind)
//  16  u32 LE   payload length in bytes
//  20  u32 LE   CRC-32 of the payload
//  24  payload  protobuf message of that kind
//
// Length and checksum are there because protobuf alone cannot tell a file cut
// at a field boundary from a complete one.

import { crc32 } from "node:zlib";
import { PhaulError } from "../errors.js";

export const MAGIC = Buffer.from("PHAULIMG", "latin1");
export const IMAGE_VERSION = 1;
export const HEADER_SIZE = 24;

export const ImageKind = {
  inventory: 1,
  pstree: 2,
  core: 3,
  mm: 4,
  fdinfo: 5,
  files: 6,
} as const;
export type ImageKindName = keyof typeof ImageKind;

export function kindName(code: number): string {
  const entry = Object.entries(ImageKind).find(([, c]) => c === code);
  return entry ? entry[0] : `unknown kind ${code}`;
}

export function frameImage(kind: ImageKindName, payload: Uint8Array): Buffer {
  const header = Buffer.alloc(HEADER_SIZE);
  MAGIC.copy(header, 0);
  header.writeUInt32LE(IMAGE_VERSION, 8);
  header.writeUInt32LE(ImageKind[kind], 12);
  header.writeUInt32LE(payload.length, 16);
  header.writeUInt32LE(crc32(payload), 20);
  return Buffer.concat([header, payload]);
}

/** Check the header of `file` and return its payload. */
export function unframeImage(file: string, data: Buffer, expected: ImageKindName): Buffer {
  const bad = (why: string) => new PhaulError("EIMAGE", `image ${file} ${why}`);
  if (data.length < HEADER_SIZE) {
    if (data.length >= MAGIC.length && !data.subarray(0, MAGIC.length).equals(MAGIC)) {
      throw bad("is not a phaul image (bad magic)");
    }
    throw bad(`is truncated (${data.length} bytes, header alone is ${HEADER_SIZE})`);
  }
  if (!data.subarray(0, MAGIC.length).equals(MAGIC)) throw bad("is not a phaul image (bad magic)");
  const version = data.readUInt32LE(8);
  if (version !== IMAGE_VERSION) {
    throw bad(`has image format version ${version}, this phaul reads version ${IMAGE_VERSION}`);
  }
  const kind = data.readUInt32LE(12);
  if (kind !== ImageKind[expected]) throw bad(`holds a ${kindName(kind)} image where ${expected} was expected`);
  const length = data.readUInt32LE(16);
  const payload = data.subarray(HEADER_SIZE);
  if (payload.length < length) throw bad(`is truncated (${payload.length} of ${length} payload bytes)`);
  if (payload.length > length) throw bad(`has ${payload.length - length} unexpected bytes after the payload`);
  if (crc32(payload) !== data.readUInt32LE(20)) throw bad("is corrupt (checksum mismatch)");
  return payload;
}
