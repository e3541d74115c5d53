// TypeScript face of the native page receiver (destination side). Pages
// arrive over their own TCP connection, straight from the source's engine
// into the stub processes; this module only drives the native ops and checks
// their replies. One listener per agent process.

import { callNative } from "../src/native.js";
import { PhaulError } from "../src/errors.js";
import type { Layout, RoundStats } from "../migrate/protocol.js";
import type { TlsMaterial } from "../migrate/auth.js";
import { tlsPageFront } from "./tls.js";

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

let listening: PageServer | undefined;

/**
 * The page listener of this agent; at most one per process. The engine owns
 * the listening socket (`pageserver_listen`) and routes each page connection
 * to its migration by id and token. With TLS, the engine listens on
 * 127.0.0.1 only and a TLS front (./tls.ts) takes the public port.
 */
export class PageServer {
  private constructor(readonly host: string, readonly port: number, readonly tls: boolean) {}

  /** Start listening (port 0 picks a free one). */
  static async listen(host: string, port = 0, material?: TlsMaterial): Promise<PageServer> {
    if (listening) {
      if (listening.host === host && (port === 0 || port === listening.port) && listening.tls === (material !== undefined)) return listening;
      throw new PhaulError("EBUSY", `this process already has a page listener on ${listening.host}:${listening.port}`);
    }
    if (material) {
      const inner = count(await callNative("pageserver_listen", { host: "127.0.0.1", port: 0 }), "port", "pageserver_listen");
      const front = await tlsPageFront(host, port, inner, material);
      listening = new PageServer(host, front.port, true);
    } else {
      const reply = await callNative("pageserver_listen", { host, port });
      listening = new PageServer(host, count(reply, "port", "pageserver_listen"), false);
    }
    return listening;
  }

  /** The migration is over before its page stream came: stop waiting for it (and drop it if it is parked). */
  async cancel(migration: string): Promise<void> {
    await callNative("pageserver_cancel", { migration }).catch(() => undefined);
  }

  /** Check the pids of `layout` are free here (else a pid namespace hosts them) and create stub processes for them. */
  async prepare(migration: string, token: string, layout: Layout, pidNamespace?: boolean): Promise<PageSession> {
    const args: Record<string, unknown> = { migration, token, layout };
    if (pidNamespace !== undefined) args.pid_ns = pidNamespace;
    const reply = await callNative("dest_prepare", args);
    if (reply.session === undefined || reply.session === null) {
      throw new PhaulError("ENATIVE", `native "dest_prepare" replied without a session`);
    }
    return new PageSession(reply.session as string | number, reply.pid_ns === true);
  }
}

/** One migration's receiving side: stubs plus the data connection. */
export class PageSession {
  constructor(readonly id: string | number, readonly pidNamespace = false) {}

  /** Receive one pre-copy round (waits up to timeoutMs for the source to connect the first time). */
  async round(timeoutMs: number): Promise<RoundStats> {
    return roundStats(await callNative("dest_round", { session: this.id, timeout_ms: timeoutMs }), "dest_round");
  }

  /**
   * Receive the final round and the state, restore, and end the migration
   * with the source's engine on the page stream: the restored processes are
   * held stopped until the source commits, then run. Resolves once they run;
   * rejects (stubs and restored processes gone) when the restore fails or
   * the source resumed its copy instead of committing.
   */
  async restore(timeoutMs: number, commitTimeoutMs = 30_000): Promise<RestoreReply> {
    const reply = await callNative("dest_restore", { session: this.id, timeout_ms: timeoutMs, hold: true, commit: true, commit_timeout_ms: commitTimeoutMs });
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
  }
}
