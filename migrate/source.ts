// Source side of a live migration: handshake with the destination agent,
// arm dirty tracking, pre-copy rounds while the tree runs, freeze, send the
// final state, and kill the tree only once the destination's engine confirms
// its copy runs (source_commit). Any failure before the commit resumes the
// tree here.

import { randomBytes, randomUUID } from "node:crypto";
import { callNative } from "../src/native.js";
import { traceMark } from "../src/trace.js";
import { stepBack } from "../src/priority.js";
import { PhaulError, toPhaulError } from "../src/errors.js";
import { processRuns, validateDumpPid } from "../src/validate.js";
import { Channel, connect, formatAddress, parseAddress } from "./channel.js";
import { hello } from "./capabilities.js";
import { checkDestinationProof, loadSecret, loadTls, pageToken, sourceProof, type TlsFiles } from "./auth.js";
import { tlsPageDialer, type TlsDialer } from "../pageserver/tls.js";
import { decide, policyOptions, type StopReason } from "./policy.js";
import { incompatibility, type HelloMsg, type Layout, type PreflightResultMsg, type RoundStats } from "./protocol.js";
import { buildReport, sourceFacts, type PreflightReport } from "./preflight.js";

export type TrackMode = "auto" | "uffd-wp" | "hash" | "soft-dirty";
export const TRACK_MODES: TrackMode[] = ["auto", "uffd-wp", "hash", "soft-dirty"];

export interface MigrateOptions {
  pid: number | string;
  /** Destination agent, HOST:PORT. */
  to: string;
  /** Downtime budget in ms (default 50). */
  maxDowntimeMs?: number;
  /** Pre-copy rounds at most, round 0 included (default 8); 0 = stop-and-copy. */
  maxRounds?: number;
  /** Dirty-page tracking method (default auto). */
  track?: TrackMode;
  onProgress?: (p: MigrateProgress) => void;
  /** Aborting before the destination restored rolls back (the tree keeps running here). */
  signal?: AbortSignal;
  /** Shared secret file (--token-file), the same as the destination's. */
  tokenFile?: string;
  /** The shared secret itself (instead of tokenFile). */
  secret?: Buffer;
  /** Mutual TLS for the control channel (wss) and the page channel: our certificate and key, and the CA of the destination's certificate. */
  tls?: Partial<TlsFiles>;
}

export type MigrateProgress =
  | { phase: "connecting"; to: string }
  /** Before anything is frozen: what the destination lacks (ok false: the migration stops here, EPREFLIGHT). */
  | { phase: "preflight"; ok: boolean; report: PreflightReport }
  | { phase: "tracking"; method: string }
  | { phase: "round-start"; round: number; estimate_ms: number }
  | {
      phase: "round";
      round: number;
      pages: number;
      bytes: number;
      ms: number;
      /** Bytes per second of this round. */
      rate: number;
      /** Estimate of what is dirty now (what the last round had to send). */
      dirty_bytes: number;
      /** Bytes sent so far, all rounds. */
      sent_bytes: number;
      /** What the policy expects the frozen final round to take, ms. */
      estimate_ms: number;
    }
  | { phase: "freezing"; reason: StopReason; estimate_ms: number }
  | { phase: "restoring"; pages: number; bytes: number; freeze_us: number }
  | { phase: "restored"; pid: number; frozen_ms: number };

export interface MigrateSummary {
  pid: number;
  to: string;
  migration: string;
  /** Dirty-page tracking method the engine used. */
  method: string;
  /** Pre-copy rounds, in order (empty for stop-and-copy). */
  rounds: RoundStats[];
  /** The last round, sent while frozen. */
  final: { pages: number; bytes: number; freeze_us: number };
  stop_reason: StopReason;
  /** Pid on the destination (inside a new pid namespace when pid_ns). */
  dest_pid: number;
  /** The destination hosts the tree in a new pid namespace because its pids were taken there (always so on one host). */
  pid_ns: boolean;
  restore_us: number;
  /** From the start of the final freeze until the destination confirmed its copy runs (COMMITTED), ms. */
  frozen_ms: number;
  /**
   * The frozen window on this host's CLOCK_MONOTONIC, microseconds: from the
   * freeze to the destination's COMMITTED (to line up with what a workload on
   * the same host observed, as the benchmark does).
   */
  frozen_window_us: { start: number; end: number };
  /** Whole migration, connect to kill, ms. */
  total_ms: number;
  pages: number;
  bytes: number;
  /**
   * Packets of the tree's peers (segments, SYNs, datagrams) held back while
   * the sockets changed hands and then delivered to the destination's
   * sockets. Only when the destination shares the source's network stack
   * (one host, one network namespace); elsewhere such packets are dropped
   * and the peers retransmit.
   */
  held_packets: number;
  /** What went less well than it should without failing the migration: the dump's warnings (what comes back otherwise than it was: SysV shared memory, a namespace of the tree's own...) and the handoff's (peers' packets dropped, not held...). */
  warnings: string[];
}

