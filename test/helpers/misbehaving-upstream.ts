import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/** How a misbehaving upstream answers one request: it owns `res` (and may never end it). */
export type Misbehaviour = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void;

/** Which requests misbehave: by path (Vault) or by what the body says (AWS's `Action=...`). */
export type Match = (req: IncomingMessage, body: string) => boolean;

/**
 * An HTTP front for a strict emulator (Vault, AWS): every request is forwarded to `target` as it came (headers,
 * Host and SigV4 signature included), except those a rule matches, which the rule's misbehaviour answers instead.
 * `forwardThen` lets a rule send the request on first (the upstream did the work) and then misbehave. `close`
 * destroys every socket it holds open, so a hang never outlives the test.
 */
export async function misbehavingUpstream(target: string) {
  const rules: { match: Match; act: Misbehaviour; forwardFirst: boolean }[] = [];
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  let matched = 0;
  const forward = (req: IncomingMessage, body: Buffer) =>
    new Promise<{ status: number; headers: IncomingMessage['headers']; body: Buffer }>((done, fail) => {
      const up = request(new URL(req.url!, target), { method: req.method, headers: req.headers }, (r) => {
        const out: Buffer[] = [];
        r.on('data', (c: Buffer) => out.push(c));
        r.on('end', () => done({ status: r.statusCode!, headers: r.headers, body: Buffer.concat(out) }));
        r.on('error', fail);
      });
      up.on('error', fail);
      up.end(body);
    });
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const rule = rules.find((r) => r.match(req, body.toString('utf8')));
      if (rule) {
        matched++;
        if (!rule.forwardFirst) return rule.act(req, res, body);
        void forward(req, body).then(
          () => rule.act(req, res, body),
          () => res.destroy(),
        );
        return;
      }
      forward(req, body).then(
        (r) => {
          if (res.destroyed) return;
          res.writeHead(r.status, r.headers);
          res.end(r.body);
        },
        () => res.destroy(),
      );
    });
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    /** How many requests a rule answered. */
    get matched() {
      return matched;
    },
    /** Requests matching `match` are answered by `act`; with `forwardFirst`, only after the upstream did them. */
    on(match: Match, act: Misbehaviour, opts: { forwardFirst?: boolean } = {}) {
      rules.push({ match, act, forwardFirst: opts.forwardFirst ?? false });
    },
    clear() {
      rules.length = 0;
    },
    /** A timer that dies with the server (a drip that must not outlive the test). */
    every(ms: number, fn: () => void): NodeJS.Timeout {
      const t = setInterval(fn, ms);
      timers.add(t);
      return t;
    },
    async close() {
      for (const t of timers) clearInterval(t);
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
export type MisbehavingUpstream = Awaited<ReturnType<typeof misbehavingUpstream>>;

/** Headers sent, then a body that never comes. */
export const stallBody =
  (contentType: string, start: string): Misbehaviour =>
  (_req, res) => {
    res.writeHead(200, { 'content-type': contentType });
    res.write(start);
  };

/** A body of `mb` MiB of spaces (valid whitespace before JSON or XML), sent as fast as the client reads it. */
export const hugeBody =
  (contentType: string, mb: number, status = 200): Misbehaviour =>
  (_req, res) => {
    res.writeHead(status, { 'content-type': contentType });
    const chunk = Buffer.alloc(1 << 20, 0x20);
    let sent = 0;
    const write = () => {
      while (sent < mb) {
        sent++;
        if (!res.write(chunk)) return void res.once('drain', write);
      }
      res.end(contentType.includes('json') ? '{}' : '<x/>');
    };
    write();
  };
