// `phaul wizard`: a guided migration. Pick a process (type to filter the list
// of pid, command, memory), pick or type a destination agent, read the
// preflight report, confirm, and watch the migration's progress.

import { appendFileSync, mkdirSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import inquirer from "inquirer";
import ora from "ora";
import { formatReport, migrate, preflight } from "../../../migrate/index.js";
import { ExitCode, PhaulError } from "../../errors.js";
import { debug } from "../../log.js";
import type { Command } from "../command.js";
import { json } from "../format.js";
import { spinnerProgress } from "./migrate.js";

export interface ProcessChoice {
  pid: number;
  command: string;
  rss_kib: number;
}

/** User processes phaul could migrate: not kernel threads, not phaul itself or its ancestors. */
export function listProcesses(): ProcessChoice[] {
  const skip = new Set<number>();
  for (let p = process.pid; p > 1; ) {
    skip.add(p);
    try {
      const st = readFileSync(`/proc/${p}/stat`, "utf8");
      p = Number(st.slice(st.lastIndexOf(")") + 2).split(" ")[1]);
    } catch {
      break;
    }
  }
  const out: ProcessChoice[] = [];
  for (const n of readdirSync("/proc")) {
    if (!/^\d+$/.test(n)) continue;
    const pid = Number(n);
    if (pid === 1 || skip.has(pid)) continue;
    try {
      readlinkSync(`/proc/${pid}/exe`); // kernel threads have none
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean).join(" ");
      const rss = /^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
      if (!cmd) continue;
      out.push({ pid, command: cmd, rss_kib: rss ? Number(rss[1]) : 0 });
    } catch {
      /* gone or not ours */
    }
  }
  return out.sort((a, b) => b.rss_kib - a.rss_kib);
}

function historyFile(): string {
  return join(process.env.XDG_CONFIG_HOME || join(homedir(), ".config"), "phaul", "destinations");
}

function recentDestinations(): string[] {
  try {
    const lines = readFileSync(historyFile(), "utf8").split("\n").map((l) => l.trim()).filter(Boolean);
    return [...new Set(lines.reverse())].slice(0, 10);
  } catch {
    return [];
  }
}

function remember(to: string): void {
  try {
    mkdirSync(dirname(historyFile()), { recursive: true });
    appendFileSync(historyFile(), to + "\n");
  } catch {
    /* the history is a convenience */
  }
}

const mib = (kib: number) => `${(kib / 1024).toFixed(1)} MiB`;
const ADDRESS = /^(\[[^\]]+\]|[^:\s]+):\d{1,5}$/;

async function ask<T>(question: Record<string, unknown>): Promise<T> {
  try {
    const a = await inquirer.prompt([{ ...question, name: "v" }] as never);
    return (a as { v: T }).v;
  } catch (e) {
    if ((e as Error).name === "ExitPromptError") throw new PhaulError("ECANCELED", "wizard cancelled");
    throw e;
  }
}

export const command: Command = {
  name: "wizard",
  summary: "guided, interactive migration",
  usage: "wizard [--pid N] [--to HOST:PORT] [--yes] [--json]",
  description:
    "Asks for a process (type to filter by pid or command; memory shown), a\n" +
    "destination agent (recent ones, or type HOST:PORT), runs the preflight and\n" +
    "shows its report, asks for confirmation, then migrates with live progress.\n" +
    "Needs a terminal. Recent destinations are kept in ~/.config/phaul/destinations.",
  options: {
    pid: { type: "string", short: "p", arg: "N", description: "skip the process question" },
    to: { type: "string", short: "t", arg: "HOST:PORT", description: "skip the destination question" },
    yes: { type: "boolean", short: "y", description: "do not ask for confirmation" },
    json: { type: "boolean", description: "print the migration summary as JSON at the end" },
  },
  positionals: [],
  examples: ["phaul wizard", "phaul wizard --to 10.0.0.2:7070"],
  async run({ values, stdout }) {
    if (!process.stdin.isTTY) throw new PhaulError("EUSAGE", "wizard needs a terminal (use `phaul migrate` in scripts)");
    let pid: number;
    if (typeof values.pid === "string") pid = Number(values.pid);
    else {
      const procs = listProcesses();
      pid = await ask<number>({
        type: "search",
        message: "Process to migrate (type to filter by pid or command):",
        pageSize: 12,
        source: (term: string | undefined) => {
          const t = (term ?? "").trim().toLowerCase();
          return procs
            .filter((p) => !t || String(p.pid).startsWith(t) || p.command.toLowerCase().includes(t))
            .slice(0, 200)
            .map((p) => ({ value: p.pid, name: `${String(p.pid).padStart(7)}  ${mib(p.rss_kib).padStart(10)}  ${p.command.slice(0, 80)}`, short: String(p.pid) }));
        },
      });
    }
    debug(`wizard: pid ${pid}`);
    let to = typeof values.to === "string" ? values.to : undefined;
    if (to === undefined) {
      const OTHER = "\u0000other";
      const recent = recentDestinations();
      const pick = recent.length === 0 ? OTHER : await ask<string>({
        type: "select",
        message: "Destination agent:",
        choices: [...recent.map((r) => ({ value: r, name: r })), { value: OTHER, name: "another address…" }],
      });
      to = pick !== OTHER ? pick : await ask<string>({
        type: "input",
        message: "Destination agent (HOST:PORT of `phaul serve`):",
        validate: (v: string) => ADDRESS.test(v.trim()) || "HOST:PORT, e.g. 10.0.0.2:7070",
        filter: (v: string) => v.trim(),
      });
    }
    debug(`wizard: destination ${to}`);

    const spin = ora({ text: `preflight: asking ${to}`, stream: process.stderr }).start();
    let report;
    try {
      report = await preflight({ pid, to });
    } catch (e) {
      spin.fail("preflight failed");
      throw e;
    }
    spin.stop();
    process.stderr.write(formatReport(report));
    if (!report.ok) {
      process.stderr.write("Nothing was frozen; the process keeps running here.\n");
      return ExitCode.PREFLIGHT;
    }
    if (values.yes !== true) {
      const go = await ask<boolean>({ type: "confirm", message: `Migrate pid ${pid} to ${to} now?`, default: true });
      if (!go) {
        process.stderr.write("Not migrated; the process keeps running here.\n");
        return ExitCode.OK;
      }
    }
    const ui = spinnerProgress();
    const controller = new AbortController();
    const cancel = () => controller.abort();
    process.once("SIGINT", cancel);
    let s;
    try {
      s = await migrate({ pid, to, signal: controller.signal, onProgress: (p) => { if (p.phase !== "preflight") ui.onProgress(p); } });
    } finally {
      ui.stop();
      process.off("SIGINT", cancel);
    }
    remember(to);
    if (values.json === true) stdout(json(s));
    else stdout(`migration finished: pid ${s.pid} runs on ${s.to} as pid ${s.dest_pid}${s.pid_ns ? " (new pid namespace)" : ""}; frozen ${s.frozen_ms} ms, total ${s.total_ms} ms\n`);
    return ExitCode.OK;
  },
};