const HELLO_TIMEOUT_MS = 15_000;

/** The `warnings` of an engine reply part (the freeze result's dump and handoff), as strings. */
function warningsOf(h: unknown): string[] {
  const w = (h as { warnings?: unknown } | undefined)?.warnings;
  return Array.isArray(w) ? w.filter((x): x is string => typeof x === "string") : [];
}
const PREPARE_TIMEOUT_MS = 60_000;
const ROUND_DONE_TIMEOUT_MS = 120_000;
const RESTORED_TIMEOUT_MS = 600_000;

/** The destination's report relayed by source_commit (its RESTORED frame). */
function committedReport(r: unknown): { pid: number; pid_ns: boolean; restore_us: number } {
  const o = (r ?? {}) as Record<string, unknown>;
  const pid = o.pid;
  if (typeof pid !== "number" || !Number.isSafeInteger(pid) || pid < 1) {
    throw new PhaulError("ENATIVE", `native "source_commit" replied without the restored pid`);
  }
  return { pid, pid_ns: o.pid_ns === true, restore_us: typeof o.restore_us === "number" ? o.restore_us : 0 };
}

function round1(x: number): number {
  return Math.round(x * 10) / 10;
}

/** Check and normalise options without touching anything (usage errors). */
export function migrateOptions(o: MigrateOptions) {
  const pid = validateDumpPid(o.pid);
  if (typeof o.to !== "string" || o.to === "") throw new PhaulError("EUSAGE", "--to is required (HOST:PORT of `phaul serve`)");
  const to = parseAddress(o.to, "--to");
  const track = o.track ?? "auto";
  if (!TRACK_MODES.includes(track)) throw new PhaulError("EUSAGE", `--track must be one of ${TRACK_MODES.join(", ")}, got ${JSON.stringify(track)}`);
  let policy;
  try {
    policy = policyOptions(o.maxDowntimeMs, o.maxRounds);
  } catch (e) {
    throw new PhaulError("EUSAGE", (e as Error).message);
  }
  return { pid, to, track, policy };
}

const PREFLIGHT_TIMEOUT_MS = 120_000;

/** Send our facts, read the destination's findings, build the report. Reads /proc only: nothing is frozen. */
async function exchangePreflight(chan: Channel, pid: number, to: string, mine: HelloMsg, theirs: HelloMsg): Promise<PreflightReport> {
  const facts = await sourceFacts(pid);
  await chan.send(facts);
  const found = await chan.receive(["preflight_result"], PREFLIGHT_TIMEOUT_MS, "preflight_result");
  return buildReport(pid, to, mine, theirs, facts, found);
}

export interface PreflightOptions {
  pid: number | string;
  /** Destination agent, HOST:PORT. */
  to: string;
  signal?: AbortSignal;
}

/**
 * Dry run: what would `migrate()` do? Connects to the destination, compares
 * hosts, CPUs, pids and files, and resolves with the report (ok or not).
 * Never touches the process beyond reading /proc. Rejects only when the
 * destination cannot be asked (connection, protocol).
 */
export async function preflight(options: PreflightOptions): Promise<PreflightReport> {
  const pid = validateDumpPid(options.pid);
  if (typeof options.to !== "string" || options.to === "") throw new PhaulError("EUSAGE", "--to is required (HOST:PORT of `phaul serve`)");
  const to = parseAddress(options.to, "--to");
  const toText = formatAddress(to.host, to.port);
  if (options.signal?.aborted) throw new PhaulError("ECANCELED", "preflight cancelled");
  const chan = await connect(to.host, to.port);
  const onAbort = () => chan.close("cancelled");
  options.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    const mine = await hello("source");
    await chan.send(mine);
    const theirs = await chan.receive(["hello"], HELLO_TIMEOUT_MS, "hello");
    if (theirs.role !== "destination") throw new PhaulError("EPROTO", `protocol error: ${toText} is not a destination agent`);
    if (incompatibility(mine, theirs)) {
      // The destination refuses after the hello: report what the hellos say.
      const facts = await sourceFacts(pid);
      const none: PreflightResultMsg = { type: "preflight_result", cpu_flags: facts.cpu_flags, files: [], pids_taken: [], pid_ns: false, pid_refused: false, missing_required_features: [] };
      return buildReport(pid, toText, mine, theirs, facts, none);
    }
    const report = await exchangePreflight(chan, pid, toText, mine, theirs);
    await chan.send({ type: "done" }).catch(() => undefined);
    return report;
  } catch (e) {
    const err = toPhaulError(e);
    throw new PhaulError(err.code, `preflight of pid ${pid} to ${toText} failed: ${err.message}`, err.details);
  } finally {
    options.signal?.removeEventListener("abort", onAbort);
    chan.close("preflight done");
  }
}

