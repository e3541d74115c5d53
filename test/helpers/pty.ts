// Drive an interactive program through a pseudo-terminal (python3's pty
// module, 120x40): write keystrokes, wait for text on the screen.
import { spawn, type ChildProcess } from 'node:child_process';
import { waitUntil } from './proc.js';

const DRIVER = `
import os, pty, sys, select, fcntl, termios, struct
pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 120, 0, 0))
    os.execvp(sys.argv[1], sys.argv[1:])
fds = [fd, 0]
while True:
    r, _, _ = select.select(fds, [], [])
    if fd in r:
        try:
            d = os.read(fd, 65536)
        except OSError:
            break
        if not d:
            break
        os.write(1, d)
    if 0 in r:
        d = os.read(0, 65536)
        if d:
            os.write(fd, d)
        else:
            fds = [fd]
_, st = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(st))
`;

export const KEY = { enter: '\r', up: '\x1b[A', down: '\x1b[B', ctrlC: '\x03' };

export class Terminal {
  raw = '';
  exit: number | null | undefined;
  readonly child: ChildProcess;

  constructor(argv: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) {
    this.child = spawn('python3', ['-c', DRIVER, ...argv], { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'inherit'] });
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => (this.raw += d));
    this.child.on('exit', (code) => (this.exit = code));
  }

  /** The output without ANSI escape sequences. */
  get text(): string {
    // eslint-disable-next-line no-control-regex
    return this.raw.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
  }

  write(keys: string): void {
    this.child.stdin!.write(keys);
  }

  /** Wait until `pattern` appears in the output after `from` (an offset into text); returns the offset after it. */
  async waitFor(pattern: RegExp | string, timeoutMs = 20_000, from = 0): Promise<number> {
    let end = -1;
    const find = () => {
      const t = this.text.slice(from);
      if (typeof pattern === 'string') {
        const i = t.indexOf(pattern);
        if (i >= 0) end = from + i + pattern.length;
      } else {
        const m = pattern.exec(t);
        if (m) end = from + m.index + m[0].length;
      }
      return end >= 0 || this.exit !== undefined;
    };
    await waitUntil(find, timeoutMs, 50);
    find();
    if (end < 0) throw new Error(`terminal: no ${pattern} within ${timeoutMs} ms (exit ${this.exit}); screen:\n${this.text.slice(-3000)}`);
    return end;
  }

  async waitExit(timeoutMs = 30_000): Promise<number | null | undefined> {
    await waitUntil(() => this.exit !== undefined, timeoutMs);
    return this.exit;
  }

  kill(): void {
    if (this.exit === undefined) this.child.kill('SIGKILL');
  }
}
