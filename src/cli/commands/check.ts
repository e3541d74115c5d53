import { check } from "../../check.js";
import type { Command } from "../command.js";
import { describeFeature } from "../../features.js";
import { json, table } from "../format.js";

export const command: Command = {
  name: "check",
  summary: "report which kernel features phaul can use on this host",
  usage: "check [--json]",
  description: "Exits with 0 when every required feature is available, 5 when one is missing.\nMissing optional features only make migration slower.",
  options: {
    json: { type: "boolean", description: "print the features as JSON" },
  },
  examples: ["phaul check", "phaul check --json | jq '.features'"],
  async run({ values, stdout }) {
    const result = await check();
    const code = result.ok ? 0 : 5;
    if (values.json) {
      stdout(json(result));
      return code;
    }
    const rows: string[][] = [["", "feature", "needed for", "what it means / detail"]];
    for (const [name, f] of Object.entries(result.features)) {
      const info = describeFeature(name);
      const text = [info.meaning, f.detail].filter(Boolean).join(info.meaning && f.detail ? "; " : "");
      rows.push([f.ok ? "ok" : f.required ? "MISSING" : "no", info.title, info.neededFor, text]);
    }
    const features = Object.values(result.features);
    const missing = features.filter((f) => !f.ok && f.required).length;
    const optional = features.filter((f) => !f.ok && !f.required).length;
    const verdict = missing > 0
      ? `${missing} required feature(s) missing: phaul cannot work fully on this host`
      : optional > 0
        ? `all required features available (${optional} optional one(s) missing)`
        : "all features available";
    stdout(table(rows).join("\n") + "\n\n" + verdict + "\n");
    return code;
  },
};
