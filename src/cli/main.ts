// Entry point of the phaul CLI: dispatch, help, and the error convention
// (one line "phaul: <message>" on stderr, exit code from docs/exit-codes.md).

import { readFileSync } from "node:fs";
import { ExitCode, toPhaulError } from "../errors.js";
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

export async function main(argv: string[]): Promise<number> {
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
    process.stderr.write(`phaul: ${err.message.split("\n")[0]}\n`);
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
