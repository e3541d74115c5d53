// TLS for the page channel. The engines speak the page stream over plain
// TCP (they have no TLS of their own, and this kernel has no kernel TLS), so
// with --tls-* each agent puts a TLS hop in front of its engine on its own
// host: the destination accepts TLS (client certificate required, from the
// pinned CA) on the public page port and relays the clear stream to its
// native listener on 127.0.0.1; the source's engine dials a one-shot relay
// on 127.0.0.1 that carries its stream to the destination over TLS (server
// certificate checked against the CA and the address). Bytes flow through
// these relays as Node buffers with backpressure: nothing is held beyond the
// socket buffers, whatever the size of the migration.

import net from "node:net";
import tls from "node:tls";
import { PhaulError } from "../src/errors.js";
import type { TlsMaterial } from "../migrate/auth.js";

const HANDSHAKE_TIMEOUT_MS = 10_000;

/** Join two sockets both ways; either one ending or failing ends both. */
function splice(a: net.Socket, b: net.Socket): void {
  const end = () => {
    a.destroy();
    b.destroy();
  };
  a.on("error", end);
  b.on("error", end);
  a.on("close", end);
  b.on("close", end);
  a.pipe(b);
  b.pipe(a);
}

export interface TlsFront {
  port: number;
  close(): Promise<void>;
}

/** Destination: TLS on host:port, each authenticated connection relayed to 127.0.0.1:nativePort. */
export async function tlsPageFront(host: string, port: number, nativePort: number, material: TlsMaterial): Promise<TlsFront> {
  const server = tls.createServer({
    cert: material.cert, key: material.key, ca: material.ca,
    requestCert: true, rejectUnauthorized: true, minVersion: "TLSv1.2",
    handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
  }, (clear) => {
    clear.setNoDelay(true);
    const inner = net.connect({ host: "127.0.0.1", port: nativePort, noDelay: true });
    splice(clear, inner);
  });
  server.on("tlsClientError", () => undefined);
  server.on("error", () => undefined);
  await new Promise<void>((res, rej) => {
    const onError = (e: NodeJS.ErrnoException) =>
      rej(new PhaulError(e.code === "EADDRINUSE" ? "EUSAGE" : e.code ?? "EFAILED", `cannot listen for pages on ${host}:${port}: ${e.message}`));
    server.once("error", onError);
    server.listen(port, host, () => {
      server.off("error", onError);
      res();
    });
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => new Promise<void>((res) => server.close(() => res())),
  };
}

export interface TlsDialer {
  /** Where the engine connects: 127.0.0.1:PORT. */
  address: string;
  /** Why the TLS connection failed, if it did (the engine only sees its stream close). */
  failure(): string | undefined;
  close(): void;
}

/** Source: a one-shot 127.0.0.1 listener whose connection is carried to host:port over TLS. */
export async function tlsPageDialer(host: string, port: number, material: TlsMaterial): Promise<TlsDialer> {
  const server = net.createServer({ noDelay: true });
  server.on("error", () => undefined);
  server.maxConnections = 1;
  let failure: string | undefined;
  server.once("connection", (local) => {
    server.close(); // the engine dials once; nobody else gets in
    local.pause();
    const remote = tls.connect({
      host, port, cert: material.cert, key: material.key, ca: material.ca,
      rejectUnauthorized: true, minVersion: "TLSv1.2",
      ...(net.isIP(host) ? {} : { servername: host }),
    });
    remote.setNoDelay(true);
    remote.setTimeout(HANDSHAKE_TIMEOUT_MS, () => remote.destroy(new Error("TLS handshake timed out")));
    remote.once("secureConnect", () => {
      remote.setTimeout(0);
      splice(local, remote);
      local.resume();
    });
    remote.once("error", (e) => {
      failure ??= `TLS page connection to ${host}:${port} failed: ${e.message}`;
      local.destroy();
    });
  });
  await new Promise<void>((res) => server.listen(0, "127.0.0.1", () => res()));
  return {
    address: `127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    failure: () => failure,
    close: () => server.close(),
  };
}
