// What a host tells its peer in the hello: from the native `check` op.

import { readFileSync } from "node:fs";
import { callNative } from "../src/native.js";
import { PROTOCOL, type Capabilities, type HelloMsg, type Role } from "./protocol.js";

let cached: Promise<Capabilities> | undefined;

export function localCapabilities(): Promise<Capabilities> {
  cached ??= callNative("check").then((r) => {
    const features = Object.entries((r.features ?? {}) as Record<string, { ok?: unknown }>)
      .filter(([, f]) => f?.ok === true)
      .map(([name]) => name)
      .sort();
    return {
      arch: String(r.arch ?? "unknown"),
      kernel: String(r.kernel ?? ""),
      // PHAUL_FAKE_XCR0: test-only, pretend this host has that XSAVE mask.
      xcr0: process.env.PHAUL_FAKE_XCR0 && /^0x[0-9a-f]+$/i.test(process.env.PHAUL_FAKE_XCR0) ? process.env.PHAUL_FAKE_XCR0 : typeof r.xcr0 === "string" && /^0x[0-9a-f]+$/i.test(r.xcr0) ? r.xcr0 : "0x0",
      xsave_size: Number.isSafeInteger(r.xsave_size) ? (r.xsave_size as number) : 0,
      features,
      ...(typeof r.boot_id === "string" && /^[0-9a-f-]{1,64}$/.test(r.boot_id) ? { boot_id: r.boot_id } : {}),
      ...(typeof r.net_ns === "string" && /^[0-9]+:[0-9]+$/.test(r.net_ns) ? { net_ns: r.net_ns } : {}),
    };
  });
  cached.catch(() => {
    cached = undefined;
  });
  return cached;
}

export function softwareVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8"));
    return String(pkg.version);
  } catch {
    return "unknown";
  }
}

export async function hello(role: Role, extra: Partial<HelloMsg> = {}): Promise<HelloMsg> {
  return { type: "hello", protocol: PROTOCOL, role, capabilities: await localCapabilities(), software: softwareVersion(), ...extra };
}
