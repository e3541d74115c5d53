// Entry point of the phaul CLI: dispatch, help, and the error convention
// (one line "phaul: <message>" on stderr, exit code from docs/exit-codes.md).

import { readFileSync } from "node:fs";
import { ExitCode, PhaulError, toPhaulError } from "../errors.js";
import { configureLog, debug } from "../log.js";
import { parseCommandArgs } from "./args.js";
import { commandHelp, programHelp } from "./help.js";
import { commands } from "./registry.js";

function version(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8"));
    return String(pkg.version);
  } catch {
    return "unknown";
  }
}

const write = (stream: NodeJS.WriteStream) => (text: string) => {
  stream.write(text);
};

/** Take the global options (--verbose, --log-file FILE) out of argv, wherever they are. */
export function globalOptions(argv: string[]): { argv: string[]; verbose: boolean; logFile?: string } {
  const out: string[] = [];
  let verbose = false;
  let logFile: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--") {
      out.push(...argv.slice(i));
      break;
    }
    if (a === "--verbose") verbose = true;
    else if (a === "--log-file") {
      const v = argv[++i];
      if (v === undefined || v === "") throw new PhaulError("EUSAGE", "--log-file needs a FILE");
      logFile = v;
    } else if (a.startsWith("--log-file=")) logFile = a.slice("--log-file=".length);
    else out.push(a);
  }
  return { argv: out, verbose, ...(logFile !== undefined ? { logFile } : {}) };
}

export async function main(argvIn: string[]): Promise<number> {
  let argv: string[];
  try {
    const g = globalOptions(argvIn);
    argv = g.argv;
    configureLog({ verbose: g.verbose, ...(g.logFile !== undefined ? { file: g.logFile } : {}) });
  } catch (e) {
    process.stderr.write(`phaul: ${(e as Error).message}\n`);
    return ExitCode.USAGE;
  }
  const t0 = performance.now();
  debug(`phaul ${version()} ${argv.join(" ")}`);
  const code = await dispatch(argv);
  debug(`exit ${code} after ${(performance.now() - t0).toFixed(1)} ms`);
  return code;
}

async function dispatch(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "-h" || name === "--help" || name === "help") {
    const topic = name === "help" ? rest[0] : undefined;
    const cmd = topic !== undefined ? commands[topic] : undefined;
    if (topic !== undefined && !cmd) {
      process.stderr.write(`phaul: unknown command ${topic} (see phaul --help)\n`);
      return ExitCode.USAGE;
    }
    // Without any argument this is a usage error: help goes to stderr.
    const out = name === undefined ? process.stderr : process.stdout;
    out.write(cmd ? commandHelp(cmd) : programHelp(commands));
    return name === undefined ? ExitCode.USAGE : ExitCode.OK;
  }
  if (name === "-V" || name === "--version") {
    process.stdout.write(`phaul ${version()}\n`);
    return ExitCode.OK;
  }
  const cmd = commands[name];
  if (!cmd) {
    process.stderr.write(`phaul: unknown command ${name} (see phaul --help)\n`);
    return ExitCode.USAGE;
  }
  try {
    const args = parseCommandArgs(cmd, rest);
    if (args.help) {
      process.stdout.write(commandHelp(cmd));
      return ExitCode.OK;
    }
    return await cmd.run({
      values: args.values,
      positionals: args.positionals,
      stdout: write(process.stdout),
      stderr: write(process.stderr),
    });
  } catch (e) {
    const err = toPhaulError(e);
    debug(`error ${err.code}: ${err.message}`);
    process.stderr.write(`phaul: ${err.message.split("\n")[0]}\n`);
    // --json: the error as a document on stdout too (stderr keeps its one line)
    if (rest.includes("--json")) {
      process.stdout.write(JSON.stringify({ error: { code: err.code, exit_code: err.exitCode, message: err.message, ...(err.details ? { details: err.details } : {}) } }) + "\n");
    }
    if (process.env.PHAUL_DEBUG && e instanceof Error && e.stack) process.stderr.write(e.stack + "\n");
    return err.exitCode;
  }
}

// `phaul inspect DIR | head` must not end in an EPIPE stack trace.
process.stdout.on("error", (e: NodeJS.ErrnoException) => {
  if (e.code === "EPIPE") process.exit(ExitCode.OK);
});

export async function run(): Promise<void> {
  const code = await main(process.argv.slice(2));
  process.exitCode = code;
}
