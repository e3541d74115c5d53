import { restore } from "../../restore.js";
import { requireString } from "../args.js";
import type { Command } from "../command.js";
import { json } from "../format.js";

export const command: Command = {
  name: "restore",
  summary: "restore a process tree from an image directory",
  usage: "restore --dir DIR [--pid-ns] [--json]",
  description:
    "Prints the pid of the restored root process. The processes get their old pids back; when one is taken on this host, " +
    "restore refuses unless --pid-ns is given, which restores them into a new pid namespace (they see their old pids, " +
    "the host sees new ones; both are printed).",
  options: {
    dir: { type: "string", short: "d", arg: "DIR", description: "image directory written by phaul dump" },
    "pid-ns": { type: "boolean", description: "restore into a new pid namespace (for pids taken on this host)" },
    json: { type: "boolean", description: 'print {"pid":N}' },
  },
  examples: ["phaul restore --dir /var/tmp/app", "phaul restore --dir /var/tmp/app --json"],
  async run({ values, stdout }) {
    const dir = requireString(this, values, "dir");
    const { pid, hostPid } = await restore({ dir, pidNs: values["pid-ns"] === true });
    if (values.json) stdout(JSON.stringify({ pid, host_pid: hostPid }) + "\n");
    else stdout(hostPid === pid ? `${pid}\n` : `${pid} (host pid ${hostPid}, in a new pid namespace)\n`);
    return 0;
  },
};
