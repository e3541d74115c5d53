// A TCP relay between the two agents of a test, to watch, damage or cut
// what one sends the other (the page stream, the control channel).
import net from 'node:net';

/** Sees each source→destination chunk (and its offset in the stream): pass it (maybe altered), cut the connection, or pass it as the last one. */
export type Tap = (chunk: Buffer, offset: number) => Buffer | 'cut' | { last: Buffer };

/** TCP relay listenHost:listenPort → 127.0.0.1:targetPort, source→destination bytes through `tap`. */
export function relay(listenHost: string, listenPort: number, targetPort: number, tap?: Tap): Promise<net.Server> {
  const server = net.createServer((down) => {
    const up = net.connect({ host: '127.0.0.1', port: targetPort });
    let offset = 0;
    const kill = () => { down.destroy(); up.destroy(); };
    down.on('error', kill); up.on('error', kill); down.on('close', kill); up.on('close', kill);
    down.on('data', (d: Buffer) => {
      const out = tap ? tap(d, offset) : d;
      offset += d.length;
      if (out === 'cut') return kill();
      if (!Buffer.isBuffer(out)) {
        // Deliver this chunk, hear nothing more from the destination, then cut.
        up.unpipe(down);
        up.write(out.last, () => setTimeout(kill, 300));
        return;
      }
      up.write(out);
    });
    up.pipe(down);
  });
  return new Promise((resolve) => server.listen(listenPort, listenHost, () => resolve(server)));
}
