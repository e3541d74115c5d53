// One error type for the whole library: the CLI maps `code` to an exit status
// and prints `message` as a single line, so messages must stand on their own.

/** Process exit statuses, documented in docs/exit-codes.md. */
export const ExitCode = {
  OK: 0,
  FAILED: 1,
  USAGE: 2,
  IMAGE: 3,
  UNSUPPORTED: 4,
  PERMISSION: 5,
  PREFLIGHT: 6,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

// Codes not listed here (ESRCH from the engine, EIO, ...) mean "the operation
// failed" and exit with 1.
const EXIT_BY_CODE: Record<string, ExitCode> = {
  EUSAGE: ExitCode.USAGE,
  EINVAL: ExitCode.USAGE,
  ENOTIMPL: ExitCode.USAGE,
  EIMAGE: ExitCode.IMAGE,
  EUNSUPPORTED: ExitCode.UNSUPPORTED,
  EKTHREAD: ExitCode.UNSUPPORTED,
  EPERM: ExitCode.PERMISSION,
  EACCES: ExitCode.PERMISSION,
  ENOSYS: ExitCode.PERMISSION,
  EFEATURE: ExitCode.PERMISSION,
  EPREFLIGHT: ExitCode.PREFLIGHT,
  EINCOMPAT: ExitCode.PREFLIGHT,
};

export class PhaulError extends Error {
  readonly code: string;
  /** Extra machine-readable context from the engine reply, if any. */
  readonly details?: Record<string, unknown>;

  constructor(code: string, message: string, details?: Record<string, unknown>) {
    super(message);
    this.name = "PhaulError";
    this.code = code;
    if (details !== undefined) this.details = details;
  }

  get exitCode(): ExitCode {
    return exitCodeFor(this.code);
  }
}

export function exitCodeFor(code: string): ExitCode {
  return EXIT_BY_CODE[code] ?? ExitCode.FAILED;
}

export function isPhaulError(e: unknown): e is PhaulError {
  return e instanceof PhaulError;
}

/** Wrap anything thrown into a PhaulError without losing a PhaulError's code. */
export function toPhaulError(e: unknown, fallbackCode = "EFAILED"): PhaulError {
  if (e instanceof PhaulError) return e;
  if (e instanceof Error) {
    const sysCode = (e as NodeJS.ErrnoException).code;
    const code = typeof sysCode === "string" && /^E[A-Z0-9]+$/.test(sysCode) ? sysCode : fallbackCode;
    return new PhaulError(code, e.message.split("\n")[0] ?? String(e));
  }
  return new PhaulError(fallbackCode, String(e));
}
