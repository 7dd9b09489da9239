/**
 * An open-loop load generator in the manner of wrk2: request i is due at
 * t0 + i/rate, whatever happened to earlier requests, and its latency is
 * measured from that due time (not from when it was actually sent), so a
 * stalled server cannot hide its delays (no coordinated omission).
 * autocannon's rate limit sends bursts, which measures its own bursts rather
 * than the server at a steady 1,000/s.
 *
 * It keeps a fixed pool of keep-alive connections opened before the clock
 * starts and writes pre-built request bytes on raw sockets: node:http's
 * client (an Agent that opens sockets on demand, a parser and objects per
 * request) cost the generator itself ~100 µs per request on the machine it
 * shares with the server, and its own pauses were counted as the server's.
 * A request due while every connection is busy waits for one, and that wait
 * is part of its latency, as it would be for a client with that many
 * connections.
 */
import { connect, type Socket } from 'node:net';

export interface PacedResult {
  sent: number;
  ok: number;
  failed: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
}

/** One HTTP/1.1 keep-alive connection that runs one request at a time. */
class Conn {
  private readonly socket: Socket;
  private buf: Buffer = Buffer.alloc(0);
  private done: ((status: number) => void) | undefined;
  /** The server closed it (an idle keep-alive timeout, an error). */
  closed = false;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('error', () => this.finish(0));
    socket.on('close', () => {
      this.closed = true;
      this.finish(0);
    });
  }

  static open(host: string, port: number): Promise<Conn> {
    return new Promise((resolve, reject) => {
      const s = connect({ host, port }, () => resolve(new Conn(s)));
      s.once('error', reject);
    });
  }

  /** Sends `request` and resolves with the response status (0: the connection failed). */
  send(request: Buffer): Promise<number> {
    return new Promise((resolve) => {
      this.done = resolve;
      this.socket.write(request);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private finish(status: number): void {
    const done = this.done;
    this.done = undefined;
    this.buf = Buffer.alloc(0);
    done?.(status);
  }

  /** Enough of HTTP/1.1 for these servers: a Content-Length body or a chunked one. */
  private onData(d: Buffer): void {
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    const end = this.buf.indexOf('\r\n\r\n');
    if (end < 0) return;
    const head = this.buf.toString('latin1', 0, end);
    const status = Number(head.slice(9, 12));
    const len = /\r\ncontent-length: *(\d+)/i.exec(head);
    const complete = len
      ? this.buf.length >= end + 4 + Number(len[1])
      : this.buf.lastIndexOf('0\r\n\r\n') === this.buf.length - 5 && this.buf.length > end + 4;
    if (complete) this.finish(status);
  }
}

export async function pacedLoad(opts: {
  url: string;
  path: string;
  headers: Record<string, string>;
  body: string;
  rate: number;
  seconds: number;
  /** Keep-alive connections (default 128). */
  connections?: number;
  /** Called once per request: its due time (epoch ms), latency from it (ms) and status (0: no answer). */
  record?: (dueEpochMs: number, ms: number, status: number) => void;
}): Promise<PacedResult> {
  const target = new URL(opts.path, opts.url);
  const headers = { host: target.host, ...opts.headers, 'content-length': String(Buffer.byteLength(opts.body)) };
  const request = Buffer.from(
    `POST ${target.pathname}${target.search} HTTP/1.1\r\n${Object.entries(headers)
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join('')}\r\n${opts.body}`,
  );
  const pool = await Promise.all(Array.from({ length: opts.connections ?? 128 }, () => Conn.open(target.hostname, Number(target.port))));
  const free = [...pool];
  const waiting: number[] = []; // due times of requests waiting for a connection
  const latencies: number[] = [];
  let ok = 0;
  let failed = 0;
  const total = Math.round(opts.rate * opts.seconds);
  const interval = 1000 / opts.rate;
  const t0 = performance.now() + 20;
  let finished = 0;
  let allDone: () => void = () => {};
  const over = new Promise<void>((r) => {
    allDone = r;
  });
  const host = target.hostname;
  const port = Number(target.port);
  const run = (conn: Conn, due: number): void => {
    // A connection the server closed while idle is replaced (the time that takes counts).
    const ready = conn.closed ? Conn.open(host, port) : Promise.resolve(conn);
    void ready
      .then((c) => {
        conn = c;
        return c.send(request);
      })
      .catch(() => 0) // could not reconnect: a failure, and the next request tries again
      .then((status) => {
        const ms = performance.now() - due;
        latencies.push(ms);
        opts.record?.(performance.timeOrigin + due, ms, status);
        if (status >= 200 && status < 300) ok += 1;
        else failed += 1;
        finished += 1;
        const next = waiting.shift();
        if (next !== undefined) run(conn, next);
        else free.push(conn);
        if (finished === total) allDone();
      });
  };
  // Timer-driven: each tick sends every request whose due time has passed, then
  // sleeps until the next one is due, so the event loop stays free for responses.
  await new Promise<void>((scheduled) => {
    let i = 0;
    const tick = () => {
      const now = performance.now();
      while (i < total && t0 + i * interval <= now) {
        const due = t0 + i * interval;
        const conn = free.shift(); // round robin: no connection idles long enough to be closed
        if (conn) run(conn, due);
        else waiting.push(due);
        i += 1;
      }
      if (i < total) setTimeout(tick, Math.max(0, t0 + i * interval - performance.now()));
      else scheduled();
    };
    setTimeout(tick, 20);
  });
  if (total > 0) await over;
  for (const c of pool) c.close();
  latencies.sort((a, b) => a - b);
  const pct = (p: number) => Math.round(latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))]! * 100) / 100;
  return { sent: total, ok, failed, p50Ms: pct(50), p90Ms: pct(90), p99Ms: pct(99), maxMs: pct(100) };
}
