import ora, { type Ora } from "ora";
import { AUTH_OPTIONS } from "../auth-options.js";
import { formatReport, migrate, preflight, type MigrateProgress, type TrackMode } from "../../../migrate/index.js";
import { ExitCode } from "../../errors.js";
import { debug } from "../../log.js";
import { DEFAULT_MAX_DOWNTIME_MS, DEFAULT_MAX_ROUNDS } from "../../../migrate/policy.js";
import { PhaulError } from "../../errors.js";
import { requireString } from "../args.js";
import type { Command } from "../command.js";
import { bytes, json, plural, table } from "../format.js";

const mb = (n: number) => (n / 1e6).toFixed(1);

function number(name: string, v: unknown, integer: boolean): number | undefined {
  if (v === undefined) return undefined;
  const t = String(v).trim();
  const n = (integer ? /^\d+$/ : /^\d+(\.\d+)?$/).test(t) ? Number(t) : NaN;
  if (!Number.isFinite(n)) throw new PhaulError("EUSAGE", `--${name} must be a ${integer ? "non-negative integer" : "number"}, got ${JSON.stringify(t)}`);
  return n;
}

export function spinnerProgress(): { onProgress: (p: MigrateProgress) => void; stop: () => void } {
  let spinner: Ora | undefined;
  const start = (text: string) => {
    spinner?.stop();
    spinner = ora({ text, stream: process.stderr }).start();
  };
  return {
    onProgress(p) {
      switch (p.phase) {
        case "connecting":
          start(`connecting to ${p.to}`);
          break;
        case "preflight":
          spinner?.stop();
          spinner = undefined;
          process.stderr.write(formatReport(p.report));
          break;
        case "tracking":
          spinner?.succeed(`dirty tracking: ${p.method}`);
          spinner = undefined;
          break;
        case "round-start":
          start(`round ${p.round}: sending${p.round === 0 ? " all memory" : " dirty pages"}`);
          break;
        case "round":
          spinner?.succeed(
            `round ${p.round}: ${mb(p.bytes)} MB sent, ${mb(p.rate)} MB/s` +
              (p.round === 0 ? "" : `, ~${mb(p.dirty_bytes)} MB dirty left`),
          );
          spinner = undefined;
          break;
        case "freezing":
          start(`frozen (${p.reason}): sending the last pages`);
          break;
        case "restoring":
          if (spinner) spinner.text = `frozen: ${mb(p.bytes)} MB sent, restoring on the destination`;
          break;
        case "restored":
          spinner?.succeed(`running on the destination as pid ${p.pid}; frozen ${p.frozen_ms} ms`);
          spinner = undefined;
          break;
      }
    },
    stop() {
      spinner?.stop();
      spinner = undefined;
    },
  };
}

// Test-only: PHAUL_FAULT_SOURCE=PHASE makes `phaul migrate` SIGKILL itself at
// PHASE (handshake: hellos exchanged, tracking armed, before prepare; precopy:
// round 0 done; freeze: about to freeze; final: frozen, final state not yet sent;
// restore: 2 ms after the final state went out, while the destination restores).
const SOURCE_FAULTS: Record<string, (p: MigrateProgress) => boolean> = {
  handshake: (p) => p.phase === "tracking",
  precopy: (p) => p.phase === "round" && p.round === 0,
  freeze: (p) => p.phase === "freezing",
  final: (p) => p.phase === "restoring",
  // the final state is on its way: the destination restores (or has restored) meanwhile
  restore: (p) => p.phase === "restoring",
};
function parseSourceFault(text: string | undefined): ((p: MigrateProgress) => void) | undefined {
  if (!text) return undefined;
  const at = SOURCE_FAULTS[text];
  if (!at) throw new PhaulError("EUSAGE", `PHAUL_FAULT_SOURCE must be one of ${Object.keys(SOURCE_FAULTS).join("|")}, got ${JSON.stringify(text)}`);
  return (p) => {
    if (at(p)) {
      process.stderr.write(`phaul: PHAUL_FAULT_SOURCE ${text}: killing myself\n`);
      if (text === "restore") setTimeout(() => process.kill(process.pid, "SIGKILL"), 2);
      else process.kill(process.pid, "SIGKILL");
    }
  };
}

