import { serve, DEFAULT_LISTEN, type ServeEvent } from "../../../migrate/index.js";
import { AUTH_OPTIONS } from "../auth-options.js";
import { PhaulError } from "../../errors.js";
import type { Command } from "../command.js";
import { bytes } from "../format.js";

function line(e: ServeEvent): string | undefined {
  const ts = new Date().toISOString();
  switch (e.event) {
    case "listening":
      return `${ts} listening on ${e.address} (pages on ${e.page_address}); ` +
        (e.auth === "none" ? "no authentication: loopback only (see --token-file, --tls-*)" : `peers authenticate by ${e.auth}`);
    case "restored":
      return `${ts} ${e.migration}: migrated pid ${e.pid} from ${e.peer}: ${e.rounds} pre-copy rounds, ` +
        `${bytes(e.bytes)}, restore ${(e.restore_us / 1000).toFixed(1)} ms, total ${e.total_ms} ms` +
        (e.confirmed ? "" : " (source did not confirm its kill)");
    case "failed":
      return `${ts} ${e.migration ?? "-"}: migration${e.pid ? ` of pid ${e.pid}` : ""} from ${e.peer} failed at ${e.phase}: ` +
        `${e.message} [${e.code}]; nothing left here`;
    default:
      return undefined; // connected, prepared, round: only in --json output
  }
}

export const command: Command = {
  name: "serve",
  summary: "run a destination agent that receives live migrations",
  usage: "serve [--listen HOST:PORT] [--page-port P] [--dir DIR] [--pid-ns auto|never] [--token-file F | --tls-cert F --tls-key F --tls-ca F] [--json]",
  description:
    `Accepts \`phaul migrate\` connections on HOST:PORT (default ${DEFAULT_LISTEN}) and\n` +
    "restores the migrated trees here with their original pids. Page data comes\n" +
    "over a second port (--page-port, default: any free port, announced to the\n" +
    "source). One migration at a time; runs until SIGINT or SIGTERM. Logs one\n" +
    "line per migration; --json logs every event as a JSON line.\n" +
    "Without --token-file or --tls-* it listens on loopback only (docs/security.md).",
  options: {
    listen: { type: "string", short: "l", arg: "HOST:PORT", description: `control address (default ${DEFAULT_LISTEN}; port 0 picks one)` },
    "page-port": { type: "string", arg: "P", description: "port for page data on the same host (default: any free port)" },
    dir: { type: "string", short: "d", arg: "DIR", description: "keep a JSON record of each migration in DIR" },
    "pid-ns": { type: "string", arg: "MODE", description: "pids taken here: auto (new pid namespace, default) or never (refuse)" },
    ...AUTH_OPTIONS,
    json: { type: "boolean", description: "log events as JSON lines" },
  },
  examples: [
    "phaul serve",
    "phaul serve --listen 0.0.0.0:7070 --page-port 7071 --token-file /etc/phaul/secret",
    "phaul serve --listen 10.0.0.2:7070 --tls-cert agent.pem --tls-key agent.key --tls-ca ca.pem --json",
  ],
  async run({ values, stdout }) {
    let pagePort: number | undefined;
    if (values["page-port"] !== undefined) {
      const t = String(values["page-port"]);
      pagePort = /^\d+$/.test(t) ? Number(t) : NaN;
      if (!(pagePort! >= 0 && pagePort! <= 65535)) throw new PhaulError("EUSAGE", `--page-port must be a port number, got ${JSON.stringify(t)}`);
    }
    const asJson = values.json === true;
    const handle = await serve({
      listen: typeof values.listen === "string" ? values.listen : DEFAULT_LISTEN,
      ...(pagePort !== undefined ? { pagePort } : {}),
      ...(typeof values.dir === "string" ? { dir: values.dir } : {}),
      ...(typeof values["pid-ns"] === "string" ? { pidNamespace: values["pid-ns"] as "auto" | "never" } : {}),
      ...(typeof values["token-file"] === "string" ? { tokenFile: values["token-file"] } : {}),
      ...(values["tls-cert"] !== undefined || values["tls-key"] !== undefined || values["tls-ca"] !== undefined
        ? { tls: { cert: values["tls-cert"] as string | undefined, key: values["tls-key"] as string | undefined, ca: values["tls-ca"] as string | undefined } as Record<string, string> }
        : {}),
      ...(process.env.PHAUL_FAULT ? { fault: process.env.PHAUL_FAULT } : {}),
      onEvent(e) {
        if (asJson) stdout(JSON.stringify({ time: new Date().toISOString(), ...e }) + "\n");
        else {
          const l = line(e);
          if (l) stdout(l + "\n");
        }
      },
    });
    await new Promise<void>((resolve) => {
      const stop = () => {
        process.off("SIGINT", stop);
        process.off("SIGTERM", stop);
        resolve();
      };
      process.on("SIGINT", stop);
      process.on("SIGTERM", stop);
    });
    await handle.close();
    // The native page listener has no close op: leave without waiting for it.
    process.exit(0);
  },
};
