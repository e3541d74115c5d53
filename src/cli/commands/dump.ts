import { dump } from "../../dump.js";
import { requireString } from "../args.js";
import type { Command } from "../command.js";
import { bytes, json, plural } from "../format.js";

export const command: Command = {
  name: "dump",
  summary: "freeze a process tree and write its images to a directory",
  usage: "dump --pid N --dir DIR [--leave-running] [--force] [--json]",
  description:
    "The tree rooted at N is frozen, its state and memory are written into DIR,\n" +
    "then the tree is killed (or resumed with --leave-running). If writing the\n" +
    "images fails, the tree is resumed.",
  options: {
    pid: { type: "string", short: "p", arg: "N", description: "root of the process tree to dump" },
    dir: { type: "string", short: "d", arg: "DIR", description: "image directory (created if missing, must be empty)" },
    "leave-running": { type: "boolean", description: "resume the tree after the dump instead of killing it" },
    force: { type: "boolean", description: "replace an earlier dump in DIR" },
    json: { type: "boolean", description: "print the summary as JSON" },
  },
  examples: [
    "phaul dump --pid 1234 --dir /var/tmp/app",
    "phaul dump --pid 1234 --dir /var/tmp/app --leave-running --json",
  ],
  async run({ values, stdout, stderr }) {
    const pid = requireString(this, values, "pid");
    const dir = requireString(this, values, "dir");
    const s = await dump({ pid, dir, leaveRunning: values["leave-running"] === true, force: values.force === true });
    if (values.json) {
      stdout(json(s));
      return 0;
    }
    for (const w of s.warnings) stderr(`phaul: warning: ${w}\n`);
    stdout(
        `dumped pid ${s.root_pid} into ${s.dir}\n` +
          `  ${plural(s.processes, "process", "processes")}, ${plural(s.threads, "thread")}, ` +
          `${plural(s.vmas, "mapping")}, ${plural(s.files, "open file")}\n` +
          `  ${plural(s.pages, "page")} (${bytes(s.bytes)}) in ${s.frozen_ms} ms; ` +
          `tree ${s.action === "kill" ? "killed" : "left running"}\n`,
    );
    return 0;
  },
};