/**
 * Live-migrate the tree rooted at `pid` to the destination agent `to`.
 * Resolves with the summary once the tree runs there and is gone here; on
 * any failure the tree is resumed here and a PhaulError is thrown whose
 * message says so.
 */
export async function migrate(options: MigrateOptions): Promise<MigrateSummary> {
  const { pid, to, track, policy } = migrateOptions(options);
  const secret = options.secret ?? (options.tokenFile !== undefined ? loadSecret(options.tokenFile) : undefined);
  const tls = options.tls ? loadTls(options.tls) : undefined;
  const toText = formatAddress(to.host, to.port);
  const progress = (p: MigrateProgress) => {
    try {
      options.onProgress?.(p);
    } catch {
      /* a listener's bug must not break the migration */
    }
  };
  const t0 = performance.now();
  const signal = options.signal;
  if (signal?.aborted) throw new PhaulError("ECANCELED", `migration of pid ${pid} cancelled before it started`);

  let chan: Channel | undefined;
  let session: unknown;
  let killed = false;
  let committing = false;
  let dialer: TlsDialer | undefined;
  let stepForward: () => void = () => undefined;
  const onAbort = () => {
    chan?.close("cancelled");
    // The engine is busy waiting for the destination: ask it to give up
    // (it does, unless the commit has already gone out).
    if (committing && session !== undefined) callNative("session_interrupt", { session }).catch(() => undefined);
  };
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    traceMark("source ts: connecting");
    progress({ phase: "connecting", to: toText });
    chan = await connect(to.host, to.port, 10_000, tls);
    if (signal?.aborted) throw new PhaulError("ECANCELED", "cancelled");
    const proof = secret ? sourceProof(secret) : undefined;
    const mine = await hello("source", proof ? { auth: proof } : {});
    await chan.send(mine);
    const theirs = await chan.receive(["hello"], HELLO_TIMEOUT_MS, "hello");
    if (theirs.role !== "destination") throw new PhaulError("EPROTO", `protocol error: ${toText} is not a destination agent`);
    if (secret && proof) checkDestinationProof(secret, proof, theirs.auth);
    const bad = incompatibility(mine, theirs);
    if (bad) throw new PhaulError("EINCOMPAT", bad);
    if (theirs.page_port === undefined) throw new PhaulError("EPROTO", `protocol error: destination did not announce its page port`);

    // Preflight, before source_start: nothing is frozen or tracked yet.
    traceMark("source ts: handshake done");
    const report = await exchangePreflight(chan, pid, toText, mine, theirs);
    traceMark("source ts: preflight done");
    progress({ phase: "preflight", ok: report.ok, report });
    if (!report.ok) throw new PhaulError(report.code ?? "EPREFLIGHT", `preflight refused: ${report.problems.join("; ")}`, { report });
    if (signal?.aborted) throw new PhaulError("ECANCELED", "cancelled");

    const migration = randomUUID();
    const token = secret ? pageToken(secret, migration) : randomBytes(24).toString("hex");
    // With TLS our engine's page stream goes through a local TLS relay.
    if (tls) dialer = await tlsPageDialer(to.host, theirs.page_port, tls);
    const started = await callNative("source_start", {
      pid, track, migration, token, page_addr: dialer?.address ?? formatAddress(to.host, theirs.page_port),
      same_host: mine.capabilities.boot_id !== undefined && mine.capabilities.boot_id === theirs.capabilities.boot_id,
      dest_net_ns: theirs.capabilities.net_ns ?? "",
    });
    session = started.session;
    traceMark("source ts: tracking started");
    const method = String(started.method ?? track);
    progress({ phase: "tracking", method });
    if (chan.failed) throw chan.failed;

    await chan.send({ type: "prepare", migration, token, layout: started.layout as Layout, page_port: theirs.page_port });
    await chan.receive(["prepared"], PREPARE_TIMEOUT_MS, "prepared");
    traceMark("source ts: destination prepared");

    const rounds: RoundStats[] = [];
    let decision = decide(rounds, policy);
    while (decision.action === "round") {
      const n = rounds.length;
      progress({ phase: "round-start", round: n, estimate_ms: decision.estimate_ms });
      await chan.send({ type: "round", n });
      const sent = callNative("source_round", { session });
      const done = chan.receive(["round_done"], ROUND_DONE_TIMEOUT_MS, `round_done ${n}`);
      sent.catch(() => undefined);
      done.catch(() => undefined);
      const s = await sent;
      await done;
      const stats: RoundStats = { round: n, pages: Number(s.pages) || 0, bytes: Number(s.bytes) || 0, ms: Number(s.ms) || 0 };
      rounds.push(stats);
      traceMark(`source ts: round ${n} done`);
      decision = decide(rounds, policy);
      progress({
        phase: "round", ...stats,
        rate: stats.ms > 0 ? (stats.bytes * 1000) / stats.ms : 0,
        dirty_bytes: n === 0 ? 0 : stats.bytes,
        sent_bytes: rounds.reduce((t, r) => t + r.bytes, 0),
        estimate_ms: decision.estimate_ms,
      });
      if (chan.failed) throw chan.failed;
    }

    progress({ phase: "freezing", reason: decision.reason, estimate_ms: decision.estimate_ms });
    await chan.send({ type: "freezing" });
    const tFreeze = performance.now();
    stepForward = stepBack();
    const frozen = await callNative("source_freeze", { session });
    const final = { pages: Number(frozen.pages) || 0, bytes: Number(frozen.bytes) || 0, freeze_us: Number(frozen.freeze_us) || 0 };
    progress({ phase: "restoring", ...final });
    // The final pages and the state travel on the page stream; from here the
    // two engines end the migration between themselves (source_commit):
    // the destination restores and holds its copy, we commit, it lets its
    // copy run, and only then is ours killed. Neither agent nor this control
    // connection can split that; cancelling still works until the commit.
    chan.send({ type: "final" }).catch(() => undefined);
    committing = true;
    const committed = await callNative("source_commit", { session, timeout_ms: RESTORED_TIMEOUT_MS });
    killed = true;
    stepForward();
    traceMark("source ts: committed");
    // Frozen until the destination's copy runs (the engine's clock), not
    // until our copy is gone: killing it is no downtime.
    const frozenMs = typeof committed.frozen_us === "number" && committed.frozen_us > 0 ? committed.frozen_us / 1000 : performance.now() - tFreeze;
    const restored = committedReport(committed.restored);
    await chan.send({ type: "done" }).catch(() => undefined);
    chan.close("migration complete");
    progress({ phase: "restored", pid: restored.pid, frozen_ms: round1(frozenMs) });

    const pages = rounds.reduce((n, r) => n + r.pages, final.pages);
    const bytes = rounds.reduce((n, r) => n + r.bytes, final.bytes);
    return {
      pid, to: toText, migration, method, rounds, final, stop_reason: decision.reason,
      dest_pid: restored.pid, pid_ns: restored.pid_ns === true, restore_us: restored.restore_us,
      frozen_ms: round1(frozenMs),
      frozen_window_us: { start: Number(committed.frozen_mono_us) || 0, end: Number(committed.committed_mono_us) || 0 },
      total_ms: round1(performance.now() - t0), pages, bytes,
      held_packets: Number(committed.held_packets) || 0,
      warnings: [...warningsOf(frozen), ...warningsOf(frozen.handoff)],
    };
  } catch (e) {
    let err = toPhaulError(e);
    const tlsFailure = dialer?.failure();
    if (tlsFailure && !err.message.includes(tlsFailure)) err = new PhaulError(err.code, `${err.message} (${tlsFailure})`, err.details);
    if (signal?.aborted && err.code !== "ECANCELED") err = new PhaulError("ECANCELED", `cancelled (${err.message})`);
    // source_commit ends the session itself, resuming (or, when the outcome
    // is unknown, parking) the tree on failure.
    if (session !== undefined && !killed && !committing) {
      await callNative("source_finish", { session }).catch(() => undefined);
    }
    if (chan) await chan.abort(err);
    if (killed) throw err; // cannot happen after the kill, kept for clarity
    if (err.code === "EUNCERTAIN") throw new PhaulError(err.code, `migration of pid ${pid} to ${toText}: ${err.message}`, err.details);
    // Said only when seen: a process that died meanwhile (killed from
    // outside, or by the OOM killer) must not be reported safe.
    const where = processRuns(pid) ? "the process is still running here" : "the process is no longer running here either (it exited during the attempt)";
    throw new PhaulError(err.code, `migration of pid ${pid} to ${toText} failed: ${err.message}; ${where}`, err.details);
  } finally {
    stepForward();
    signal?.removeEventListener("abort", onAbort);
    dialer?.close();
  }
}
