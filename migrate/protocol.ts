// Control protocol between a migration source (`phaul migrate`) and a
// destination agent (`phaul serve`): typed messages, msgpackr-encoded, one
// message per binary WebSocket frame. Page data never travels here: it flows
// native-to-native over the page connection (see pageserver/).
//
// Every message received is validated (type and fields) before anything acts
// on it; a malformed one is a protocol error that tears the migration down.
// Unknown extra fields are ignored so that minor additions stay compatible.

import { Packr } from "msgpackr";
import { PhaulError } from "../src/errors.js";

/** Major protocol version: peers with a different major refuse each other. */
export const PROTOCOL = 3;

export type Role = "source" | "destination";

export interface Capabilities {
  arch: string;
  kernel: string;
  /** XSAVE feature mask, hex string ("0xe7"). */
  xcr0: string;
  xsave_size: number;
  /** Names of the engine features that work on this host. */
  features: string[];
  /** /proc/sys/kernel/random/boot_id: equal on both ends = one host. */
  boot_id?: string;
  /** "dev:inode" of the agent's network namespace: with an equal boot id, one network stack. */
  net_ns?: string;
}

export interface LayoutProcess {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  tids: number[];
  /** The engine's memory layout of the process (opaque here, checked by the engine). */
  vmas?: Record<string, unknown>[];
  /** An exited child not yet reaped by its parent: no threads, only its wait status. */
  zombie?: boolean;
  exit_code?: number;
  /** Objects shared by clone flags with an earlier process: its pid (the stub is forked sharing them). */
  shares?: { files?: number; fs?: number };
}

export interface Layout {
  processes: LayoutProcess[];
}

export interface RoundStats {
  round: number;
  pages: number;
  bytes: number;
  ms: number;
}

export interface HelloMsg {
  type: "hello";
  protocol: number;
  role: Role;
  capabilities: Capabilities;
  /** phaul version of the sender, informative. */
  software?: string;
  /** Destination only: port of its page receiver (same host as the control connection). */
  page_port?: number;
  /** Shared-secret proof (migrate/auth.ts), when the agents use --token-file. */
  auth?: { ts: number; nonce: string; mac: string };
}
export interface PrepareMsg {
  type: "prepare";
  migration: string;
  token: string;
  layout: Layout;
  page_port?: number;
}
export interface PreparedMsg {
  type: "prepared";
  page_port: number;
}
export interface RoundMsg {
  type: "round";
  n: number;
}
export interface RoundDoneMsg {
  type: "round_done";
  stats: RoundStats;
}
/** Source → destination, just before source_freeze: the tree is about to stop. */
export interface FreezingMsg {
  type: "freezing";
}
/**
 * Source → destination once source_freeze returned: the final pages and the
 * state are on the page stream (informational; the engines end the
 * migration between themselves, see docs/migrate.md).
 */
export interface FinalMsg {
  type: "final";
}
/** Destination → source, informational: the tree was restored and its copy runs (the engines agreed the commit on the page stream). */
export interface RestoredMsg {
  type: "restored";
  pid: number;
  restore_us: number;
  pages?: number;
  bytes?: number;
  /** Restored inside a new pid namespace (its pids were taken on the destination). */
  pid_ns?: boolean;
}
/** Either side: the migration is over and failed (code is a PhaulError code). */
export interface FailedMsg {
  type: "failed";
  code: string;
  message: string;
}
/** Source → destination once its engine killed the source copy. Also ends a dry run after `preflight_result`. */
export interface DoneMsg {
  type: "done";
}
/** One file the tree maps or holds open on the source. */
export interface FileFact {
  path: string;
  size: number;
  mtime_ms: number;
  /** Absent for files over the hash limit (compared by size and mtime only) and for written files. */
  sha256?: string;
  /** The tree writes this file (open for writing, shared-writable mapping): only its presence is checked. */
  writable?: boolean;
}
export interface FileFinding {
  path: string;
  /** missing, differs (size, type or content): refuse; mtime: same content, other mtime (note). */
  status: "missing" | "differs" | "mtime";
  detail: string;
}
/** Source → destination after hello, before anything is frozen: what the tree needs. */
export interface PreflightMsg {
  type: "preflight";
  /** Pids and tids of the tree. */
  pids: number[];
  /** CPUID flags of the source (/proc/cpuinfo). */
  cpu_flags: string[];
  files: FileFact[];
}
/** Destination → source: what it lacks. */
export interface PreflightResultMsg {
  type: "preflight_result";
  cpu_flags: string[];
  /** Only the files that are missing or differ. */
  files: FileFinding[];
  pids_taken: number[];
  /** The tree would run in a new pid namespace here. */
  pid_ns: boolean;
  /** Pids are taken and the agent refuses a pid namespace. */
  pid_refused: boolean;
  missing_required_features: string[];
}

