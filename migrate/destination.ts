// Destination agent: accepts control connections from `phaul migrate`, runs
// one migration at a time through the native page receiver, and on any
// error, close or timeout discards the stubs (dest_abort) so nothing is left.

import { mkdirSync, renameSync, writeFileSync } from "node:fs";
import { traceMark } from "../src/trace.js";
import https from "node:https";
import { join, resolve } from "node:path";
import type { IncomingMessage } from "node:http";
import WebSocket, { WebSocketServer } from "ws";
import { PhaulError, toPhaulError } from "../src/errors.js";
import { PageServer, type PageSession, type RestoreReply } from "../pageserver/index.js";
import { Channel, formatAddress, parseAddress } from "./channel.js";
import { hello, localCapabilities } from "./capabilities.js";
import { destinationProof, isLoopback, loadSecret, loadTls, pageToken, ReplayGuard, safeEqual, type TlsFiles } from "./auth.js";
import { crash, parseFault, type Fault, type FaultPhase } from "./fault.js";
import { destinationFindings } from "./preflight.js";
import { incompatibility, MAX_MESSAGE_BYTES, type Layout, type RoundStats } from "./protocol.js";
import { stepBack } from "../src/priority.js";

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
  /** Shared secret file (--token-file): sources must prove they hold it (docs/security.md). */
  tokenFile?: string;
  /** The shared secret itself (instead of tokenFile). */
  secret?: Buffer;
  /** Mutual TLS for the control and the page channel: our certificate and key, and the CA that signs the sources' certificates. */
  tls?: Partial<TlsFiles>;
  /** Serve a non-loopback address without any authentication (tests, isolated networks). */
  insecure?: boolean;
}

export type ServePhase = "handshake" | "prepare" | "precopy" | "freeze" | "final" | "restore" | "confirm";

