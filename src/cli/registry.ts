// Every CLI command, in the order `phaul --help` lists them. Adding a command
// is one import and one line here.

import type { Command } from "./command.js";
import { command as dump } from "./commands/dump.js";
import { command as restore } from "./commands/restore.js";
import { command as check } from "./commands/check.js";
import { command as inspect } from "./commands/inspect.js";
import { command as migrate } from "./commands/migrate.js";
import { command as serve } from "./commands/serve.js";
import { command as wizard } from "./commands/wizard.js";

export const commands: Record<string, Command> = {
  dump,
  restore,
  check,
  inspect,
  migrate,
  serve,
  wizard,
};
