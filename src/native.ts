// The only module that talks to ffi-rs. Everything crossing the boundary is a
// JSON request in a caller-owned Buffer and a JSON reply written back into
// another one (see platform-facts: returning char* through ffi-rs leaks or
// double-frees).

import { debug, logEnabled } from "./log.js";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { DataType, load, open } from "ffi-rs";
import { PhaulError } from "./errors.js";

const LIBRARY_KEY = "phaul";
const DEFAULT_REPLY_CAP = 1 << 20;

// Compiled to dist/src/native.js, so the repo root is two levels up.
const DEFAULT_LIB = fileURLToPath(new URL("../../native/target/release/libphaul.so", import.meta.url));

let openedPath: string | undefined;

export function nativeLibraryPath(): string {
  return process.env.PHAUL_NATIVE_LIB || DEFAULT_LIB;
}

function ensureOpen(): void {
  const path = nativeLibraryPath();
  if (openedPath === path) return;
  if (!existsSync(path)) {
    throw new PhaulError("ENATIVE", `native engine not found at ${path}: run \`npm run build\` first`);
  }
  try {
    open({ library: LIBRARY_KEY, path });
  } catch (e) {
    throw new PhaulError("ENATIVE", `cannot load native engine ${path}: ${(e as Error).message}`);
  }
  openedPath = path;
}

type Reply = Record<string, unknown> & { ok: boolean };

function callParams(req: Buffer, out: Buffer) {
  return {
    library: LIBRARY_KEY,
    funcName: "phaul_call",
    retType: DataType.I64,
    paramsType: [DataType.U8Array, DataType.U64, DataType.U8Array, DataType.U64],
    paramsValue: [req, req.length, out, out.length],
  };
}

// The engine keeps a reply that did not fit under the address of the buffer
// the call was given; `old` must be that very buffer (still referenced).
function takeParams(old: Buffer, out: Buffer) {
  return {
    library: LIBRARY_KEY,
    funcName: "phaul_take_reply",
    retType: DataType.I64,
    paramsType: [DataType.U8Array, DataType.U8Array, DataType.U64],
    paramsValue: [old, out, out.length],
  };
}

function encodeRequest(op: string, args: object): Buffer {
  return Buffer.from(JSON.stringify({ ...args, op }), "utf8");
}

// A reply that overflowed the call's buffer is fetched at once, keyed by
// that buffer, so calls in flight at the same time never mix their replies.
function takeKeptReply(old: Buffer, needed: number): Buffer {
  let out = Buffer.allocUnsafe(needed);
  for (;;) {
    const n = Number(load(takeParams(old, out)));
    if (n >= 0) return out.subarray(0, n);
    out = Buffer.allocUnsafe(-n);
  }
}

function parseReply(op: string, bytes: Buffer): unknown {
  let reply: Reply;
  try {
    reply = JSON.parse(bytes.toString("utf8")) as Reply;
  } catch {
    throw new PhaulError("ENATIVE", `native engine sent an unreadable reply to "${op}"`);
  }
  if (reply === null || typeof reply !== "object" || typeof reply.ok !== "boolean") {
    throw new PhaulError("ENATIVE", `native engine sent a malformed reply to "${op}"`);
  }
  if (!reply.ok) {
    const { ok: _ok, code, message, ...details } = reply;
    throw new PhaulError(
      typeof code === "string" && code ? code : "EFAILED",
      typeof message === "string" && message ? message : `native "${op}" failed`,
      Object.keys(details).length > 0 ? details : undefined,
    );
  }
  return reply;
}

export interface CallOptions {
  /** Initial reply buffer size; it grows when the reply does not fit. */
  replyCap?: number;
}

/**
 * Run one engine op on the libuv thread pool. Resolves with the parsed reply
 * (`ok` is true); rejects with a PhaulError carrying the engine's code.
 */
export function callNative(op: string, args: object = {}, options: CallOptions = {}): Promise<any> {
  if (logEnabled()) {
    const t0 = performance.now();
    debug(`native ${op} start`);
    const p = callNativeUnlogged(op, args, options);
    p.then(
      () => debug(`native ${op} ok ${(performance.now() - t0).toFixed(1)} ms`),
      (e: PhaulError) => debug(`native ${op} failed ${(performance.now() - t0).toFixed(1)} ms: ${e.code} ${e.message}`),
    );
    return p;
  }
  return callNativeUnlogged(op, args, options);
}

function callNativeUnlogged(op: string, args: object, options: CallOptions): Promise<any> {
  const run = async (): Promise<unknown> => {
    ensureOpen();
    const req = encodeRequest(op, args);
    const out = Buffer.allocUnsafe(options.replyCap ?? DEFAULT_REPLY_CAP);
    // req and out stay referenced by this closure until the promise settles.
    const n = Number(await load({ ...callParams(req, out), runInNewThread: true }));
    return parseReply(op, n >= 0 ? out.subarray(0, n) : takeKeptReply(out, -n));
  };
  // Calls run concurrently (a destination round waits for data that a source
  // round in the same process sends); each engine session has its own process.
  return run();
}

/** Same as callNative, blocking the event loop; for short ops only. */
export function callNativeSync(op: string, args: object = {}, options: CallOptions = {}): any {
  if (logEnabled()) debug(`native ${op} (sync)`);
  ensureOpen();
  const req = encodeRequest(op, args);
  const out = Buffer.allocUnsafe(options.replyCap ?? DEFAULT_REPLY_CAP);
  const n = Number(load(callParams(req, out)));
  return parseReply(op, n >= 0 ? out.subarray(0, n) : takeKeptReply(out, -n));
}
