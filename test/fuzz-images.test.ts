// Fuzz of the image loader (src/images read path): each case damages one
// image file of a valid dump, either raw (bad magic, header, truncation,
// checksum) or behind a correct frame (the protobuf payload itself mutated,
// so the decoder and the checks after it see garbage). Every case must
// read back or fail with PhaulError EIMAGE; nothing else. Deterministic.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { readImages, writeImages, HEADER_SIZE } from '../src/images/index.js';
import { frameImage, kindName } from '../src/images/format.js';
import { PhaulError } from '../src/errors.js';
import type { StateDocument } from '../src/types.js';
import { mutateBytes, Rng } from './helpers/fuzz.js';

const regs = Object.fromEntries(
  ['r15', 'r14', 'r13', 'r12', 'rbp', 'rbx', 'r11', 'r10', 'r9', 'r8', 'rax', 'rcx', 'rdx', 'rsi', 'rdi', 'orig_rax',
    'rip', 'cs', 'eflags', 'rsp', 'ss', 'fs_base', 'gs_base', 'ds', 'es', 'fs', 'gs'].map((k, i) => [k, i * 8]));

function proc(pid: number, ppid: number) {
  return {
    pid, ppid, pgid: 100, sid: 100, comm: `w${pid}`,
    exe: { path: '/bin/w', dev: 1, ino: 2, size: 3, mtime_ns: '4' },
    cwd: '/', root: '/', umask: 18, rlimits: [{ resource: 7, cur: 1024, max: 4096 }],
    mm: { start_code: 4096, end_code: 8192, start_data: 8192, end_data: 8192, start_brk: 16384, brk: 16384, start_stack: 65536,
      arg_start: 0, arg_end: 0, env_start: 0, env_end: 0, auxv: [6, 4096, 0, 0] },
    vmas: [{ start: 4096, end: 8192, prot: 5, shared: false, kind: 'anon', pgoff: 0, growsdown: false }],
    pages: { file: `pages-${pid}.img`, entries: [{ vaddr: 4096, nr_pages: 1, offset: 0 }] },
    threads: [{ tid: pid, regs, restart: 'none', xsave: Buffer.alloc(64, 1).toString('base64'), sigmask: '0', pending: [],
      sigaltstack: { sp: 0, flags: 2, size: 0 }, comm: `w${pid}` }],
    sigactions: [{ sig: 10, handler: 4096, flags: 0, restorer: 0, mask: '0' }],
    shared_pending: [], itimers: [],
    fds: [{ fd: 0, file_id: 1, cloexec: false }],
  };
}

const DOC = {
  format: 1, arch: 'x86_64', kernel: '6.1', xcr0: '0xe7', xsave_size: 64, root_pid: 100, created_ns: '1',
  processes: [proc(100, 1), proc(101, 100)],
  files: [{ id: 1, kind: 'chr', path: '/dev/null', flags: 2, pos: 0, rdev: 259 }],
  pipes: [],
} as unknown as StateDocument;

const KIND_OF: Record<string, Parameters<typeof frameImage>[0]> = {};

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

test('fuzz: damaged image files (5,000 cases)', () => {
  // /dev/shm when there: the loop is bound by file opens
  const dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'phaul-fuzz-img-'));
  dirs.push(dir);
  for (const p of DOC.processes) writeFileSync(join(dir, `pages-${p.pid}.img`), Buffer.alloc(4096, 0xaa));
  writeImages(dir, DOC);
  readImages(dir); // the pristine dump reads back
  const files = readdirSync(dir).filter((f) => f.endsWith('.img') && !f.startsWith('pages-')).sort();
  const pristine = new Map(files.map((f) => [f, readFileSync(join(dir, f))]));
  for (const [f, data] of pristine) KIND_OF[f] = kindName(data.readUInt32LE(12)) as Parameters<typeof frameImage>[0];
  const rng = new Rng(7);
  const stats = { ok: 0, err: 0, framed: 0 };
  for (let i = 0; i < 5_000; i++) {
    const f = rng.pick(files);
    const orig = pristine.get(f)!;
    let data: Buffer;
    if (i % 3 === 0) {
      data = mutateBytes(rng, orig); // raw damage: mostly caught by the frame checks
    } else {
      data = frameImage(KIND_OF[f]!, mutateBytes(rng, orig.subarray(HEADER_SIZE)));
      stats.framed++;
    }
    writeFileSync(join(dir, f), data);
    try {
      readImages(dir);
      stats.ok++;
    } catch (e) {
      assert.ok(e instanceof PhaulError, `case ${i} (${f}): image loader threw a non-PhaulError: ${(e as Error)?.stack}`);
      assert.equal(e.code, 'EIMAGE', `case ${i}: ${e.message}`);
      stats.err++;
    }
    writeFileSync(join(dir, f), orig);
  }
  assert.ok(stats.err > 1500, JSON.stringify(stats));
});
