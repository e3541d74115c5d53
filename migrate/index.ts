// Live migration: source and destination agents over the control protocol.
export { buildReport, formatReport, type PreflightReport } from "./preflight.js";
export { migrate, preflight, migrateOptions, TRACK_MODES, type PreflightOptions, type MigrateOptions, type MigrateProgress, type MigrateSummary, type TrackMode } from "./source.js";
export { serve, DEFAULT_LISTEN, type ServeOptions, type ServeEvent, type ServeHandle, type ServePhase } from "./destination.js";
export { decide, bandwidth, estimateFinalMs, notConverging, DEFAULT_MAX_DOWNTIME_MS, DEFAULT_MAX_ROUNDS, type Decision, type RoundSample, type StopReason } from "./policy.js";
export { PROTOCOL, type FileFact, type FileFinding, type Message, type Capabilities, type Layout, type RoundStats } from "./protocol.js";
