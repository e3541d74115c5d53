// Test-only fault injection for the destination agent (docs/migrate.md).
//
//   PHAUL_FAULT=PHASE[:ACTION[:DELAY_MS]]
//
// PHASE  handshake  source hello received, before answering
//        prepare    prepare received, before dest_prepare
//        precopy    DELAY_MS after dest_round of round 0 started (during a pre-copy round)
//        round1     DELAY_MS after dest_round of round 1 started (a later round: dirty pages only)
//        freeze     the source announced its freeze (before source_freeze runs there)
//        final      the source announced its final round and state (the engine restores meanwhile)
//        restore    DELAY_MS after the final announcement (during the restore)
//        commit     the engines agreed the commit (the copy runs here), before the source hears it from this agent
// ACTION exit   process.exit(99) at once, no cleanup (default)
//        kill   SIGKILL itself
//        close  drop the control connection and take the normal abort path

export type FaultPhase = "handshake" | "prepare" | "precopy" | "round1" | "freeze" | "final" | "restore" | "commit";
export type FaultAction = "exit" | "kill" | "close";

export interface Fault {
  phase: FaultPhase;
  action: FaultAction;
  delayMs: number;
}

const PHASES: FaultPhase[] = ["handshake", "prepare", "precopy", "round1", "freeze", "final", "restore", "commit"];
const ACTIONS: FaultAction[] = ["exit", "kill", "close"];

export function parseFault(text: string | undefined): Fault | undefined {
  if (!text) return undefined;
  const [phase, action = "exit", delay = "0"] = text.split(":");
  if (!PHASES.includes(phase as FaultPhase) || !ACTIONS.includes(action as FaultAction) || !/^\d+$/.test(delay)) {
    throw new Error(`PHAUL_FAULT must be PHASE[:ACTION[:DELAY_MS]] with PHASE in ${PHASES.join("|")} and ACTION in ${ACTIONS.join("|")}, got ${JSON.stringify(text)}`);
  }
  return { phase: phase as FaultPhase, action: action as FaultAction, delayMs: Number(delay) };
}

/** Die abruptly (exit/kill); returns normally for "close", which the caller handles. */
export function crash(f: Fault): void {
  if (f.action === "kill") process.kill(process.pid, "SIGKILL");
  if (f.action === "exit" || f.action === "kill") {
    process.stderr.write(`phaul: PHAUL_FAULT ${f.phase}:${f.action}: exiting\n`);
    process.exit(99);
  }
}
