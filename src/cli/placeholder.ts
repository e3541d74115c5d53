import { PhaulError } from "../errors.js";
import type { Command } from "./command.js";

/** A command that is registered but not written yet. */
export function placeholder(name: string, summary: string): Command {
  return {
    name,
    summary: `${summary} (not implemented yet)`,
    usage: `${name} [options]`,
    options: {},
    positionals: [],
    examples: [],
    async run() {
      throw new PhaulError("ENOTIMPL", `${name} is not implemented yet`);
    },
  };
}
