import { restore } from "../../restore.js";
import { requireString } from "../args.js";
import type { Command } from "../command.js";
import { json } from "../format.js";

export const command: Command = {
  name: "restore",
  summary: "restore a process tree from an image directory",
  usage: "restore --dir DIR [--json]",
  description: "Prints the pid of the restored root process.",
  options: {
    dir: { type: "string", short: "d", arg: "DIR", description: "image directory written by phaul dump" },
    json: { type: "boolean", description: 'print {"pid":N}' },
  },
  examples: ["phaul restore --dir /var/tmp/app", "phaul restore --dir /var/tmp/app --json"],
  async run({ values, stdout }) {
    const dir = requireString(this, values, "dir");
    const { pid } = await restore({ dir });
    stdout(values.json ? JSON.stringify({ pid }) + "\n" : `${pid}\n`);
    return 0;
  },
};
