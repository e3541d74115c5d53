// Deterministic generators for the fuzz tests (seeded xorshift, no deps).

export class Rng {
  private s: bigint;
  constructor(seed: number) {
    this.s = BigInt(seed) | 1n;
  }
  next(): number {
    let x = this.s;
    x ^= (x << 13n) & 0xffffffffffffffffn;
    x ^= x >> 7n;
    x ^= (x << 17n) & 0xffffffffffffffffn;
    this.s = x;
    return Number(x & 0xffffffffn);
  }
  below(n: number): number {
    return n <= 0 ? 0 : this.next() % n;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.below(xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.next() & 0xff;
    return b;
  }
}

/** Flip, overwrite, insert, delete or truncate a few bytes. */
export function mutateBytes(rng: Rng, input: Uint8Array): Buffer {
  let b = Buffer.from(input);
  const n = 1 + rng.below(4);
  for (let k = 0; k < n; k++) {
    switch (rng.below(6)) {
      case 0:
        if (b.length) b[rng.below(b.length)]! ^= 1 << rng.below(8);
        break;
      case 1:
        if (b.length) b[rng.below(b.length)] = rng.pick([0, 0x7f, 0x80, 0xff, 0xc0, 0xc1, 0xcf, 0xd3, 0xdd, 0xdf, rng.next() & 0xff]);
        break;
      case 2:
        b = b.subarray(0, rng.below(b.length + 1));
        break;
      case 3: {
        const i = rng.below(b.length + 1);
        b = Buffer.concat([b.subarray(0, i), rng.bytes(1 + rng.below(16)), b.subarray(i)]);
        break;
      }
      case 4: {
        const i = rng.below(b.length + 1);
        b = Buffer.concat([b.subarray(0, i), b.subarray(i + 1 + rng.below(8))]);
        break;
      }
      default: {
        // duplicate a slice (repeated fields, nested lengths)
        const i = rng.below(b.length + 1);
        const j = Math.min(b.length, i + rng.below(32));
        b = Buffer.concat([b.subarray(0, j), b.subarray(i, j), b.subarray(j)]);
      }
    }
  }
  return b;
}

/** A random JSON/msgpack-able value of bounded depth. */
export function randomValue(rng: Rng, depth = 0): unknown {
  const leaf = depth > 3 || rng.below(3) === 0;
  if (leaf) {
    switch (rng.below(10)) {
      case 0: return null;
      case 1: return rng.below(2) === 1;
      case 2: return rng.next() - 2 ** 31;
      case 3: return rng.pick([0, -1, 1, 65535, 65536, 2 ** 53, -(2 ** 53), 1.5, NaN, Infinity, -0, 4194304, 4194305]);
      case 4: return rng.bytes(rng.below(8)).toString("hex");
      case 5: return rng.pick(["", "hello", "prepare", "round", "final", "failed", "source", "destination", "../../etc/passwd", "x".repeat(5000), "\u0000", "0xe7", "EBUSY"]);
      case 6: return rng.bytes(rng.below(16));
      case 7: return BigInt(rng.next()) << 30n;
      default: return rng.next() % 1000;
    }
  }
  if (rng.below(2)) return Array.from({ length: rng.below(5) }, () => randomValue(rng, depth + 1));
  const o: Record<string, unknown> = {};
  const keys = ["type", "protocol", "role", "capabilities", "page_port", "migration", "token", "layout", "processes",
    "pid", "tids", "n", "stats", "state", "code", "message", "auth", "ts", "nonce", "mac", "format", "features", "vmas"];
  for (let i = rng.below(6); i > 0; i--) o[rng.pick(keys)] = randomValue(rng, depth + 1);
  return o;
}
