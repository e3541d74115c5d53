// Debug log of the CLI (`--verbose` on stderr, `--log-file FILE` appended):
// one timestamped line per phase, native op and its timing. Off by default;
// the library writes nothing unless an embedder calls configureLog().

import { appendFileSync } from "node:fs";

let verbose = false;
let file: string | undefined;

export interface LogOptions {
  /** Debug lines on stderr. */
  verbose?: boolean;
  /** Append debug lines to this file. */
  file?: string;
}

export function configureLog(o: LogOptions): void {
  verbose = o.verbose === true;
  file = o.file;
}

export function logEnabled(): boolean {
  return verbose || file !== undefined;
}

/** `2026-11-23T19:22:10.494Z phaul[PID] what` to stderr and/or the log file. */
export function debug(what: string): void {
  if (!verbose && file === undefined) return;
  const line = `${new Date().toISOString()} phaul[${process.pid}] ${what}\n`;
  if (verbose) process.stderr.write(line);
  if (file !== undefined) {
    try {
      appendFileSync(file, line);
    } catch {
      /* the log is best effort */
    }
  }
}
