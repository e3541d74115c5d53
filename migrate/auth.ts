// Peer authentication for the control and page channels (docs/security.md).
//
// Shared secret (`--token-file F` on both agents): the source's hello carries
// a proof {ts, nonce, mac = HMAC-SHA256(secret, "phaul-src|ts|nonce")}; the
// destination checks it (constant time, |ts - now| ≤ 5 min, nonce unseen) as
// the first thing it does with the connection, and answers with its own proof
// over the source's nonce, so the source knows it talks to a secret holder
// too. The per-migration page token is HMAC(secret, "phaul-page|" + id): a
// page connection cannot be forged for any migration without the secret.
//
// TLS (`--tls-cert/--tls-key/--tls-ca`): the control channel runs over wss
// with client certificates required on both sides (mutual TLS, CA pinned).

import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { PhaulError } from "../src/errors.js";

export interface AuthProof {
  ts: number;
  nonce: string;
  mac: string;
}

export interface TlsFiles {
  cert: string;
  key: string;
  ca: string;
}

export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
}

/** Accepted clock skew between the agents for a hello proof. */
export const PROOF_WINDOW_MS = 5 * 60_000;
const MIN_SECRET_BYTES = 16;
const MAX_SECRET_BYTES = 4096;

/** Read a shared secret (trailing whitespace trimmed); at least 16 bytes. */
export function loadSecret(file: string, what = "--token-file"): Buffer {
  let data: Buffer;
  try {
    if (statSync(file).size > MAX_SECRET_BYTES) throw new Error(`larger than ${MAX_SECRET_BYTES} bytes`);
    data = readFileSync(file);
  } catch (e) {
    throw new PhaulError("EUSAGE", `${what} ${file}: cannot read it (${(e as Error).message})`);
  }
  let end = data.length;
  while (end > 0 && (data[end - 1] === 0x0a || data[end - 1] === 0x0d || data[end - 1] === 0x20 || data[end - 1] === 0x09)) end--;
  const secret = data.subarray(0, end);
  if (secret.length < MIN_SECRET_BYTES) {
    throw new PhaulError("EUSAGE", `${what} ${file}: the secret must be at least ${MIN_SECRET_BYTES} bytes (e.g. \`head -c 32 /dev/urandom | base64 > ${file}\`)`);
  }
  return Buffer.from(secret);
}

export function loadTls(files: Partial<TlsFiles>): TlsMaterial | undefined {
  const given = [files.cert, files.key, files.ca].filter((x) => x !== undefined).length;
  if (given === 0) return undefined;
  if (given !== 3) throw new PhaulError("EUSAGE", "TLS needs all of --tls-cert, --tls-key and --tls-ca");
  const read = (f: string, what: string) => {
    try {
      return readFileSync(f);
    } catch (e) {
      throw new PhaulError("EUSAGE", `${what} ${f}: cannot read it (${(e as Error).message})`);
    }
  };
  return { cert: read(files.cert!, "--tls-cert"), key: read(files.key!, "--tls-key"), ca: read(files.ca!, "--tls-ca") };
}

function mac(secret: Buffer, text: string): string {
  return createHmac("sha256", secret).update(text).digest("hex");
}

/** Constant-time comparison of two strings (false when lengths differ). */
export function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, "utf8");
  const y = Buffer.from(b, "utf8");
  if (x.length !== y.length) {
    timingSafeEqual(x, x); // same work either way
    return false;
  }
  return timingSafeEqual(x, y);
}

export function sourceProof(secret: Buffer, now = Date.now()): AuthProof {
  const nonce = randomBytes(16).toString("hex");
  return { ts: now, nonce, mac: mac(secret, `phaul-src|${now}|${nonce}`) };
}

/** The destination's answer: binds its hello to the source's nonce. */
export function destinationProof(secret: Buffer, source: AuthProof): AuthProof {
  const nonce = randomBytes(16).toString("hex");
  return { ts: Date.now(), nonce, mac: mac(secret, `phaul-dst|${source.nonce}|${nonce}`) };
}

export function checkDestinationProof(secret: Buffer, source: AuthProof, proof: AuthProof | undefined): void {
  if (!proof || !safeEqual(proof.mac, mac(secret, `phaul-dst|${source.nonce}|${proof.nonce}`))) {
    throw new PhaulError("EAUTH", "the destination agent did not prove it holds the shared secret (wrong or missing --token-file there)");
  }
}

/** Remembers recent nonces so a captured hello cannot be replayed. */
export class ReplayGuard {
  private seen = new Map<string, number>();

  check(secret: Buffer, proof: AuthProof | undefined, now = Date.now()): void {
    if (!proof) throw new PhaulError("EAUTH", "authentication required: the source sent no credentials (use --token-file)");
    if (!safeEqual(proof.mac, mac(secret, `phaul-src|${proof.ts}|${proof.nonce}`))) {
      throw new PhaulError("EAUTH", "authentication failed: wrong shared secret");
    }
    if (Math.abs(now - proof.ts) > PROOF_WINDOW_MS) {
      throw new PhaulError("EAUTH", "authentication failed: credentials too old or clocks more than 5 minutes apart");
    }
    for (const [n, t] of this.seen) if (now - t > 2 * PROOF_WINDOW_MS) this.seen.delete(n);
    if (this.seen.has(proof.nonce)) throw new PhaulError("EAUTH", "authentication failed: replayed credentials");
    if (this.seen.size > 100_000) this.seen.clear(); // bounded; the ts window still holds
    this.seen.set(proof.nonce, now);
  }
}

/** Per-migration page token, derived from the shared secret. */
export function pageToken(secret: Buffer, migration: string): string {
  return mac(secret, `phaul-page|${migration}`);
}

/** True for loopback hosts (127/8, ::1, localhost). */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host) || host === "::ffff:127.0.0.1";
}
