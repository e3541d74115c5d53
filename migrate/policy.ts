// When to stop pre-copying and freeze. Pure functions: the source agent feeds
// them the statistics of the rounds done so far.
//
// Round 0 sends all memory; every later round sends what was written during
// the previous one. After each round:
//   bandwidth = bytes sent so far / time spent sending them
//   dirty     = bytes of the last round (what one round's worth of writing costs)
// and the tree is frozen when sending `dirty` would take no more than the
// share of the downtime budget reserved for pages, when rounds stop
// converging (dirty not shrinking for two rounds in a row), or when the
// round limit is reached.

export interface RoundSample {
  round: number;
  pages: number;
  bytes: number;
  /** Time the round took on the source, ms. */
  ms: number;
}

export interface PolicyOptions {
  /** Downtime budget, ms (default 50). */
  maxDowntimeMs: number;
  /** Pre-copy rounds at most, round 0 included; 0 = stop-and-copy (default 8). */
  maxRounds: number;
  /** Share of the budget the final page transfer may use (default 0.5): the rest is freeze and restore. */
  pageShare?: number;
}

export type StopReason = "stop-and-copy" | "converged" | "not-converging" | "max-rounds";

export type Decision =
  | { action: "round"; estimate_ms: number }
  | { action: "freeze"; reason: StopReason; estimate_ms: number };

export const DEFAULT_MAX_DOWNTIME_MS = 50;
export const DEFAULT_MAX_ROUNDS = 8;
export const DEFAULT_PAGE_SHARE = 0.5;

/** Bytes per ms over all rounds so far; Infinity when they took no measurable time. */
export function bandwidth(history: readonly RoundSample[]): number {
  let bytes = 0;
  let ms = 0;
  for (const r of history) {
    bytes += r.bytes;
    ms += r.ms;
  }
  if (bytes === 0) return Infinity;
  return ms > 0 ? bytes / ms : Infinity;
}

/** Estimated time (ms) to send what the last round suggests is dirty now. */
export function estimateFinalMs(history: readonly RoundSample[]): number {
  const last = history[history.length - 1];
  if (!last) return Infinity;
  if (last.bytes === 0) return 0;
  const bw = bandwidth(history);
  return bw === Infinity ? 0 : last.bytes / bw;
}

/**
 * True when the dirty bytes did not shrink for two rounds in a row. Round 0
 * (all memory) is not a dirty-set measurement and is left out.
 */
export function notConverging(history: readonly RoundSample[]): boolean {
  const dirty = history.filter((r) => r.round > 0).map((r) => r.bytes);
  const n = dirty.length;
  return n >= 3 && dirty[n - 1]! >= dirty[n - 2]! && dirty[n - 2]! >= dirty[n - 3]!;
}

/** What to do after the rounds in `history` (empty: before round 0). */
export function decide(history: readonly RoundSample[], options: PolicyOptions): Decision {
  const share = options.pageShare ?? DEFAULT_PAGE_SHARE;
  const budget = options.maxDowntimeMs * share;
  if (options.maxRounds <= 0) return { action: "freeze", reason: "stop-and-copy", estimate_ms: Infinity };
  if (history.length === 0) return { action: "round", estimate_ms: Infinity };
  const estimate = estimateFinalMs(history);
  if (estimate <= budget) return { action: "freeze", reason: "converged", estimate_ms: estimate };
  if (notConverging(history)) return { action: "freeze", reason: "not-converging", estimate_ms: estimate };
  if (history.length >= options.maxRounds) return { action: "freeze", reason: "max-rounds", estimate_ms: estimate };
  return { action: "round", estimate_ms: estimate };
}

/** Check and default user-supplied policy values; throws a message for a usage error. */
export function policyOptions(maxDowntimeMs?: number, maxRounds?: number): PolicyOptions {
  const d = maxDowntimeMs ?? DEFAULT_MAX_DOWNTIME_MS;
  const r = maxRounds ?? DEFAULT_MAX_ROUNDS;
  if (!Number.isFinite(d) || d <= 0) throw new RangeError(`max downtime must be a positive number of ms, got ${d}`);
  if (!Number.isSafeInteger(r) || r < 0 || r > 1000) throw new RangeError(`max rounds must be an integer from 0 to 1000, got ${r}`);
  return { maxDowntimeMs: d, maxRounds: r };
}
