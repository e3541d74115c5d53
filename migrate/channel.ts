// One control connection: typed send/receive over a ws WebSocket with
// timeouts, a keep-alive, and one terminal error shared by every waiter.

import WebSocket from "ws";
import { PhaulError } from "../src/errors.js";
import { decode, encode, type Message, type MessageType } from "./protocol.js";

type MsgOf<T extends MessageType> = Extract<Message, { type: T }>;

interface Waiter {
  resolve: (m: Message) => void;
  reject: (e: PhaulError) => void;
}

export const PING_INTERVAL_MS = 5_000;
/** No pong for this long: the peer or the network is gone. */
export const PEER_TIMEOUT_MS = 20_000;

export class Channel {
  private inbox: Message[] = [];
  private waiters: Waiter[] = [];
  private error: PhaulError | undefined;
  private lastPong = Date.now();
  private pinger: NodeJS.Timeout;
  private closeListeners: ((e: PhaulError) => void)[] = [];

  constructor(readonly ws: WebSocket, readonly peer: string) {
    ws.binaryType = "nodebuffer";
    ws.on("message", (data, isBinary) => {
      if (this.error) return;
      if (!isBinary) return this.fail(new PhaulError("EPROTO", `protocol error: text frame from ${peer}`), 1003);
      let msg: Message;
      try {
        msg = decode(data as Buffer);
      } catch (e) {
        return this.fail(e as PhaulError, 1002);
      }
      const w = this.waiters.shift();
      if (w) w.resolve(msg);
      else this.inbox.push(msg);
    });
    ws.on("pong", () => {
      this.lastPong = Date.now();
    });
    ws.on("close", (code, reason) => {
      const why = reason.length ? `: ${reason.toString("utf8").slice(0, 200)}` : code === 1006 ? " abruptly" : "";
      this.fail(new PhaulError("ECONNRESET", `${peer} closed the control connection${why}`));
    });
    ws.on("error", (e: NodeJS.ErrnoException) => {
      this.fail(new PhaulError(e.code && /^E[A-Z]+$/.test(e.code) ? e.code : "ECONNRESET", `control connection to ${peer}: ${e.message}`));
    });
    this.pinger = setInterval(() => {
      if (Date.now() - this.lastPong > PEER_TIMEOUT_MS) {
        this.fail(new PhaulError("ETIMEDOUT", `${peer} stopped answering (no keep-alive for ${PEER_TIMEOUT_MS / 1000} s)`));
        return;
      }
      try {
        ws.ping();
      } catch {
        /* the close event reports it */
      }
    }, PING_INTERVAL_MS);
    this.pinger.unref();
  }

  get failed(): PhaulError | undefined {
    return this.error;
  }

  /** Called once with the error that ended the channel (close, protocol error, local close()). */
  onClose(fn: (e: PhaulError) => void): void {
    if (this.error) fn(this.error);
    else this.closeListeners.push(fn);
  }

