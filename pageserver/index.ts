// TypeScript face of the native page receiver (destination side). Pages
// arrive over their own TCP connection, straight from the source's engine
// into the stub processes; this module only drives the native ops and checks
// their replies. One listener per agent process.

import net from "node:net";
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

let listening: PageServer | undefined;

/**
 * The page listener of this agent; at most one per process.
 *
 * Native mode (`pageserver_listen`): the engine owns the listening socket and
 * routes each page connection to its migration by id and token.
 *
 * Relay mode, used while the engine lacks `pageserver_listen`: the engine
 * only listens per migration, inside `dest_prepare`, on a port it picks —
 * but the source connects its page stream in `source_start`, before the
 * destination can know the layout `dest_prepare` needs. This listener then
 * accepts the page connection early and relays it, byte for byte, to the
 * engine's per-migration port on 127.0.0.1 once `dest_prepare` returned.
 * Pages pass through this process (a socket-to-socket pipe) in that mode.
 */
export class PageServer {
  private target: number | undefined;
  private held: net.Socket[] = [];

  private constructor(readonly host: string, readonly port: number, readonly mode: "native" | "relay", private server?: net.Server) {
    server?.on("connection", (sock) => this.onConnection(sock));
  }

  /** Start listening (port 0 picks a free one). */
  static async listen(host: string, port = 0): Promise<PageServer> {
    if (listening) {
      if (listening.host === host && (port === 0 || port === listening.port)) return listening;
      throw new PhaulError("EBUSY", `this process already has a page listener on ${listening.host}:${listening.port}`);
    }
    try {
      const reply = await callNative("pageserver_listen", { host, port });
      listening = new PageServer(host, count(reply, "port", "pageserver_listen"), "native");
    } catch (e) {
      if (!(e instanceof PhaulError) || !/unknown op/.test(e.message)) throw e;
      const server = net.createServer({ noDelay: true });
      await new Promise<void>((res, rej) => {
        server.once("error", (err: NodeJS.ErrnoException) =>
          rej(new PhaulError(err.code === "EADDRINUSE" ? "EUSAGE" : err.code ?? "EFAILED", `cannot listen for pages on ${host}:${port}: ${err.message}`)));
        server.listen(port, host, () => res());
      });
      server.on("error", () => undefined);
      listening = new PageServer(host, (server.address() as net.AddressInfo).port, "relay", server);
    }
    return listening;
  }

  private onConnection(sock: net.Socket): void {
    sock.on("error", () => undefined);
    if (this.target !== undefined) return this.relay(sock, this.target);
    sock.pause();
    this.held.push(sock);
    // A connection nobody claims within a minute is dropped.
    setTimeout(() => {
      const i = this.held.indexOf(sock);
      if (i >= 0) {
        this.held.splice(i, 1);
        sock.destroy();
      }
    }, 60_000).unref();
  }

  private relay(sock: net.Socket, port: number): void {
    const up = net.connect({ host: "127.0.0.1", port, noDelay: true });
    up.on("error", () => sock.destroy());
    sock.on("error", () => up.destroy());
    sock.on("close", () => up.destroy());
    up.on("close", () => sock.destroy());
    // No backpressure towards the source: the engine's source_freeze sends
    // the final round before dest_restore (which needs the state it
    // returns) starts reading, so a final round larger than the socket
    // buffers would deadlock. The backlog is held here until the engine reads.
    sock.on("data", (d) => up.write(d));
    sock.on("end", () => up.end());
    up.pipe(sock);
    sock.resume();
  }

  /** The migration is over before its page stream came: stop waiting for it (and drop it if it is parked). */
  async cancel(migration: string): Promise<void> {
    if (this.mode === "native") await callNative("pageserver_cancel", { migration }).catch(() => undefined);
  }

  /** Check the pids of `layout` are free here (else a pid namespace hosts them) and create stub processes for them. */
  async prepare(migration: string, token: string, layout: Layout, pidNamespace?: boolean): Promise<PageSession> {
    const args: Record<string, unknown> = { migration, token, layout };
    if (pidNamespace !== undefined) args.pid_ns = pidNamespace;
    if (this.mode === "relay") args.listen_host = "127.0.0.1";
    const reply = await callNative("dest_prepare", args);
    if (reply.session === undefined || reply.session === null) {
      throw new PhaulError("ENATIVE", `native "dest_prepare" replied without a session`);
    }
    const session = new PageSession(reply.session as string | number, reply.pid_ns === true);
    if (this.mode === "relay") {
      const port = count(reply, "port", "dest_prepare");
      this.target = port;
      session.onEnd(() => {
        if (this.target === port) this.target = undefined;
      });
      for (const s of this.held.splice(0)) this.relay(s, port);
    }
    return session;
  }
}

/** One migration's receiving side: stubs plus the data connection. */
export class PageSession {
  private ended = false;
  private endListeners: (() => void)[] = [];

  constructor(readonly id: string | number, readonly pidNamespace = false) {}

  onEnd(fn: () => void): void {
    this.endListeners.push(fn);
  }

  private end(): void {
    this.ended = true;
    for (const f of this.endListeners.splice(0)) f();
  }

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
    let reply;
    try {
      reply = await callNative("dest_restore", { session: this.id, timeout_ms: timeoutMs, hold: true, commit: true, commit_timeout_ms: commitTimeoutMs });
    } finally {
      this.end();
    }
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
    this.end();
  }

  get done(): boolean {
    return this.ended;
  }
}
