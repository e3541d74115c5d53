// Destination agent: accepts control connections from `phaul migrate`, runs
// one migration at a time through the native page receiver, and on any
// error, close or timeout discards the stubs (dest_abort) so nothing is left.

import { mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { IncomingMessage } from "node:http";
import WebSocket, { WebSocketServer } from "ws";
import { PhaulError, toPhaulError } from "../src/errors.js";
import { PageServer, type PageSession } from "../pageserver/index.js";
import { Channel, formatAddress, parseAddress } from "./channel.js";
import { hello, localCapabilities } from "./capabilities.js";
import { crash, parseFault, type Fault, type FaultPhase } from "./fault.js";
import { incompatibility, MAX_MESSAGE_BYTES, type Layout, type RoundStats } from "./protocol.js";

export const DEFAULT_LISTEN = "127.0.0.1:7070";

export interface ServeOptions {
  /** HOST:PORT or {host, port} for control connections (default 127.0.0.1:7070; port 0 picks one). */
  listen?: string | { host: string; port: number };
  /** Port of the native page receiver on the same host (default 0: any free port). */
  pagePort?: number;
  /** Directory for one JSON record per migration (created if missing). */
  dir?: string;
  /** Called for every event: listening, connected, prepared, round, restored, failed. */
  onEvent?: (event: ServeEvent) => void;
  /** Test-only fault injection (PHAUL_FAULT syntax, docs/migrate.md). */
  fault?: string;
  /**
   * Pids of the migrated tree already taken here (always so when source and
   * destination are one host): "auto" (default) restores the tree in a new
   * pid namespace, "never" refuses the migration (EPIDTAKEN).
   */
  pidNamespace?: "auto" | "never";
  /** How long to wait for the source's page connection and for each round, ms (default 60000). */
  roundTimeoutMs?: number;
}

export type ServePhase = "handshake" | "prepare" | "precopy" | "freeze" | "final" | "restore" | "confirm";

export type ServeEvent =
  | { event: "listening"; address: string; page_address: string }
  | { event: "connected"; peer: string }
  | { event: "prepared"; peer: string; migration: string; pid: number; processes: number; threads: number }
  | ({ event: "round"; peer: string; migration: string } & RoundStats)
  | {
      event: "restored";
      peer: string;
      migration: string;
      pid: number;
      rounds: number;
      pages: number;
      bytes: number;
      restore_us: number;
      total_ms: number;
      /** The source confirmed it killed its copy. */
      confirmed: boolean;
      /** Restored inside a new pid namespace (its pids were taken here). */
      pid_ns: boolean;
    }
  | { event: "failed"; peer: string; migration?: string; pid?: number; phase: ServePhase; code: string; message: string; total_ms: number };

export interface ServeHandle {
  /** Where control connections are accepted. */
  address: { host: string; port: number };
  /** Where the native page receiver listens. */
  pageAddress: { host: string; port: number };
  /** Stop accepting, abort a migration in progress, close connections. */
  close(): Promise<void>;
}

const HELLO_TIMEOUT_MS = 15_000;
const PREPARE_TIMEOUT_MS = 60_000;
/** Between two messages of a running migration (a stop-and-copy of a big tree freezes for long). */
const IDLE_TIMEOUT_MS = 600_000;
const CONFIRM_TIMEOUT_MS = 30_000;

function peerOf(req: IncomingMessage): string {
  const s = req.socket;
  return `source ${formatAddress(s.remoteAddress ?? "?", s.remotePort ?? 0)}`;
}

/** Start a destination agent. Only one per process (one native page listener). */
export async function serve(options: ServeOptions = {}): Promise<ServeHandle> {
  const listen = typeof options.listen === "object" ? options.listen : parseAddress(options.listen ?? DEFAULT_LISTEN, "--listen", true);
  const pagePort = options.pagePort ?? 0;
  if (!Number.isInteger(pagePort) || pagePort < 0 || pagePort > 65535) {
    throw new PhaulError("EUSAGE", `--page-port must be a port number, got ${pagePort}`);
  }
  let fault: Fault | undefined;
  try {
    fault = parseFault(options.fault);
  } catch (e) {
    throw new PhaulError("EUSAGE", (e as Error).message);
  }
  const dir = options.dir ? resolve(options.dir) : undefined;
  if (dir) {
    try {
      mkdirSync(dir, { recursive: true });
    } catch (e) {
      throw new PhaulError("EUSAGE", `cannot create ${dir}: ${(e as Error).message}`);
    }
  }
  const roundTimeoutMs = options.roundTimeoutMs ?? 60_000;
  if (options.pidNamespace !== undefined && options.pidNamespace !== "auto" && options.pidNamespace !== "never") {
    throw new PhaulError("EUSAGE", `--pid-ns must be auto or never, got ${JSON.stringify(options.pidNamespace)}`);
  }
  const emit = (e: ServeEvent) => {
    try {
      options.onEvent?.(e);
    } catch {
      /* a listener's bug must not break a migration */
    }
  };

  await localCapabilities(); // fails early when the engine is missing
  const pages = await PageServer.listen(listen.host, pagePort);

  const wss = new WebSocketServer({ host: listen.host, port: listen.port, maxPayload: MAX_MESSAGE_BYTES, perMessageDeflate: false });
  await new Promise<void>((res, rej) => {
    wss.once("listening", () => res());
    wss.once("error", (e: NodeJS.ErrnoException) => {
      const why = e.code === "EADDRINUSE" ? "address already in use" : e.message;
      rej(new PhaulError(e.code === "EADDRINUSE" || e.code === "EADDRNOTAVAIL" ? "EUSAGE" : e.code ?? "EFAILED",
        `cannot listen on ${formatAddress(listen.host, listen.port)}: ${why}`));
    });
  });
  const bound = wss.address();
  const address = { host: listen.host, port: bound && typeof bound === "object" ? bound.port : listen.port };
  const pageAddress = { host: pages.host, port: pages.port };

  let current: Promise<void> | undefined;
  let currentChannel: Channel | undefined;
  let closing = false;

  wss.on("connection", (ws: WebSocket, req: IncomingMessage) => {
    const peer = peerOf(req);
    const chan = new Channel(ws, peer);
    emit({ event: "connected", peer });
    if (current || closing) {
      const e = new PhaulError("EBUSY", closing ? "destination agent is shutting down" : "destination agent is busy with another migration; retry later");
      void chan.abort(e);
      return;
    }
    currentChannel = chan;
    current = runMigration(chan, peer).finally(() => {
      current = undefined;
      currentChannel = undefined;
    });
  });
  wss.on("error", () => undefined);

  async function runMigration(chan: Channel, peer: string): Promise<void> {
    const t0 = performance.now();
    let phase: ServePhase = "handshake";
    let session: PageSession | undefined;
    let migration: string | undefined;
    let layout: Layout | undefined;
    let restored = false;
    const rounds: RoundStats[] = [];
    const elapsed = () => Math.round(performance.now() - t0);
    const faultAt = (p: FaultPhase): boolean => {
      if (!fault || fault.phase !== p) return false;
      crash(fault); // exit/kill do not return
      return true; // close
    };
    const faultLater = (p: FaultPhase) => {
      if (!fault || fault.phase !== p) return;
      const f = fault;
      setTimeout(() => {
        crash(f);
        chan.close(`fault injected at ${p}`);
      }, f.delayMs);
    };
    const closeFault = (p: FaultPhase) => {
      if (faultAt(p)) throw new PhaulError("ECANCELED", `fault injected at ${p}`);
    };
    const record = (doc: object) => {
      if (!dir || !migration) return;
      try {
        writeFileSync(join(dir, `${migration}.json`), JSON.stringify(doc, null, 2) + "\n");
      } catch {
        /* the record is informative */
      }
    };
    try {
      const h = await chan.receive(["hello"], HELLO_TIMEOUT_MS, "hello");
      if (h.role !== "source") throw new PhaulError("EPROTO", `protocol error: ${peer} says it is a ${h.role}`);
      closeFault("handshake");
      const mine = await hello("destination", { page_port: pages.port });
      await chan.send(mine);
      const bad = incompatibility(h, mine);
      if (bad) throw new PhaulError("EINCOMPAT", bad);

      phase = "prepare";
      const p = await chan.receive(["prepare"], PREPARE_TIMEOUT_MS, "prepare");
      migration = p.migration;
      layout = p.layout;
      closeFault("prepare");
      session = await pages.prepare(p.migration, p.token, p.layout, options.pidNamespace === "never" ? false : undefined);
      if (chan.failed) throw chan.failed;
      await chan.send({ type: "prepared", page_port: pages.port });
      emit({
        event: "prepared", peer, migration, pid: p.layout.processes[0]!.pid,
        processes: p.layout.processes.length,
        threads: p.layout.processes.reduce((n, q) => n + q.tids.length, 0),
      });

      for (;;) {
        const m = await chan.receive(["round", "freezing", "final"], IDLE_TIMEOUT_MS, "the next round or the final state");
        if (m.type === "round") {
          phase = "precopy";
          if (rounds.length === 0) faultLater("precopy");
          const stats = await session.round(roundTimeoutMs);
          if (chan.failed) throw chan.failed;
          rounds.push(stats);
          emit({ event: "round", peer, migration, ...stats });
          await chan.send({ type: "round_done", stats });
        } else if (m.type === "freezing") {
          phase = "freeze";
          closeFault("freeze");
        } else {
          phase = "final";
          closeFault("final");
          phase = "restore";
          faultLater("restore");
          const r = await session.restore(m.state, roundTimeoutMs);
          if (chan.failed) {
            // The source gave up meanwhile and resumes its copy: ours must go.
            const lost = chan.failed as PhaulError;
            await session.abort();
            throw new PhaulError(lost.code, `restored pid ${r.pid}, but the source was lost meanwhile (${lost.message}); killed the restored copy`);
          }
          // Two-phase end: the restored tree is held stopped; it runs only on
          // the source's commit, and the source kills its copy only once we
          // answer `committed`. Whoever fails first leaves exactly one copy.
          await chan.send({ type: "restored", pid: r.pid, restore_us: r.restore_us, pages: r.pages, bytes: r.bytes, pid_ns: session.pidNamespace });
          phase = "confirm";
          await chan.receive(["commit"], CONFIRM_TIMEOUT_MS, "commit");
          closeFault("commit");
          await session.commit();
          restored = true;
          await chan.send({ type: "committed" }).catch(() => undefined);
          let confirmed = true;
          try {
            await chan.receive(["done"], CONFIRM_TIMEOUT_MS, "done");
          } catch {
            confirmed = false; // the source saw `committed`; its copy is killed or about to be
          }
          chan.close("migration complete");
          const all = [...rounds, { round: rounds.length, pages: r.pages, bytes: r.bytes, ms: 0 }];
          const ev: ServeEvent = {
            event: "restored", peer, migration, pid: r.pid, rounds: rounds.length,
            pages: all.reduce((n, x) => n + x.pages, 0), bytes: all.reduce((n, x) => n + x.bytes, 0),
            restore_us: r.restore_us, total_ms: elapsed(), confirmed, pid_ns: session.pidNamespace,
          };
          record({ ...ev, round_stats: rounds, layout });
          emit(ev);
          return;
        }
      }
    } catch (e) {
      const err = toPhaulError(e);
      if (session && !restored) await session.abort();
      await chan.abort(err);
      const ev: ServeEvent = {
        event: "failed", peer, phase, code: err.code, message: err.message, total_ms: elapsed(),
        ...(migration ? { migration } : {}), ...(layout ? { pid: layout.processes[0]!.pid } : {}),
      };
      record({ ...ev, round_stats: rounds, layout });
      emit(ev);
    }
  }

  emit({ event: "listening", address: formatAddress(address.host, address.port), page_address: formatAddress(pageAddress.host, pageAddress.port) });

  return {
    address,
    pageAddress,
    async close() {
      closing = true;
      currentChannel?.close("destination agent shutting down");
      await new Promise<void>((res) => wss.close(() => res()));
      for (const c of wss.clients) c.terminate();
      await current?.catch(() => undefined);
    },
  };
}
