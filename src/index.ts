// Library API of phaul. Nothing here prints or exits: errors are PhaulError.

export { dump, type DumpOptions } from "./dump.js";
export { restore, type RestoreOptions } from "./restore.js";
export { check } from "./check.js";
export { inspect } from "./inspect.js";
export {
  migrate,
  serve,
  preflight,
  formatReport,
  DEFAULT_LISTEN,
  TRACK_MODES,
  type PreflightOptions,
  type PreflightReport,
  type ServePhase,
  type StopReason,
  type RoundStats,
  type FileFinding,
  type MigrateOptions,
  type MigrateProgress,
  type MigrateSummary,
  type ServeOptions,
  type ServeEvent,
  type ServeHandle,
  type TrackMode,
} from "../migrate/index.js";
export { PhaulError, ExitCode, exitCodeFor, isPhaulError } from "./errors.js";
export { callNative, callNativeSync, nativeLibraryPath } from "./native.js";
export { readImages, writeImages, readInventory } from "./images/index.js";
export { countState, type StateCounts } from "./summary.js";
export * from "./types.js";
