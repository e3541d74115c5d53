// Small text formatting helpers shared by the human outputs.

import type { U64 } from "../types.js";

export function hex(v: U64 | undefined): string {
  if (v === undefined || v === null) return "-";
  return "0x" + BigInt(v).toString(16);
}

export function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function plural(n: number, word: string, many = `${word}s`): string {
  return `${n} ${n === 1 ? word : many}`;
}

/** Align columns; every row must have the same number of cells. */
export function table(rows: string[][], indent = "  "): string[] {
  if (rows.length === 0) return [];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows.map((r) => indent + r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  ").trimEnd());
}

export function json(value: unknown): string {
  return JSON.stringify(value, null, 2) + "\n";
}
