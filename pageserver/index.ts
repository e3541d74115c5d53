// TypeScript face of the native page receiver (destination side). Pages
// arrive over their own TCP connection, straight from the source's engine
// into the stub processes; this module only drives the native ops and checks
// their replies. One listener per agent process.

import { callNative } from "../src/native.js";
import { PhaulError } from "../src/errors.js";
import type { Layout, RoundStats } from "../migrate/protocol.js";

export interface RestoreReply {
  pid: number;
  restore_us: number;
  pages: number;
  bytes: number;
}

function count(reply: Record<string, unknown>, key: string, op: string): number {
  const v = reply[key];
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) {
    throw new PhaulError("ENATIVE", `native "${op}" replied without a valid ${key}`);
  }
  return v;
}

function roundStats(reply: Record<string, unknown>, op: string): RoundStats {
  return {
    round: count(reply, "round", op),
    pages: count(reply, "pages", op),
    bytes: count(reply, "bytes", op),
    ms: count(reply, "ms", op),
  };
}

let listening: { host: string; port: number } | undefined;

/** The native page listener (pageserver_listen); at most one per process. */
export class PageServer {
  private constructor(readonly host: string, readonly port: number) {}

  /** Start listening (port 0 picks a free one). A second call returns the same listener when it fits. */
  static async listen(host: string, port = 0): Promise<PageServer> {
    if (listening) {
      if (listening.host === host && (port === 0 || port === listening.port)) return new PageServer(host, listening.port);
      throw new PhaulError("EBUSY", `this process already has a page listener on ${listening.host}:${listening.port}`);
    }
    const reply = await callNative("pageserver_listen", { host, port });
    const bound = count(reply, "port", "pageserver_listen");
    listening = { host, port: bound };
    return new PageServer(host, bound);
  }

  /** Check the pids of `layout` are free here and create stub processes for them. */
  async prepare(migration: string, token: string, layout: Layout): Promise<PageSession> {
    const reply = await callNative("dest_prepare", { migration, token, layout });
    if (reply.session === undefined || reply.session === null) {
      throw new PhaulError("ENATIVE", `native "dest_prepare" replied without a session`);
    }
    return new PageSession(reply.session as string | number);
  }
}

/** One migration's receiving side: stubs plus the data connection. */
export class PageSession {
  private ended = false;

  constructor(readonly id: string | number) {}

  /** Receive one pre-copy round (waits up to timeoutMs for the source to connect the first time). */
  async round(timeoutMs: number): Promise<RoundStats> {
    return roundStats(await callNative("dest_round", { session: this.id, timeout_ms: timeoutMs }), "dest_round");
  }

  /** Receive the final round and restore; the processes run afterwards. On failure the stubs are gone. */
  async restore(state: Record<string, unknown>, timeoutMs: number): Promise<RestoreReply> {
    const reply = await callNative("dest_restore", { session: this.id, state, timeout_ms: timeoutMs });
    this.ended = true;
    return {
      pid: count(reply, "pid", "dest_restore"),
      restore_us: count(reply, "restore_us", "dest_restore"),
      pages: typeof reply.pages === "number" ? reply.pages : 0,
      bytes: typeof reply.bytes === "number" ? reply.bytes : 0,
    };
  }

  /** Kill the stubs and end the session; idempotent, never throws. */
  async abort(): Promise<void> {
    try {
      await callNative("dest_abort", { session: this.id });
    } catch {
      /* already gone */
    }
    this.ended = true;
  }

  get done(): boolean {
    return this.ended;
  }
}