export type Message =
  | HelloMsg
  | PrepareMsg
  | PreparedMsg
  | RoundMsg
  | RoundDoneMsg
  | FreezingMsg
  | FinalMsg
  | RestoredMsg
  | FailedMsg
  | DoneMsg
  | PreflightMsg
  | PreflightResultMsg;

export type MessageType = Message["type"];

// ---------------------------------------------------------------- encoding

// Plain maps, no records/structures extension: both ends stay simple to read
// with any msgpack implementation.
const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: "number" });

/** Largest message accepted (the state document of a big tree can be several MB). */
export const MAX_MESSAGE_BYTES = 64 << 20;

export function encode(msg: Message): Buffer {
  validate(msg); // never send what the peer would refuse
  return packr.pack(msg);
}

/** Decode and validate one frame; throws PhaulError EPROTO. */
export function decode(data: Uint8Array): Message {
  if (data.length > MAX_MESSAGE_BYTES) throw protoError(`message of ${data.length} bytes is too large`);
  let value: unknown;
  try {
    value = packr.unpack(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  } catch (e) {
    throw protoError(`undecodable message (${(e as Error).message.split("\n")[0]})`);
  }
  checkDepth(value);
  return validate(value);
}

// -------------------------------------------------------------- validation

/** Deepest nesting of maps and lists accepted (a state document needs < 10). */
export const MAX_DEPTH = 32;

/** Iterative, so a hostile nesting cannot overflow the stack here or later (JSON.stringify). */
function checkDepth(root: unknown): void {
  const stack: [unknown, number][] = [[root, 0]];
  while (stack.length) {
    const [v, d] = stack.pop()!;
    if (typeof v !== "object" || v === null || v instanceof Uint8Array) continue;
    if (d >= MAX_DEPTH) throw protoError(`message nested too deeply (more than ${MAX_DEPTH} levels)`);
    for (const x of Array.isArray(v) ? v : Object.values(v)) if (typeof x === "object" && x !== null) stack.push([x, d + 1]);
  }
}

function protoError(message: string): PhaulError {
  return new PhaulError("EPROTO", `protocol error: ${message}`);
}

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function obj(v: unknown, where: string): Obj {
  if (!isObj(v)) throw protoError(`${where} must be a map`);
  return v;
}

function str(o: Obj, key: string, where: string, opts: { max?: number; pattern?: RegExp } = {}): string {
  const v = o[key];
  if (typeof v !== "string") throw protoError(`${where}.${key} must be a string`);
  if (v.length > (opts.max ?? 4096)) throw protoError(`${where}.${key} is too long`);
  if (opts.pattern && !opts.pattern.test(v)) throw protoError(`${where}.${key} has a bad value ${JSON.stringify(v.slice(0, 40))}`);
  return v;
}

function int(o: Obj, key: string, where: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const v = o[key];
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
    throw protoError(`${where}.${key} must be an integer in [${min}, ${max}]`);
  }
  return v;
}

