// Shape of one CLI command module. main.ts only knows this interface.

export interface OptionSpec {
  type: "string" | "boolean";
  short?: string;
  /** Shown in help, e.g. "N" for --pid N. */
  arg?: string;
  description: string;
}

export interface CommandContext {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

export interface Command {
  name: string;
  /** One line for the command list. */
  summary: string;
  /** Usage line after "phaul ", e.g. "dump --pid N --dir DIR [options]". */
  usage: string;
  /** Longer explanation printed by --help. */
  description?: string;
  options: Record<string, OptionSpec>;
  /** Names of positional arguments, in order; undefined allows none. */
  positionals?: string[];
  examples: string[];
  /** Returns the exit code. Errors are thrown as PhaulError. */
  run(ctx: CommandContext): Promise<number>;
}
