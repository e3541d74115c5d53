// Round trip of the state document through the image files, and the errors
// a damaged dump must give.

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readImages, writeImages } from "../src/images/index.js";
import { PhaulError } from "../src/errors.js";
import type { ProcessState, Regs, StateDocument, ThreadState } from "../src/types.js";

const U64_MAX = "18446744073709551615";
const b64 = (n: number, fill: number) => Buffer.alloc(n, fill).toString("base64");

function regs(rip: number, rsp: number | string): Regs {
  return {
    r15: 0, r14: 1, r13: 2, r12: 3, rbp: 140737488347136, rbx: 5, r11: 582, r10: 0,
    r9: 0, r8: 0, rax: "18446744073709551104", rcx: 0, rdx: 0, rsi: 0, rdi: 0, orig_rax: 35,
    rip, cs: 51, eflags: 582, rsp, ss: 43, fs_base: 139872341358400, gs_base: 0,
    ds: 0, es: 0, fs: 0, gs: 0,
  };
}

function thread(tid: number, rip: number): ThreadState {
  return {
    tid,
    regs: regs(rip, 140737488346000),
    restart: tid % 2 ? "again" : "none",
    xsave: b64(2432, tid & 0xff),
    sigmask: "9223372036854775808",
    pending: [b64(128, 1), b64(128, 2)],
    sigaltstack: { sp: 0, flags: 2, size: 0 },
    rseq: { addr: 139872341360000, len: 32, sig: 1392848979 },
    clear_child_tid: 139872341358992,
    robust_list: { head: 139872341358976, len: 24 },
    comm: `thread-${tid}`,
  };
}

function processState(pid: number, ppid: number, nthreads: number): ProcessState {
  return {
    pid, ppid, pgid: 1000, sid: 900,
    comm: `worker-${pid}`,
    exe: { path: "/usr/bin/worker", dev: 2049, ino: 131090, size: 16384, mtime_ns: "1700000000123456789" },
    cwd: "/root", root: "/", umask: 18,
    rlimits: [
      { resource: 0, cur: U64_MAX, max: U64_MAX },
      { resource: 3, cur: 8388608, max: U64_MAX },
      { resource: 7, cur: 1024, max: 524288 },
    ],
    mm: {
      start_code: 4194304, end_code: 4200000, start_data: 4210000, end_data: 4211000,
      start_brk: 4227072, brk: 4362240, start_stack: 140737488347888,
      arg_start: 140737488348000, arg_end: 140737488348020, env_start: 140737488348020, env_end: 140737488349000,
      auxv: [33, 140737488510976, 16, 3219913727, 6, 4096, 0, 0],
    },
    vmas: [
      {
        start: 4194304, end: 4198400, prot: 5, shared: false, kind: "file", pgoff: 0,
        path: "/usr/bin/worker", file: { dev: 2049, ino: 131090, size: 16384, mtime_ns: 1 },
        growsdown: false, flags: "rd ex mr mw me",
      },
      { start: 4227072, end: 4362240, prot: 3, shared: false, kind: "heap", pgoff: 0, growsdown: false },
      {
        start: 139872340000000, end: 139872340065536, prot: 3, shared: true, kind: "shmem",
        pgoff: 0, path: "/dev/zero (deleted)", shmem_id: 42, growsdown: false, flags: "rd wr sh mr mw me ms",
      },
      { start: 140737488216064, end: 140737488351232, prot: 3, shared: false, kind: "stack", pgoff: 0, growsdown: true },
      { start: 140737488498000, end: 140737488506192, prot: 5, shared: false, kind: "vdso", pgoff: 0, growsdown: false },
      { start: "18446744073699065856", end: "18446744073699069952", prot: 4, shared: false, kind: "vsyscall", pgoff: 0, growsdown: false },
    ],
    pages: {
      file: `pages-${pid}.img`,
      entries: [
        { vaddr: 4194304, nr_pages: 1, offset: 0 },
        { vaddr: 4227072, nr_pages: 33, offset: 4096 },
        { vaddr: 140737488216064, nr_pages: 3, offset: 139264 },
      ],
    },
    threads: Array.from({ length: nthreads }, (_, i) => thread(pid + i, 4196000 + i)),
    sigactions: [
      { sig: 10, handler: 4198400, flags: 67108864, restorer: 139872341000000, mask: "0" },
      { sig: 15, handler: 1, flags: 0, restorer: 0, mask: "16386" },
    ],
    shared_pending: pid % 2 ? [b64(128, 9)] : [],
    itimers: [{ which: 0, interval_us: 500000, value_us: 123456 }],
    fds: [
      { fd: 0, file_id: 3, cloexec: false },
      { fd: 1, file_id: 5, cloexec: false },
      { fd: 3, file_id: 1, cloexec: true },
      { fd: 4, file_id: 4, cloexec: false },
    ],
  };
}

