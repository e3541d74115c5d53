import { callNative } from "./native.js";
import { isRequired } from "./features.js";
import type { CheckResult, Feature } from "./types.js";

/** Ask the engine which kernel features phaul can use on this host. */
export async function check(): Promise<CheckResult> {
  const reply = await callNative("check");
  const features: Record<string, Feature> = {};
  for (const [name, f] of Object.entries((reply.features ?? {}) as Record<string, Partial<Feature>>)) {
    features[name] = {
      ok: f?.ok === true,
      detail: typeof f?.detail === "string" ? f.detail : "",
      required: isRequired(name, f),
    };
  }
  return { ok: Object.values(features).every((f) => f.ok || !f.required), features };
}
