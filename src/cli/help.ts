import type { Command } from "./command.js";

export function commandHelp(c: Command): string {
  const lines = [`Usage: phaul ${c.usage}`, "", c.summary];
  if (c.description) lines.push("", c.description);
  const opts = Object.entries(c.options).map(([name, o]) => {
    const flag = `${o.short ? `-${o.short}, ` : "    "}--${name}${o.arg ? ` ${o.arg}` : ""}`;
    return [flag, o.description] as const;
  });
  opts.push(["-h, --help", "show this help"]);
  opts.push(["    --verbose", "timestamped debug lines on stderr (phases, native ops, timings)"]);
  opts.push(["    --log-file FILE", "append the same debug lines to FILE"]);
  const width = Math.max(...opts.map(([f]) => f.length));
  lines.push("", "Options:", ...opts.map(([f, d]) => `  ${f.padEnd(width)}  ${d}`));
  if (c.examples.length > 0) lines.push("", "Examples:", ...c.examples.map((e) => `  ${e}`));
  return lines.join("\n") + "\n";
}

export function programHelp(commands: Record<string, Command>): string {
  const names = Object.keys(commands);
  const width = Math.max(...names.map((n) => n.length));
  return [
    "Usage: phaul <command> [options]",
    "",
    "Live migration of Linux processes: freeze, dump, restore and move a process tree.",
    "",
    "Commands:",
    ...names.map((n) => `  ${n.padEnd(width)}  ${commands[n]!.summary}`),
    "",
    "Options:",
    "  -h, --help     show this help (or `phaul <command> --help`)",
    "  -V, --version  print the version",
    "  --verbose      timestamped debug lines on stderr (phases, native ops, timings)",
    "  --log-file F   append the same debug lines to file F",
    "  --json         (every command) machine-readable output; errors as {\"error\": {...}}",
    "",
    "Exit codes: 0 ok, 1 operation failed, 2 usage error, 3 image error,",
    "            4 unsupported process state, 5 permission or kernel feature missing,",
    "            6 refused by the migration preflight (docs/exit-codes.md).",
    "",
    "Examples:",
    "  phaul check",
    "  phaul dump --pid 1234 --dir /var/tmp/dump",
    "  phaul restore --dir /var/tmp/dump",
    "  phaul inspect /var/tmp/dump",
    "  phaul serve --listen 127.0.0.1:7070",
    "  phaul migrate --to 127.0.0.1:7070 --pid 1234 --dry-run",
    "  phaul wizard",
  ].join("\n") + "\n";
}