function sampleState(): StateDocument {
  return {
    format: 1,
    arch: "x86_64",
    kernel: "6.18.44-cloud-amd64",
    xcr0: "0xe7",
    xsave_size: 2432,
    root_pid: 1234,
    created_ns: "1700000000000000000",
    freeze_us: 173,
    warnings: ["fd 9 of process 1240: pipe:[79] leads outside the process tree"],
    processes: [processState(1234, 1, 3), processState(1240, 1234, 1), processState(1241, 1234, 2)],
    files: [
      { id: 1, kind: "reg", path: "/tmp/x", flags: 1089, pos: 12, stat: { dev: 2049, ino: 99, size: 12, mtime_ns: 1 } },
      { id: 2, kind: "dir", path: "/tmp", flags: 65536, pos: 0 },
      { id: 3, kind: "chr", path: "/dev/null", flags: 2, pos: 0, rdev: 259 },
      { id: 4, kind: "pipe", pipe_id: 77, flags: 0, external: false },
      { id: 8, kind: "pipe", pipe_id: 79, flags: 1, external: true },
      { id: 5, kind: "pipe", pipe_id: 77, flags: 1 },
      { id: 6, kind: "fifo", path: "/tmp/f", pipe_id: 78, flags: 0 },
      { id: 7, kind: "reg", path: "/var/log/big", flags: 1025, pos: U64_MAX },
    ],
    pipes: [
      { pipe_id: 77, data: Buffer.from("unread bytes\n").toString("base64"), size: 65536 },
      { pipe_id: 78, data: "", size: 4096 },
    ],
  };
}

function dumpDir(state: StateDocument): string {
  const dir = mkdtempSync(join(tmpdir(), "phaul-images-"));
  for (const p of state.processes) writeFileSync(join(dir, p.pages.file), Buffer.alloc(4096 * 37, 0xaa));
  writeImages(dir, state);
  return dir;
}

function assertImageError(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof PhaulError, `expected PhaulError, got ${e}`);
    assert.equal(e.code, "EIMAGE");
    assert.equal(e.exitCode, 3);
    assert.match(e.message, pattern);
    assert.ok(!e.message.includes("\n"), "message is one line");
    return true;
  });
}

