// Fuzz of the control-protocol decoder (migrate/protocol.ts): random msgpack
// values, mutated valid messages, truncated buffers and oversized input.
// Every input must decode to a valid message or throw a PhaulError EPROTO;
// nothing else (no TypeError, no hang). Deterministic seeds.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Packr } from 'msgpackr';
import { decode, encode, validate, MAX_MESSAGE_BYTES, type Message } from '../migrate/protocol.js';
import { PhaulError } from '../src/errors.js';
import { mutateBytes, randomValue, Rng } from './helpers/fuzz.js';

const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

const caps = { arch: 'x86_64', kernel: '6.1', xcr0: '0xe7', xsave_size: 2432, features: ['uffd-wp'] };
const VALID: Message[] = [
  { type: 'hello', protocol: 1, role: 'source', capabilities: caps, software: '0.1.0',
    auth: { ts: 1700000000000, nonce: 'a'.repeat(32), mac: 'b'.repeat(64) } },
  { type: 'hello', protocol: 1, role: 'destination', capabilities: caps, page_port: 7071 },
  { type: 'prepare', migration: '0f1e2d3c-aaaa-bbbb-cccc-000011112222', token: 'ab'.repeat(32),
    layout: { processes: [{ pid: 1234, ppid: 1, pgid: 1234, sid: 1, tids: [1234, 1235], vmas: [{ start: 4096, end: 8192 }] }] }, page_port: 7071 },
  { type: 'prepared', page_port: 7071 },
  { type: 'round', n: 3 },
  { type: 'round_done', stats: { round: 3, pages: 100, bytes: 409600, ms: 1.5 } },
  { type: 'freezing' },
  { type: 'final' },
  { type: 'restored', pid: 1234, restore_us: 900, pages: 3, bytes: 12288, pid_ns: true },
  { type: 'done' },
  { type: 'failed', code: 'EBUSY', message: 'busy' },
];

function check(data: Uint8Array, stats: { ok: number; err: number }): void {
  let m: Message;
  try {
    m = decode(data);
  } catch (e) {
    assert.ok(e instanceof PhaulError, `decoder threw a non-PhaulError: ${(e as Error)?.stack}`);
    assert.equal(e.code, 'EPROTO');
    assert.match(e.message, /^protocol error: /);
    stats.err++;
    return;
  }
  // Anything accepted re-encodes (it passed the same validation) and round-trips.
  assert.deepEqual(validate(m), m);
  encode(m);
  stats.ok++;
}

test('every valid message round-trips', () => {
  for (const m of VALID) assert.deepEqual(decode(encode(m)), validate(m));
});

test('fuzz: random msgpack values (20,000 cases)', () => {
  const rng = new Rng(1);
  const stats = { ok: 0, err: 0 };
  for (let i = 0; i < 20_000; i++) {
    const v = randomValue(rng);
    if (v && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array) && rng.below(2)) {
      (v as Record<string, unknown>).type = rng.pick(VALID).type; // reach the per-type validators
    }
    let data: Buffer;
    try {
      data = packr.pack(v);
    } catch {
      data = rng.bytes(rng.below(64));
    }
    check(data, stats);
  }
  assert.equal(stats.ok + stats.err, 20_000);
});

test('fuzz: mutated and truncated valid messages (30,000 cases)', () => {
  const rng = new Rng(2);
  const stats = { ok: 0, err: 0 };
  const packed = VALID.map((m) => encode(m));
  for (let i = 0; i < 30_000; i++) {
    const base = rng.pick(packed);
    const data = i % 5 === 0 ? base.subarray(0, rng.below(base.length)) : mutateBytes(rng, base);
    check(data, stats);
  }
  assert.ok(stats.ok > 100 && stats.err > 10_000, JSON.stringify(stats));
});

test('fuzz: field values swapped for hostile ones (10,000 cases)', () => {
  const rng = new Rng(3);
  const stats = { ok: 0, err: 0 };
  for (let i = 0; i < 10_000; i++) {
    const m = structuredClone(rng.pick(VALID)) as unknown as Record<string, unknown>;
    const keys = Object.keys(m).filter((k) => k !== 'type');
    const target = keys.length ? rng.pick(keys) : 'extra';
    m[target] = randomValue(rng, 2);
    let data: Buffer;
    try {
      data = packr.pack(m);
    } catch {
      continue;
    }
    check(data, stats);
  }
  assert.ok(stats.err > 5000, JSON.stringify(stats));
});

test('oversized and empty input', () => {
  assert.throws(() => decode(Buffer.alloc(MAX_MESSAGE_BYTES + 1)), /too large/);
  assert.throws(() => decode(Buffer.alloc(0)), /protocol error/);
  // deeply nested input (100,000 levels of one-element arrays): refused, no stack overflow
  const head = Buffer.from(packr.pack({ type: 'final', state: { format: 1, processes: [] } }));
  const nested = Buffer.concat([head.subarray(0, head.length - 1), Buffer.from([0x91]), Buffer.alloc(100_000, 0x91), Buffer.from([0xc0])]);
  assert.throws(() => decode(nested), /protocol error/);
  const shallowDeep = packr.pack({ type: 'final', state: { format: 1, processes: [JSON.parse('['.repeat(200) + ']'.repeat(200))] } });
  assert.throws(() => decode(shallowDeep), /nested too deeply/);
});
