#!/usr/bin/env node
// Thin shim: the CLI is compiled from src/cli/ into dist/ by `npm run build`.
let cli;
try {
  cli = await import("../dist/src/cli/main.js");
} catch (e) {
  if (e && e.code === "ERR_MODULE_NOT_FOUND" && String(e.message).includes("dist/src/cli/main.js")) {
    process.stderr.write("phaul: not built yet: run `npm run build` first\n");
    process.exit(1);
  }
  throw e;
}
await cli.run();