test("state document round-trips through the images", () => {
  const state = sampleState();
  const dir = dumpDir(state);
  try {
    const files = readdirSync(dir).sort();
    assert.deepEqual(files, [
      "core-1234.img", "core-1240.img", "core-1241.img",
      "fdinfo-1234.img", "fdinfo-1240.img", "fdinfo-1241.img",
      "files.img", "inventory.img",
      "mm-1234.img", "mm-1240.img", "mm-1241.img",
      "pages-1234.img", "pages-1240.img", "pages-1241.img",
      "pstree.img",
    ]);
    // proto3 cannot tell a default (0, false, "", []) from an absent field;
    // the engine reads both the same way, so compare up to defaults.
    assert.deepStrictEqual(withoutDefaults(readImages(dir)), withoutDefaults(state));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

function withoutDefaults(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(withoutDefaults);
  if (v && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      if (x === 0 || x === false || x === "" || x === null || x === undefined || (Array.isArray(x) && x.length === 0)) continue;
      out[k] = withoutDefaults(x);
    }
    return out;
  }
  return v;
}

test("megabytes of bytes (a full socket queue, a pipe) pass the schema check and come back whole", () => {
  // A socket queue of a few MiB: the base64 check once overflowed the
  // regular expression engine's stack ("Maximum call stack size exceeded").
  const state = sampleState();
  const big = Buffer.alloc(6 << 20);
  for (let i = 0; i < big.length; i += 4) big.writeUInt32LE(i, i);
  state.pipes[0].data = big.toString("base64");
  const dir = dumpDir(state);
  try {
    assert.ok(Buffer.from(readImages(dir).pipes[0].data, "base64").equals(big));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const bad = sampleState();
  bad.pipes[0].data = "QUJD".repeat(1 << 20) + "Q";
  const badDir = mkdtempSync(join(tmpdir(), "phaul-images-"));
  for (const p of bad.processes) writeFileSync(join(badDir, p.pages.file), Buffer.alloc(4096 * 37, 0xaa));
  try {
    assertImageError(() => writeImages(badDir, bad), /pipes\[0\]\.data must be a base64 string/);
  } finally {
    rmSync(badDir, { recursive: true, force: true });
  }
});

test("64-bit values come back as numbers up to 2^53 and strings above", () => {
  const state = sampleState();
  delete state.warnings;                     // no warnings: none come back either
  const p = state.processes[0]!;
  p.mm.brk = "4362240";                      // small value sent as a string
  p.vmas[1]!.shmem_id = null as unknown as number; // null means absent
  p.threads[0]!.sigmask = 0;                 // signal sets always come back as strings
  state.processes[1]!.vmas[0]!.pgoff = 2 ** 53;   // the engine's number/string boundary
  state.processes[1]!.vmas[1]!.pgoff = "9007199254740993";
  const dir = dumpDir(state);
  try {
    const back = readImages(dir);
    const q = back.processes[0]!;
    assert.ok(!("warnings" in back));
    assert.equal(q.mm.brk, 4362240);
    assert.ok(!("shmem_id" in q.vmas[1]!));
    assert.equal(q.threads[0]!.sigmask, "0");
    assert.equal(q.rlimits[0]!.cur, U64_MAX);
    assert.equal(q.threads[0]!.regs.rax, "18446744073709551104");
    assert.equal(back.created_ns, "1700000000000000000");
    assert.equal(back.files.find((f) => f.id === 7)!.pos, U64_MAX);
    assert.equal(back.processes[1]!.vmas[0]!.pgoff, 2 ** 53);
    assert.equal(back.processes[1]!.vmas[1]!.pgoff, "9007199254740993");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("writeImages refuses a document that does not fit the schema", () => {
  const dir = mkdtempSync(join(tmpdir(), "phaul-images-"));
  try {
    const unknown = sampleState() as unknown as { processes: Record<string, unknown>[] };
    unknown.processes[0]!.mystery = 1;
    assertImageError(() => writeImages(dir, unknown as unknown as StateDocument), /processes\[0\]\.mystery is not part of the image schema/);
    const imprecise = sampleState();
    imprecise.processes[0]!.vmas[0]!.start = 2 ** 60;
    assertImageError(() => writeImages(dir, imprecise), /above 2\^53/);
    const noPages = sampleState();
    assertImageError(() => writeImages(dir, noPages), /page file pages-1234\.img of pid 1234 was not written/);
    const badFormat = { ...sampleState(), format: 2 };
    assertImageError(() => writeImages(dir, badFormat), /format 2/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("damaged dumps give one-line EIMAGE errors", () => {
  const state = sampleState();
  const fresh = () => dumpDir(state);
  const cases: [string, (dir: string) => void, RegExp][] = [
    ["missing image", (d) => unlinkSync(join(d, "mm-1240.img")), /mm-1240\.img is missing/],
    ["missing page file", (d) => unlinkSync(join(d, "pages-1241.img")), /pages-1241\.img is missing/],
    ["missing inventory", (d) => unlinkSync(join(d, "inventory.img")), /not a phaul dump/],
    ["truncated payload", (d) => {
      const f = join(d, "core-1234.img");
      const data = readFileSync(f);
      writeFileSync(f, data.subarray(0, data.length - 100));
    }, /core-1234\.img is truncated/],
    ["truncated header", (d) => writeFileSync(join(d, "pstree.img"), Buffer.from("PHAULIMG\x01")), /pstree\.img is truncated/],
    ["corrupt payload", (d) => {
      const f = join(d, "files.img");
      const data = readFileSync(f);
      data[data.length - 3] ^= 0x55;
      writeFileSync(f, data);
    }, /files\.img is corrupt/],
    ["bad magic", (d) => {
      const f = join(d, "fdinfo-1234.img");
      const data = readFileSync(f);
      data.write("NOTPHAUL", 0, "latin1");
      writeFileSync(f, data);
    }, /fdinfo-1234\.img is not a phaul image/],
    ["wrong image version", (d) => {
      const f = join(d, "mm-1234.img");
      const data = readFileSync(f);
      data.writeUInt32LE(7, 8);
      writeFileSync(f, data);
    }, /mm-1234\.img has image format version 7, this phaul reads version 1/],
    ["wrong kind", (d) => {
      writeFileSync(join(d, "core-1240.img"), readFileSync(join(d, "mm-1240.img")));
    }, /core-1240\.img holds a mm image where core was expected/],
  ];
  for (const [what, damage, pattern] of cases) {
    const dir = fresh();
    try {
      damage(dir);
      assertImageError(() => readImages(dir), pattern);
    } catch (e) {
      throw new Error(`${what}: ${(e as Error).message}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
});

test("a missing directory is an image error", () => {
  assertImageError(() => readImages("/nonexistent/phaul-dump"), /does not exist/);
});