export const command: Command = {
  name: "migrate",
  summary: "live-migrate a process tree to a host running `phaul serve`",
  usage: "migrate --to HOST:PORT --pid N [--max-downtime MS] [--max-rounds N] [--track MODE] [--token-file F | --tls-cert F --tls-key F --tls-ca F] [--json]",
  description:
    "Copies the memory of the tree rooted at N to the destination while it keeps\n" +
    "running, re-sending written pages round after round until the rest fits the\n" +
    "downtime budget, then freezes it, sends the last pages and its state, and\n" +
    "kills it here once it runs there under the same pids. On any failure the\n" +
    "tree keeps running here.\n" +
    "A preflight runs first, before anything is frozen: destination architecture,\n" +
    "kernel features, CPU flags and XSAVE components, pids, and every file the\n" +
    "tree maps or holds open (size, mtime, sha256) must fit, or the migration is\n" +
    "refused (exit 6) with the list of what the destination lacks. --dry-run\n" +
    "runs only the preflight and prints its report (exit 0 if it would go ahead).",
  options: {
    to: { type: "string", short: "t", arg: "HOST:PORT", description: "destination agent (`phaul serve`)" },
    pid: { type: "string", short: "p", arg: "N", description: "root of the process tree to migrate" },
    "max-downtime": { type: "string", arg: "MS", description: `downtime budget in ms (default ${DEFAULT_MAX_DOWNTIME_MS})` },
    "max-rounds": { type: "string", arg: "N", description: `pre-copy rounds at most (default ${DEFAULT_MAX_ROUNDS}; 0 = stop-and-copy)` },
    track: { type: "string", arg: "MODE", description: "dirty tracking: auto, uffd-wp, hash or soft-dirty (default auto)" },
    ...AUTH_OPTIONS,
    "dry-run": { type: "boolean", short: "n", description: "only run the preflight and report what would happen" },
    json: { type: "boolean", description: "print the summary (or the preflight report) as JSON" },
  },
  examples: [
    "phaul migrate --to 10.0.0.2:7070 --pid 1234",
    "phaul migrate --to 10.0.0.2:7070 --pid 1234 --max-downtime 20 --json",
    "phaul migrate --to 10.0.0.2:7070 --pid 1234 --max-rounds 0   # stop-and-copy",
    "phaul migrate --to 10.0.0.2:7070 --pid 1234 --dry-run --json  # preflight only",
  ],
  async run({ values, stdout }) {
    const to = requireString(this, values, "to");
    const pid = requireString(this, values, "pid");
    if (values["dry-run"] === true) {
      const report = await preflight({ pid, to });
      stdout(values.json === true ? json(report) : formatReport(report));
      return report.ok ? ExitCode.OK : ExitCode.PREFLIGHT;
    }
    const maxDowntimeMs = number("max-downtime", values["max-downtime"], false);
    const maxRounds = number("max-rounds", values["max-rounds"], true);
    const asJson = values.json === true;
    const sourceFault = parseSourceFault(process.env.PHAUL_FAULT_SOURCE);
    const ui = !asJson && process.stderr.isTTY ? spinnerProgress() : undefined;
    const onProgress = (p: MigrateProgress) => {
      debug(`migrate ${p.phase} ${JSON.stringify(p.phase === "preflight" ? { ok: p.ok, problems: p.report.problems } : p)}`);
      ui?.onProgress(p);
    };
    const controller = new AbortController();
    const cancel = () => controller.abort();
    process.once("SIGINT", cancel);
    process.once("SIGTERM", cancel);
    let s;
    try {
      s = await migrate({
        pid, to,
        ...(maxDowntimeMs !== undefined ? { maxDowntimeMs } : {}),
        ...(maxRounds !== undefined ? { maxRounds } : {}),
        ...(typeof values.track === "string" ? { track: values.track as TrackMode } : {}),
        ...(typeof values["token-file"] === "string" ? { tokenFile: values["token-file"] } : {}),
        ...(values["tls-cert"] !== undefined || values["tls-key"] !== undefined || values["tls-ca"] !== undefined
          ? { tls: { cert: values["tls-cert"] as string | undefined, key: values["tls-key"] as string | undefined, ca: values["tls-ca"] as string | undefined } as Record<string, string> }
          : {}),
        ...(ui || sourceFault ? { onProgress: (p: MigrateProgress) => { ui?.onProgress(p); sourceFault?.(p); } } : {}),
        signal: controller.signal,
      });
    } finally {
      ui?.stop();
      process.off("SIGINT", cancel);
      process.off("SIGTERM", cancel);
    }
    if (asJson) {
      stdout(json(s));
      return 0;
    }
    const rows = [
      ["round", "pages", "bytes", "time"],
      ...s.rounds.map((r) => [String(r.round), String(r.pages), bytes(r.bytes), `${r.ms.toFixed(1)} ms`]),
      ["final", String(s.final.pages), bytes(s.final.bytes), `frozen`],
    ];
    stdout(
      `migrated pid ${s.pid} to ${s.to} (running there as pid ${s.dest_pid})\n` +
        `  dirty tracking: ${s.method}; ${s.rounds.length} pre-copy rounds, stopped: ${s.stop_reason}\n` +
        table(rows, "    ").join("\n") + "\n" +
        `  frozen ${s.frozen_ms} ms (freeze to restored; the destination's final step, from the freeze notice, ${(s.restore_us / 1000).toFixed(1)} ms); ` +
        `total ${s.total_ms} ms; ${bytes(s.bytes)} sent\n` +
        (s.held_packets > 0 ? `  ${plural(s.held_packets, "packet")} from peers held during the handoff, then delivered\n` : "") +
        s.warnings.map((w) => `  warning: ${w}\n`).join(""),
    );
    return 0;
  },
};
