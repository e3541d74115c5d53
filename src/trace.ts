// Timing marks for the frozen window, stamped with the monotonic clock in
// microseconds (the same clock the native engine and the test workloads use),
// so source, destination and workload timelines line up. On with PHAUL_TRACE.
const on = process.env.PHAUL_TRACE !== undefined && process.env.PHAUL_TRACE !== "";

export function traceMark(what: string): void {
  if (!on) return;
  process.stderr.write(`phaul-trace ${process.hrtime.bigint() / 1000n} ${what}\n`);
}