  private fail(e: PhaulError, wsCode?: number): void {
    if (this.error) return;
    this.error = e;
    clearInterval(this.pinger);
    for (const w of this.waiters.splice(0)) w.reject(e);
    for (const l of this.closeListeners.splice(0)) l(e);
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) {
      if (wsCode !== undefined && this.ws.readyState === WebSocket.OPEN) this.ws.close(wsCode, closeReason(e.message));
      else this.ws.terminate();
    }
  }

  /** Send one message; resolves when ws has handed it to the kernel. */
  send(msg: Message): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    if (this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new PhaulError("ECONNRESET", `${this.peer} closed the control connection`));
    }
    const data = encode(msg);
    return new Promise((resolve, reject) => {
      this.ws.send(data, { binary: true }, (err) => {
        if (err) reject(this.error ?? new PhaulError("ECONNRESET", `cannot send to ${this.peer}: ${err.message}`));
        else resolve();
      });
    });
  }

  /**
   * Next message, which must be one of `types`. A `failed` message from the
   * peer becomes a PhaulError with the peer's code; any other unexpected
   * type is a protocol error that ends the channel.
   */
  async receive<T extends MessageType>(types: readonly T[], timeoutMs: number, what: string): Promise<MsgOf<T>> {
    const msg = await this.next(timeoutMs, what);
    if (msg.type === "failed" && !types.includes("failed" as T)) {
      const e = new PhaulError(msg.code, `${this.peer} reported: ${msg.message} (${msg.code})`);
      this.fail(e);
      throw e;
    }
    if (!types.includes(msg.type as T)) {
      const e = new PhaulError("EPROTO", `protocol error: ${this.peer} sent ${msg.type} while ${what} was expected`);
      this.fail(e, 1002);
      throw e;
    }
    return msg as MsgOf<T>;
  }

  private next(timeoutMs: number, what: string): Promise<Message> {
    const queued = this.inbox.shift();
    if (queued) return Promise.resolve(queued);
    if (this.error) return Promise.reject(this.error);
    return new Promise<Message>((resolve, reject) => {
      const w: Waiter = {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        const e = new PhaulError("ETIMEDOUT", `${this.peer} did not send ${what} within ${Math.round(timeoutMs / 1000)} s`);
        this.fail(e);
        reject(e);
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  /** Report a failure to the peer (best effort) and close. */
  async abort(e: PhaulError): Promise<void> {
    if (!this.error && this.ws.readyState === WebSocket.OPEN) {
      await Promise.race([
        this.send({ type: "failed", code: e.code, message: e.message.slice(0, 2000) }).catch(() => undefined),
        new Promise((r) => setTimeout(r, 1000)),
      ]);
    }
    this.close(e.message);
  }

  /** Close normally (idempotent). */
  close(reason = "done"): void {
    if (!this.error) this.fail(new PhaulError("ECANCELED", `control connection closed (${reason})`));
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000, closeReason(reason));
    else if (this.ws.readyState === WebSocket.CONNECTING) this.ws.terminate();
  }
}

/** Open a control connection to ws://host:port/ with a connect timeout. */
export function connect(host: string, port: number, timeoutMs = 10_000, tls?: { cert: Buffer; key: Buffer; ca: Buffer }): Promise<Channel> {
  const peer = `destination ${formatAddress(host, port)}`;
  return new Promise((resolve, reject) => {
    const scheme = tls ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${formatAddress(host, port)}/phaul`, {
      maxPayload: 64 << 20, handshakeTimeout: timeoutMs, perMessageDeflate: false,
      ...(tls ? { cert: tls.cert, key: tls.key, ca: tls.ca, rejectUnauthorized: true, minVersion: "TLSv1.2" as const } : {}),
    });
    const onError = (e: NodeJS.ErrnoException) => {
      ws.removeAllListeners();
      ws.on("error", () => undefined);
      ws.terminate();
      const code = e.code && /^E[A-Z]+$/.test(e.code) ? e.code : "ECONNREFUSED";
      const why = code === "ECONNREFUSED" ? "connection refused (is `phaul serve` running there?)"
        : code === "EHOSTUNREACH" || code === "ENETUNREACH" ? "host unreachable"
        : code === "ETIMEDOUT" ? "timed out" : e.message;
      reject(new PhaulError(code, `cannot connect to ${peer}: ${why}`));
    };
    ws.once("error", onError);
    ws.once("unexpected-response", (_req, res) => {
      onError(Object.assign(new Error(`not a phaul agent (HTTP ${res.statusCode})`), { code: "EPROTO" }));
    });
    ws.once("open", () => {
      ws.off("error", onError);
      resolve(new Channel(ws, peer));
    });
  });
}

/** A WebSocket close reason: at most 123 bytes of UTF-8 (ws throws beyond), cut on a character boundary. */
export function closeReason(text: string): string {
  let out = text.slice(0, 123);
  while (Buffer.byteLength(out, "utf8") > 123) out = out.slice(0, -1);
  return out;
}

export function formatAddress(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Parse HOST:PORT ([v6]:PORT too); port 0 allowed only when allowZero. */
export function parseAddress(text: string, what: string, allowZero = false): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:\s]+):(\d+)$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !Number.isInteger(port) || port > 65535 || (port === 0 && !allowZero)) {
    throw new PhaulError("EUSAGE", `${what} must be HOST:PORT, got ${JSON.stringify(text)}`);
  }
  return { host: m[1]!, port };
}