function num(o: Obj, key: string, where: string): number {
  const v = o[key];
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) throw protoError(`${where}.${key} must be a non-negative number`);
  return v;
}

function optional<T>(o: Obj, key: string, read: () => T): T | undefined {
  return o[key] === undefined || o[key] === null ? undefined : read();
}

const ID = /^[A-Za-z0-9_-]{1,128}$/;
const PID_MAX = 4194304; // PID_MAX_LIMIT on 64-bit

function capabilities(v: unknown): Capabilities {
  const o = obj(v, "hello.capabilities");
  const where = "hello.capabilities";
  const features = o.features;
  if (!Array.isArray(features) || features.length > 256 || !features.every((f) => typeof f === "string" && f.length <= 64)) {
    throw protoError(`${where}.features must be a list of names`);
  }
  return {
    arch: str(o, "arch", where, { max: 32, pattern: /^\S+$/ }),
    kernel: str(o, "kernel", where, { max: 256 }),
    xcr0: str(o, "xcr0", where, { max: 20, pattern: /^0x[0-9a-fA-F]{1,16}$/ }),
    xsave_size: int(o, "xsave_size", where, 0, 1 << 20),
    features: features as string[],
    ...(o.boot_id === undefined ? {} : { boot_id: str(o, "boot_id", where, { max: 64, pattern: /^[0-9a-f-]+$/ }) }),
    ...(o.net_ns === undefined ? {} : { net_ns: str(o, "net_ns", where, { max: 48, pattern: /^[0-9]+:[0-9]+$/ }) }),
  };
}

function layout(v: unknown): Layout {
  const o = obj(v, "prepare.layout");
  const procs = o.processes;
  if (!Array.isArray(procs) || procs.length === 0 || procs.length > 65536) {
    throw protoError("prepare.layout.processes must be a non-empty list");
  }
  return {
    processes: procs.map((p, i) => {
      const where = `prepare.layout.processes[${i}]`;
      const q = obj(p, where);
      const tids = q.tids;
      const zombie = q.zombie === true;
      if (q.zombie !== undefined && typeof q.zombie !== "boolean") throw protoError(`${where}.zombie must be a boolean`);
      if (!Array.isArray(tids) || (tids.length === 0 && !zombie) || tids.length > 65536 ||
          !tids.every((t) => Number.isSafeInteger(t) && t > 0 && t <= PID_MAX)) {
        throw protoError(`${where}.tids must be a non-empty list of pids`);
      }
      const out: LayoutProcess = {
        pid: int(q, "pid", where, 1, PID_MAX),
        ppid: int(q, "ppid", where, 0, PID_MAX),
        pgid: int(q, "pgid", where, 0, PID_MAX),
        sid: int(q, "sid", where, 0, PID_MAX),
        tids: tids as number[],
      };
      if (zombie) {
        out.zombie = true;
        out.exit_code = int(q, "exit_code", where, -(2 ** 31), 2 ** 31 - 1);
      }
      if (q.vmas !== undefined && q.vmas !== null) {
        if (!Array.isArray(q.vmas) || q.vmas.length > 1 << 20 || !q.vmas.every(isObj)) {
          throw protoError(`${where}.vmas must be a list of maps`);
        }
        out.vmas = q.vmas as Record<string, unknown>[];
      }
      if (q.shares !== undefined && q.shares !== null) {
        const sh = obj(q.shares, `${where}.shares`);
        out.shares = {};
        for (const key of Object.keys(sh)) {
          if (key !== "files" && key !== "fs") throw protoError(`${where}.shares.${key} is not a shared object phaul knows`);
          out.shares[key] = int(sh, key, `${where}.shares`, 1, PID_MAX);
        }
      }
      return out;
    }),
  };
}

