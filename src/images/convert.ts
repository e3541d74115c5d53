// Schema-driven checks and conversions between the state document and
// protobuf objects. Walking the reflected .proto types (instead of listing
// fields here) keeps images/*.proto the single place that names fields.

import type protobuf from "protobufjs";
import { PhaulError } from "../errors.js";

const LONG_TYPES = new Set(["uint64", "int64", "sint64", "fixed64", "sfixed64"]);
const UNSIGNED_LONG = new Set(["uint64", "fixed64"]);
const INT32_RANGE: Record<string, [number, number]> = {
  uint32: [0, 0xffffffff],
  fixed32: [0, 0xffffffff],
  int32: [-0x80000000, 0x7fffffff],
  sint32: [-0x80000000, 0x7fffffff],
  sfixed32: [-0x80000000, 0x7fffffff],
};
const U64_MAX = (1n << 64n) - 1n;
const TWO_53 = 2 ** 53;
const TWO_53N = 1n << 53n;
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;
// Checked as a length and a run of characters: a regular expression that
// repeats a group per 4 characters overflows the engine's stack on a string
// of megabytes (a socket queue of 4 MiB is 5.6 MB of base64).
const BASE64_CHARS = /^[A-Za-z0-9+/]*={0,2}$/;
const isBase64 = (v: string): boolean => v.length % 4 === 0 && BASE64_CHARS.test(v);

// Signal sets are bit masks; the document writes them as decimal strings
// whatever their size, so they are given back that way.
const ALWAYS_DECIMAL_STRING = new Set(["Thread.sigmask", "Sigaction.mask"]);

function invalid(path: string, why: string): PhaulError {
  return new PhaulError("EIMAGE", `state document: ${path} ${why}`);
}

function checkLong(fieldType: string, v: unknown, path: string): void {
  let big: bigint;
  if (typeof v === "number") {
    if (!Number.isInteger(v)) throw invalid(path, `must be an integer, got ${v}`);
    if (Math.abs(v) > TWO_53) throw invalid(path, `is a number above 2^53 (precision lost); send it as a decimal string`);
    big = BigInt(v);
  } else if (typeof v === "string" && /^-?[0-9]+$/.test(v)) {
    big = BigInt(v);
  } else {
    throw invalid(path, `must be an integer or a decimal string, got ${JSON.stringify(v)}`);
  }
  const [min, max] = UNSIGNED_LONG.has(fieldType) ? [0n, U64_MAX] : [I64_MIN, I64_MAX];
  if (big < min || big > max) throw invalid(path, `is out of range for ${fieldType}: ${v}`);
}

function checkScalar(field: protobuf.Field, v: unknown, path: string): void {
  const t = field.type;
  if (LONG_TYPES.has(t)) return checkLong(t, v, path);
  const range = INT32_RANGE[t];
  if (range) {
    if (typeof v !== "number" || !Number.isInteger(v) || v < range[0] || v > range[1]) {
      throw invalid(path, `must be a ${t}, got ${JSON.stringify(v)}`);
    }
    return;
  }
  switch (t) {
    case "bool":
      if (typeof v !== "boolean") throw invalid(path, `must be true or false, got ${JSON.stringify(v)}`);
      return;
    case "string":
      if (typeof v !== "string") throw invalid(path, `must be a string, got ${JSON.stringify(v)}`);
      return;
    case "bytes":
      if (typeof v !== "string" || !isBase64(v)) throw invalid(path, "must be a base64 string");
      return;
    case "double":
    case "float":
      if (typeof v !== "number") throw invalid(path, `must be a number, got ${JSON.stringify(v)}`);
      return;
    default:
      throw invalid(path, `has unsupported schema type ${t}`);
  }
}

function checkValue(field: protobuf.Field, v: unknown, path: string): void {
  if (field.resolvedType && "fields" in field.resolvedType) {
    checkMessage(field.resolvedType as protobuf.Type, v, path);
  } else {
    checkScalar(field, v, path);
  }
}

/**
 * Throw EIMAGE unless `obj` fits message `type`: no unknown keys, right JS
 * types, 64-bit values exact. Missing fields are fine (they default to zero);
 * `skip` names keys that belong to other images.
 */
export function checkMessage(type: protobuf.Type, obj: unknown, path: string, skip?: ReadonlySet<string>): void {
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    throw invalid(path, `must be an object (${type.name})`);
  }
  for (const [key, v] of Object.entries(obj)) {
    if (skip?.has(key)) continue;
    const field = type.fields[key];
    if (!field) throw invalid(`${path}.${key}`, `is not part of the image schema (message ${type.name})`);
    if (v === null || v === undefined) continue;
    if (field.repeated) {
      if (!Array.isArray(v)) throw invalid(`${path}.${key}`, "must be an array");
      v.forEach((item, i) => checkValue(field, item, `${path}.${key}[${i}]`));
    } else {
      checkValue(field, v, `${path}.${key}`);
    }
  }
}

/** Pick the keys of `obj` that are fields of `type`. */
export function pickFields(type: protobuf.Type, obj: object): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(obj)) {
    if (type.fields[key] && v !== null && v !== undefined) out[key] = v;
  }
  return out;
}

function canonicalLong(v: string, keepString: boolean): number | string {
  if (keepString) return v;
  const big = BigInt(v);
  return big <= TWO_53N && big >= -TWO_53N ? Number(big) : v;
}

function canonicalValue(type: protobuf.Type, field: protobuf.Field, v: unknown): unknown {
  if (field.resolvedType && "fields" in field.resolvedType) {
    return canonicalMessage(field.resolvedType as protobuf.Type, v as Record<string, unknown>, true);
  }
  if (LONG_TYPES.has(field.type)) {
    return canonicalLong(String(v), ALWAYS_DECIMAL_STRING.has(`${type.name}.${field.name}`));
  }
  return v;
}

/**
 * Turn a decoded object (toObject with longs: String, bytes: String,
 * defaults: true) into the document's shape: fields in schema order, 64-bit
 * values as numbers up to 2^53 and strings above, absent optionals dropped.
 */
export function canonicalMessage(type: protobuf.Type, obj: Record<string, unknown>, nested = false): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const field of type.fieldsArray) {
    const v = obj[field.name];
    if (v === null || v === undefined) continue;
    // Inside nested messages an empty list is the same as none (proto3 cannot
    // tell them apart): leave it out, as kind-specific lists mostly are.
    if (nested && field.repeated && (v as unknown[]).length === 0) continue;
    out[field.name] = field.repeated
      ? (v as unknown[]).map((item) => canonicalValue(type, field, item))
      : canonicalValue(type, field, v);
  }
  return out;
}

export const TO_OBJECT_OPTIONS: protobuf.IConversionOptions = {
  longs: String,
  bytes: String,
  defaults: true,
  arrays: true,
};