export type ServeEvent =
  | { event: "listening"; address: string; page_address: string; /** How peers authenticate: none (loopback only), token, tls, token+tls. */ auth: "none" | "token" | "tls" | "token+tls" }
  | { event: "connected"; peer: string }
  | { event: "preflight"; peer: string; pid: number; files: number; problems: number }
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
/** Migrations waiting for the engine behind the running one. */
const MAX_QUEUED = 16;
/** Control connections at once (handshaking, waiting or running). */
const MAX_CONNECTIONS = 64;

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
  const secret = options.secret ?? (options.tokenFile !== undefined ? loadSecret(options.tokenFile) : undefined);
  const tls = options.tls ? loadTls(options.tls) : undefined;
  if (!secret && !tls && !isLoopback(listen.host) && !options.insecure) {
    throw new PhaulError("EUSAGE",
      `refusing to listen on ${formatAddress(listen.host, listen.port)} without authentication: anyone who reaches it could ` +
      `migrate a process here. Give --token-file FILE (the same secret on both hosts) or --tls-cert/--tls-key/--tls-ca, ` +
      `or listen on 127.0.0.1`);
  }
  const replay = new ReplayGuard();
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
  // With TLS the page channel is TLS too, with the same certificates.
  const pages = await PageServer.listen(listen.host, pagePort, tls);

  // With TLS, an https server that requires and checks client certificates
  // (the handshake fails before any WebSocket frame for a peer without one).
  const httpsServer = tls
    ? https.createServer({ cert: tls.cert, key: tls.key, ca: tls.ca, requestCert: true, rejectUnauthorized: true, minVersion: "TLSv1.2" })
    : undefined;
  httpsServer?.on("tlsClientError", () => undefined);
  const wss = httpsServer
    ? new WebSocketServer({ server: httpsServer, maxPayload: MAX_MESSAGE_BYTES, perMessageDeflate: false })
    : new WebSocketServer({ host: listen.host, port: listen.port, maxPayload: MAX_MESSAGE_BYTES, perMessageDeflate: false });
  await new Promise<void>((res, rej) => {
    const target = httpsServer ?? wss;
    if (httpsServer) httpsServer.listen(listen.port, listen.host);
    target.once("listening", () => res());
    target.once("error", (e: NodeJS.ErrnoException) => {
      const why = e.code === "EADDRINUSE" ? "address already in use" : e.message;
      rej(new PhaulError(e.code === "EADDRINUSE" || e.code === "EADDRNOTAVAIL" ? "EUSAGE" : e.code ?? "EFAILED",
        `cannot listen on ${formatAddress(listen.host, listen.port)}: ${why}`));
    });
  });
  const bound = httpsServer ? httpsServer.address() : wss.address();
  const address = { host: listen.host, port: bound && typeof bound === "object" ? bound.port : listen.port };
  const pageAddress = { host: pages.host, port: pages.port };

  // Connections are handled concurrently up to `prepare` (handshake and
  // authentication cost no engine state); from dest_prepare on, migrations
  // run one after the other (one migration's stubs and memory at a time), in
  // arrival order, MAX_QUEUED at most waiting: the rest get EBUSY. A peer
  // that connects and stays silent only holds its own connection until the
  // hello timeout.
  const running = new Set<Promise<void>>();
  const channels = new Set<Channel>();
  let slot: Promise<void> = Promise.resolve();
  let queued = 0;
  let closing = false;
  const acquire = async (): Promise<() => void> => {
    if (queued >= MAX_QUEUED) throw new PhaulError("EBUSY", `destination agent is busy (${queued} migrations waiting); retry later`);
    queued++;
    let release!: () => void;
    const prev = slot;
    slot = new Promise<void>((r) => (release = r));
    await prev;
    queued--;
    return release;
  };

  wss.on("connection", (ws: WebSocket, req: IncomingMessage) => {
    const peer = peerOf(req);
    const chan = new Channel(ws, peer);
    emit({ event: "connected", peer });
    if (closing || channels.size >= MAX_CONNECTIONS) {
      const e = new PhaulError("EBUSY", closing ? "destination agent is shutting down" : "destination agent has too many connections; retry later");
      void chan.abort(e);
      return;
    }
    channels.add(chan);
    const run = runMigration(chan, peer).finally(() => {
      running.delete(run);
      channels.delete(chan);
    });
    running.add(run);
  });
  wss.on("error", () => undefined);

  async function runMigration(chan: Channel, peer: string): Promise<void> {
    const t0 = performance.now();
    let phase: ServePhase = "handshake";
    let session: PageSession | undefined;
    let migration: string | undefined;
    let layout: Layout | undefined;
    let restored = false;
    let restoring: Promise<RestoreReply> | undefined;
    let release: (() => void) | undefined;
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
      // The file name comes from the peer: only a validated id (protocol.ts
      // ID pattern, checked again here) ever names a file, inside dir.
      if (!dir || !migration || !/^[A-Za-z0-9_-]{1,128}$/.test(migration)) return;
      try {
        const file = join(dir, `${migration}.json`);
        const tmp = join(dir, `.${migration}.json.tmp`);
        writeFileSync(tmp, JSON.stringify(doc, null, 2) + "\n", { mode: 0o600 });
        renameSync(tmp, file);
      } catch {
        /* the record is informative */
      }
    };
    // The copy runs here now: tell the source (informational, its engine
    // already knows), wait for its `done`, record and report.
    const finished = async (r: RestoreReply, talk: boolean, lost?: string): Promise<void> => {
      restored = true;
      release?.();
      release = undefined;
      let confirmed = false;
      // PHAUL_FAULT commit: die (or drop the connection) with the copy running, before a word to the source.
      if (talk && !faultAt("commit")) {
        await chan.send({ type: "restored", pid: r.pid, restore_us: r.restore_us, pages: r.pages, bytes: r.bytes, pid_ns: session?.pidNamespace === true }).catch(() => undefined);
        phase = "confirm";
        confirmed = await chan.receive(["done"], CONFIRM_TIMEOUT_MS, "done").then(() => true, () => false);
      }
      chan.close(lost ? `control connection lost (${lost}); the migration completed` : "migration complete");
      const all = [...rounds, { round: rounds.length, pages: r.pages, bytes: r.bytes, ms: 0 }];
      const ev: ServeEvent = {
        event: "restored", peer, migration: migration ?? "", pid: r.pid, rounds: rounds.length,
        pages: all.reduce((n, x) => n + x.pages, 0), bytes: all.reduce((n, x) => n + x.bytes, 0),
        restore_us: r.restore_us, total_ms: elapsed(), confirmed, pid_ns: session?.pidNamespace === true,
      };
      record({ ...ev, round_stats: rounds, layout });
      emit(ev);
    };
    try {
      const h = await chan.receive(["hello"], HELLO_TIMEOUT_MS, "hello");
      // Authentication first: nothing is read or written for an unproven peer.
      if (secret) replay.check(secret, h.auth);
      if (h.role !== "source") throw new PhaulError("EPROTO", `protocol error: ${peer} says it is a ${h.role}`);
      closeFault("handshake");
      const mine = await hello("destination", { page_port: pages.port, ...(secret && h.auth ? { auth: destinationProof(secret, h.auth) } : {}) });
      await chan.send(mine);
      const bad = incompatibility(h, mine);
      if (bad) throw new PhaulError("EINCOMPAT", bad);

      phase = "prepare";
      let p;
      for (;;) {
        const m = await chan.receive(["preflight", "prepare", "done"], PREPARE_TIMEOUT_MS, "prepare");
        if (m.type === "prepare") {
          p = m;
          break;
        }
        if (m.type === "done") {
          chan.close("dry run complete"); // a dry run (`phaul migrate --dry-run`) ends here
          return;
        }
        const found = await destinationFindings(m, options.pidNamespace ?? "auto");
        emit({ event: "preflight", peer, pid: m.pids[0] ?? 0, files: m.files.length, problems: found.files.length });
        await chan.send(found);
      }
      if (secret && !safeEqual(p.token, pageToken(secret, p.migration))) {
        throw new PhaulError("EAUTH", "authentication failed: the page token is not derived from the shared secret");
      }
      release = await acquire();
      if (chan.failed) throw chan.failed;
      migration = p.migration;
      layout = p.layout;
      closeFault("prepare");
      session = await pages.prepare(p.migration, p.token, p.layout, options.pidNamespace === "never" ? false : undefined);
      // A source that gives up (its page stream refused, say) must not leave
      // us waiting for that stream until the round timeout.
      const id = p.migration;
      chan.onClose(() => {
        if (!restoring) void pages.cancel(id);
      });
      if (chan.failed) throw chan.failed;
      await chan.send({ type: "prepared", page_port: pages.port });
      emit({
        event: "prepared", peer, migration, pid: p.layout.processes[0]!.pid,
        processes: p.layout.processes.length,
        threads: p.layout.processes.reduce((n, q) => n + q.tids.length, 0),
      });

      for (;;) {
        const m = await chan.receive(["round", "freezing", "final"], IDLE_TIMEOUT_MS, "the next round or the freeze");
        if (m.type === "round") {
          phase = "precopy";
          if (rounds.length === 0) faultLater("precopy");
          if (rounds.length === 1) faultLater("round1");
          const stats = await session.round(roundTimeoutMs);
          if (chan.failed) throw chan.failed;
          rounds.push(stats);
          emit({ event: "round", peer, migration, ...stats });
          await chan.send({ type: "round_done", stats });
        } else if (m.type === "freezing") {
          phase = "freeze";
          closeFault("freeze");
          // The final pages and then the state come on the page stream right
          // after the freeze: start restoring now instead of waiting for the
          // state to be relayed on this channel.
          const stepForward = stepBack();
          restoring = session.restore(roundTimeoutMs);
          restoring.then(stepForward, stepForward);
        } else {
          phase = "final";
          closeFault("final");
          phase = "restore";
          faultLater("restore");
          traceMark("dest ts: final announced");
          // The engine restores, holds the copy, reports to the source's
          // engine on the page stream and lets the copy run on its commit;
          // it finishes that even if this agent dies meanwhile.
          const r = await (restoring ?? session.restore(roundTimeoutMs));
          traceMark("dest ts: restored and committed");
          await finished(r, true);
          return;
        }
      }
    } catch (e) {
      const err = toPhaulError(e);
      // Once the engine has the final round it decides with the source's
      // engine, whatever happens to this connection: report what it decided.
      if (restoring && !restored) {
        const r = await restoring.catch(() => undefined);
        if (r) {
          await finished(r, false, err.message);
          return;
        }
      }
      if (session && !restored) await session.abort();
      release?.();
      release = undefined;
      await chan.abort(err);
      const ev: ServeEvent = {
        event: "failed", peer, phase, code: err.code, message: err.message, total_ms: elapsed(),
        ...(migration ? { migration } : {}), ...(layout ? { pid: layout.processes[0]!.pid } : {}),
      };
      record({ ...ev, round_stats: rounds, layout });
      emit(ev);
    }
  }

  const auth = secret && tls ? "token+tls" : secret ? "token" : tls ? "tls" : "none";
  emit({ event: "listening", address: formatAddress(address.host, address.port), page_address: formatAddress(pageAddress.host, pageAddress.port), auth });

  return {
    address,
    pageAddress,
    async close() {
      closing = true;
      for (const c of channels) c.close("destination agent shutting down");
      await new Promise<void>((res) => wss.close(() => res()));
      for (const c of wss.clients) c.terminate();
      if (httpsServer) {
        httpsServer.closeAllConnections();
        await new Promise<void>((res) => httpsServer.close(() => res()));
      }
      await Promise.allSettled([...running]);
    },
  };
}