function strList(v: unknown, where: string, maxItems: number, maxLen: number): string[] {
  if (!Array.isArray(v) || v.length > maxItems || !v.every((x) => typeof x === "string" && x.length <= maxLen)) {
    throw protoError(`${where} must be a list of at most ${maxItems} strings`);
  }
  return v as string[];
}

function pidList(v: unknown, where: string): number[] {
  if (!Array.isArray(v) || v.length > 1 << 20 || !v.every((t) => Number.isSafeInteger(t) && t > 0 && t <= PID_MAX)) {
    throw protoError(`${where} must be a list of pids`);
  }
  return v as number[];
}

function bool(o: Obj, key: string, where: string): boolean {
  if (typeof o[key] !== "boolean") throw protoError(`${where}.${key} must be a boolean`);
  return o[key] as boolean;
}

const PATH = /^\/[^\0]*$/;
const SHA256 = /^[0-9a-f]{64}$/;
const FLAG = /^[A-Za-z0-9_.-]{1,64}$/;

function flags(v: unknown, where: string): string[] {
  const l = strList(v, where, 4096, 64);
  if (!l.every((f) => FLAG.test(f))) throw protoError(`${where} has a bad flag name`);
  return l;
}

function list<T>(v: unknown, where: string, max: number, item: (x: unknown, w: string) => T): T[] {
  if (!Array.isArray(v) || v.length > max) throw protoError(`${where} must be a list of at most ${max} items`);
  return v.map((x, i) => item(x, `${where}[${i}]`));
}

function fileFact(v: unknown, where: string): FileFact {
  const o = obj(v, where);
  const f: FileFact = { path: str(o, "path", where, { pattern: PATH }), size: int(o, "size", where), mtime_ms: int(o, "mtime_ms", where) };
  const h = optional(o, "sha256", () => str(o, "sha256", where, { pattern: SHA256 }));
  if (h !== undefined) f.sha256 = h;
  if (o.writable !== undefined && o.writable !== null) f.writable = bool(o, "writable", where);
  return f;
}

function fileFinding(v: unknown, where: string): FileFinding {
  const o = obj(v, where);
  const status = str(o, "status", where);
  if (status !== "missing" && status !== "differs" && status !== "mtime") throw protoError(`${where}.status must be missing, differs or mtime`);
  return { path: str(o, "path", where, { pattern: PATH }), status, detail: str(o, "detail", where, { max: 512 }) };
}

function roundStats(v: unknown, where: string): RoundStats {
  const o = obj(v, where);
  return { round: int(o, "round", where), pages: int(o, "pages", where), bytes: int(o, "bytes", where), ms: num(o, "ms", where) };
}

