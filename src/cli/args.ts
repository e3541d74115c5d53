// Thin wrapper over node:util parseArgs that turns its errors into usage
// errors with short messages.

import { parseArgs } from "node:util";
import { PhaulError } from "../errors.js";
import type { Command } from "./command.js";

export interface ParsedArgs {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
  help: boolean;
}

function shortMessage(e: Error): string {
  const m = /^(Unknown option '[^']+'|Option '[^']+' argument missing|Option '[^']+' does not take an argument|Unexpected argument '[^']+')/.exec(e.message);
  const first = m?.[1] ?? e.message.split(/\.\s/)[0] ?? e.message;
  return first.charAt(0).toLowerCase() + first.slice(1).replace(/'/g, "");
}

export function parseCommandArgs(command: Command, args: string[]): ParsedArgs {
  const options: Record<string, { type: "string" | "boolean"; short?: string }> = {
    help: { type: "boolean", short: "h" },
  };
  for (const [name, spec] of Object.entries(command.options)) {
    options[name] = spec.short ? { type: spec.type, short: spec.short } : { type: spec.type };
  }
  let parsed;
  try {
    parsed = parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (e) {
    throw new PhaulError("EUSAGE", `${command.name}: ${shortMessage(e as Error)} (see phaul ${command.name} --help)`);
  }
  const values = parsed.values as Record<string, string | boolean | undefined>;
  const help = values.help === true;
  const allowed = command.positionals?.length ?? 0;
  if (!help && parsed.positionals.length > allowed) {
    throw new PhaulError("EUSAGE", `${command.name}: unexpected argument ${parsed.positionals[allowed]} (see phaul ${command.name} --help)`);
  }
  return { values, positionals: parsed.positionals, help };
}

export function requireString(command: Command, values: ParsedArgs["values"], name: string): string {
  const v = values[name];
  if (typeof v !== "string" || v === "") {
    throw new PhaulError("EUSAGE", `${command.name}: --${name} is required (see phaul ${command.name} --help)`);
  }
  return v;
}
