import { resolve } from "node:path";
import { inspect } from "../../inspect.js";
import { PhaulError } from "../../errors.js";
import type { Command } from "../command.js";
import { json } from "../format.js";
import { inspectText } from "../inspect-text.js";

export const command: Command = {
  name: "inspect",
  summary: "show what a dump directory contains",
  usage: "inspect DIR [--json]",
  description: "Reads every image of the dump (checking versions and checksums) and prints\nprocesses, threads, memory mappings, descriptors and signal state.",
  options: {
    json: { type: "boolean", description: "print the whole state document as JSON" },
  },
  positionals: ["DIR"],
  examples: ["phaul inspect /var/tmp/app", "phaul inspect /var/tmp/app --json | jq '.processes[0].threads'"],
  async run({ values, positionals, stdout }) {
    const dir = positionals[0];
    if (!dir) throw new PhaulError("EUSAGE", "inspect: missing DIR (see phaul inspect --help)");
    const state = inspect(dir);
    stdout(values.json ? json(state) : inspectText(resolve(dir), state));
    return 0;
  },
};