/** Check that `value` is a well-formed message and return it typed (extra fields dropped). */
export function validate(value: unknown): Message {
  if (!isObj(value)) throw protoError("message must be a map");
  const type = value.type;
  if (typeof type !== "string") throw protoError("message without a type");
  const o = value;
  switch (type) {
    case "hello": {
      const role = str(o, "role", "hello");
      if (role !== "source" && role !== "destination") throw protoError(`hello.role must be source or destination`);
      const m: HelloMsg = {
        type,
        protocol: int(o, "protocol", "hello", 0, 1 << 30),
        role,
        capabilities: capabilities(o.capabilities),
      };
      const software = optional(o, "software", () => str(o, "software", "hello", { max: 64 }));
      if (software !== undefined) m.software = software;
      const pagePort = optional(o, "page_port", () => int(o, "page_port", "hello", 1, 65535));
      if (pagePort !== undefined) m.page_port = pagePort;
      if (o.auth !== undefined && o.auth !== null) {
        const a = obj(o.auth, "hello.auth");
        m.auth = {
          ts: int(a, "ts", "hello.auth"),
          nonce: str(a, "nonce", "hello.auth", { max: 64, pattern: /^[0-9a-f]{32}$/ }),
          mac: str(a, "mac", "hello.auth", { max: 64, pattern: /^[0-9a-f]{64}$/ }),
        };
      }
      return m;
    }
    case "prepare": {
      const m: PrepareMsg = {
        type,
        migration: str(o, "migration", "prepare", { pattern: ID }),
        token: str(o, "token", "prepare", { pattern: ID }),
        layout: layout(o.layout),
      };
      const pagePort = optional(o, "page_port", () => int(o, "page_port", "prepare", 1, 65535));
      if (pagePort !== undefined) m.page_port = pagePort;
      return m;
    }
    case "prepared":
      return { type, page_port: int(o, "page_port", "prepared", 1, 65535) };
    case "round":
      return { type, n: int(o, "n", "round", 0, 1 << 20) };
    case "round_done":
      return { type, stats: roundStats(o.stats, "round_done.stats") };
    case "freezing":
    case "final":
    case "done":
      return { type };
    case "restored": {
      const m: RestoredMsg = {
        type,
        pid: int(o, "pid", "restored", 1, PID_MAX),
        restore_us: num(o, "restore_us", "restored"),
      };
      const pages = optional(o, "pages", () => int(o, "pages", "restored"));
      if (pages !== undefined) m.pages = pages;
      const bytes = optional(o, "bytes", () => int(o, "bytes", "restored"));
      if (bytes !== undefined) m.bytes = bytes;
      if (o.pid_ns !== undefined && o.pid_ns !== null) {
        if (typeof o.pid_ns !== "boolean") throw protoError("restored.pid_ns must be a boolean");
        m.pid_ns = o.pid_ns;
      }
      return m;
    }
    case "preflight":
      return {
        type,
        pids: pidList(o.pids, "preflight.pids"),
        cpu_flags: flags(o.cpu_flags, "preflight.cpu_flags"),
        files: list(o.files, "preflight.files", 65536, fileFact),
      };
    case "preflight_result":
      return {
        type,
        cpu_flags: flags(o.cpu_flags, "preflight_result.cpu_flags"),
        files: list(o.files, "preflight_result.files", 65536, fileFinding),
        pids_taken: pidList(o.pids_taken, "preflight_result.pids_taken"),
        pid_ns: bool(o, "pid_ns", "preflight_result"),
        pid_refused: bool(o, "pid_refused", "preflight_result"),
        missing_required_features: strList(o.missing_required_features, "preflight_result.missing_required_features", 256, 64),
      };
    case "failed":
      return {
        type,
        code: str(o, "code", "failed", { max: 64, pattern: /^[A-Z][A-Z0-9_]*$/ }),
        message: str(o, "message", "failed", { max: 2000 }),
      };
    default:
      throw protoError(`unknown message type ${JSON.stringify(type.slice(0, 40))}`);
  }
}

// ------------------------------------------------------------ compatibility

/** Parse "0xe7" into a bigint mask. */
export function parseMask(hex: string): bigint {
  return BigInt(hex);
}

/**
 * Can a tree dumped on `source` run on `destination`? Returns a reason to
 * refuse, or undefined. Protocol major, architecture, and the XSAVE features
 * (a destination lacking a register component the source uses would lose
 * register state) must fit.
 */
export function incompatibility(source: HelloMsg, destination: HelloMsg): string | undefined {
  if (source.protocol !== destination.protocol) {
    return `protocol version mismatch: source speaks ${source.protocol}, destination ${destination.protocol}; upgrade phaul on both hosts`;
  }
  const s = source.capabilities;
  const d = destination.capabilities;
  if (s.arch !== d.arch) return `architecture mismatch: source is ${s.arch}, destination is ${d.arch}`;
  const missing = parseMask(s.xcr0) & ~parseMask(d.xcr0);
  if (missing !== 0n) {
    return `CPU mismatch: destination XCR0 ${d.xcr0} lacks register state the source uses (source ${s.xcr0}, missing bits 0x${missing.toString(16)})`;
  }
  return undefined;
}
