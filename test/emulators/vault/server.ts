import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createNetServer, connect, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { allowed } from './acl.ts';
import { renderEnvelope, type Operation, type Reply, type RequestContext, type Route } from './context.ts';
import type { TokenEntry, VaultState } from './state.ts';
import { invalidToken, multiError, permissionDenied, sealed, unsupportedOperation, unsupportedPath, VaultHttpError } from './util.ts';

const MAX_BODY = 32 * 1024 * 1024;

/** One request as seen by the emulator, for assertions in tests. */
export interface RequestLogEntry {
  method: string;
  path: string;
  namespace: string;
  status: number;
}

/** A fault to inject: the next `times` requests matching `path` (and `method`) answer `status` / `errors`. */
export interface Fault {
  path: string | RegExp;
  method?: string;
  status: number;
  errors: string[];
  times: number;
}

export interface Dispatcher {
  state: VaultState;
  routes: Route[];
  strictParams: boolean;
  log: RequestLogEntry[];
  /** Requests no route matched, or that crashed a handler: a test can assert this stays empty. */
  unhandled: string[];
  faults: Fault[];
  /** Requests whose effect happens at once but whose answer waits for `release()` (a slow network on the way back). */
  holds: Hold[];
}

/** Answers to matching requests held back: the upstream side effect is done, the caller does not know yet. */
export interface Hold {
  path: string | RegExp;
  times: number;
  /** How many answers are being held now. */
  waiting: number;
  release(): void;
  /** Resolves once `n` answers are held. */
  until(n: number): Promise<void>;
}

/** A hold for the next `times` requests matching `path`. */
export function makeHold(path: string | RegExp, times: number): Hold & { park(): Promise<void> } {
  let open: (() => void)[] = [];
  let waiters: { n: number; resolve: () => void }[] = [];
  const h = {
    path,
    times,
    waiting: 0,
    release() {
      const o = open;
      open = [];
      h.waiting = 0;
      for (const r of o) r();
    },
    until(n: number) {
      return h.waiting >= n ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ n, resolve }));
    },
    park() {
      h.waiting += 1;
      const p = new Promise<void>((resolve) => open.push(resolve));
      const ready = waiters.filter((w) => h.waiting >= w.n);
      waiters = waiters.filter((w) => h.waiting < w.n);
      for (const w of ready) w.resolve();
      return p;
    },
  };
  return h;
}

/** Resolves `X-Vault-Namespace` + path into (namespace, relative path) against the known namespaces. */
function resolveNamespace(state: VaultState, header: string | undefined, path: string): { ns: string; rel: string } {
  const full = [header?.replace(/^\/+|\/+$/g, ''), path].filter(Boolean).join('/');
  const known = [...state.spaces.keys()].filter(Boolean).sort((a, b) => b.length - a.length);
  for (const ns of known) if (full.startsWith(`${ns}/`)) return { ns, rel: full.slice(ns.length + 1) };
  return { ns: '', rel: full };
}

function operationOf(method: string, query: URLSearchParams): Operation | undefined {
  if (method === 'LIST' || (method === 'GET' && ['true', '1'].includes(query.get('list') ?? ''))) return 'list';
  if (method === 'GET' || method === 'HEAD') return 'read';
  if (method === 'POST' || method === 'PUT') return 'write';
  if (method === 'DELETE') return 'delete';
  return undefined;
}

function tokenOf(req: IncomingMessage): string | undefined {
  const x = req.headers['x-vault-token'];
  if (typeof x === 'string' && x) return x;
  const auth = req.headers.authorization;
  if (auth && /^Bearer /i.test(auth)) return auth.slice(7).trim();
  return undefined;
}

async function readBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_BODY) throw new VaultHttpError(413, ['request body too large']);
    chunks.push(c as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text.trim()) return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new VaultHttpError(400, [`failed to parse JSON input: ${(err as Error).message}`]);
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed))
    throw new VaultHttpError(400, ['failed to parse JSON input: body must be a JSON object']);
  return parsed as Record<string, unknown>;
}

/** `rel` (a path in namespace `ns`) as seen from namespace `from`, `ns` itself or a parent of it. */
function pathFrom(from: string, ns: string, rel: string): string {
  const below = from === '' ? ns : ns.slice(from.length + 1);
  return below ? `${below}/${rel}` : rel;
}

/** The token a request presents, if it is live in this namespace or a parent of it. */
function authenticate(state: VaultState, raw: string | undefined, ns: string): TokenEntry {
  if (!raw) throw permissionDenied();
  const t = state.tokens.get(raw);
  if (!t || !(t.namespace === '' || t.namespace === ns || ns.startsWith(`${t.namespace}/`))) throw invalidToken();
  return t;
}

function send(res: ServerResponse, status: number, body: unknown, head: boolean): void {
  if (status === 204) {
    res.writeHead(204).end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), 'Cache-Control': 'no-store' });
  res.end(head ? undefined : text);
}

/** Handles one HTTP request end to end; never throws. */
export async function dispatch(d: Dispatcher, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://emulator');
  const method = (req.method ?? 'GET').toUpperCase();
  let logged = { method, path: url.pathname, namespace: '', status: 0 };
  try {
    d.state.sweep();
    if (!url.pathname.startsWith('/v1/')) throw new VaultHttpError(404, []);
    const body = await readBody(req);
    const nsHeader = req.headers['x-vault-namespace'];
    const { ns, rel } = resolveNamespace(
      d.state,
      typeof nsHeader === 'string' ? nsHeader : undefined,
      decodeURIComponent(url.pathname.slice(4)),
    );
    logged = { ...logged, path: rel, namespace: ns };
    if (d.state.sealed && rel !== 'sys/health' && rel !== 'sys/seal-status') throw sealed();

    const fault = d.faults.find(
      (f) =>
        f.times > 0 && (f.method === undefined || f.method === method) && (typeof f.path === 'string' ? f.path === rel : f.path.test(rel)),
    );
    if (fault) {
      fault.times--;
      throw new VaultHttpError(fault.status, fault.errors);
    }

    const op = operationOf(method, url.searchParams);
    let match: { route: Route; params: Record<string, string> } | undefined;
    for (const route of d.routes) {
      const m = route.pattern.exec(rel);
      if (m) {
        match = { route, params: { ...m.groups } };
        break;
      }
    }
    // Vault checks the token before it looks the path up, so a bad token is a 403 even on unknown paths.
    const token = match?.route.unauthenticated ? undefined : authenticate(d.state, tokenOf(req), ns);
    if (!match) {
      d.unhandled.push(`${method} ${rel}`);
      throw unsupportedPath();
    }
    const handler = op && match.route.ops[op];
    if (!handler) {
      d.unhandled.push(`${method} ${rel} (operation ${op ?? method} not supported)`);
      throw unsupportedOperation();
    }
    // A token's policies live in its own namespace: acting in a child namespace, they name the path with the
    // child's path in front (a root-namespace policy grants `team-a/auth/token/revoke-accessor`).
    if (token && !allowed(d.state, token, pathFrom(token.namespace, ns, rel))) throw permissionDenied();

    // A use-limited token is spent by this request; at zero it is revoked once the request is done.
    let spent = false;
    if (token && token.numUses > 0) spent = --token.numUses === 0;
    const ctx: RequestContext = {
      state: d.state,
      ns,
      path: rel,
      op,
      params: match.params,
      query: url.searchParams,
      body: op === 'read' ? { ...Object.fromEntries([...url.searchParams].filter(([k]) => k !== 'list')), ...body } : body,
      strictParams: d.strictParams,
      warnings: [],
      ...(token ? { token } : {}),
    };
    // sys/health and sys/seal-status take their options from the query only.
    if (match.route.unauthenticated && rel.startsWith('sys/')) ctx.body = {};
    let reply: Reply;
    try {
      reply = handler(ctx);
    } finally {
      if (spent && token) d.state.revokeToken(token.id);
    }
    logged.status = reply.status;
    const hold = d.holds.find((h) => h.times > 0 && (typeof h.path === 'string' ? h.path === rel : h.path.test(rel))) as
      | ReturnType<typeof makeHold>
      | undefined;
    if (hold) {
      hold.times -= 1;
      await hold.park();
    }
    if ('raw' in reply) send(res, reply.status, reply.raw, method === 'HEAD');
    else if ('envelope' in reply)
      send(res, reply.status, renderEnvelope(reply.envelope, ctx.warnings, reply.sys === true), method === 'HEAD');
    else send(res, 204, undefined, false);
  } catch (err) {
    const e = err instanceof VaultHttpError ? err : new VaultHttpError(500, [multiError(`internal error: ${(err as Error).message}`)]);
    if (!(err instanceof VaultHttpError)) d.unhandled.push(`${method} ${url.pathname}: ${(err as Error).stack ?? String(err)}`);
    logged.status = e.status;
    send(res, e.status, { errors: e.errors }, method === 'HEAD');
  } finally {
    d.log.push(logged);
  }
}

/**
 * The emulator's network front. Node's HTTP parser rejects the `LIST` verb
 * that Vault clients use, so a TCP front rewrites `LIST /path` request lines
 * into `GET /path?list=true` (identical in Vault) before they reach the HTTP
 * server. The front is also what "down" mode closes: connections are refused
 * and open ones reset, like a crashed server.
 */
export class Front {
  private readonly http: Server;
  private net: NetServer | undefined;
  private readonly sockets = new Set<Socket>();
  private innerPort = 0;
  port = 0;

  constructor(handler: (req: IncomingMessage, res: ServerResponse) => void) {
    this.http = createHttpServer({ keepAliveTimeout: 1000 }, handler);
  }

  async start(port = 0): Promise<void> {
    await new Promise<void>((resolve) => this.http.listen(0, '127.0.0.1', resolve));
    this.innerPort = (this.http.address() as AddressInfo).port;
    await this.up(port);
  }

  /** Starts accepting connections on `port` (0 = pick one; later calls reuse it). */
  async up(port = this.port): Promise<void> {
    if (this.net) return;
    const server = createNetServer((client) => this.pipe(client));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    this.net = server;
    this.port = (server.address() as AddressInfo).port;
  }

  /** Stops accepting connections and resets the open ones. */
  async down(): Promise<void> {
    const server = this.net;
    this.net = undefined;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  async stop(): Promise<void> {
    await this.down();
    this.http.closeAllConnections();
    await new Promise<void>((resolve) => this.http.close(() => resolve()));
  }

  private pipe(client: Socket): void {
    const upstream = connect(this.innerPort, '127.0.0.1');
    this.sockets.add(client);
    this.sockets.add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.on('data', (chunk: Buffer) => upstream.write(rewriteList(chunk)));
    upstream.pipe(client);
  }
}

/** `LIST /v1/x?y HTTP/1.1` at the start of a request line → `GET /v1/x?y&list=true HTTP/1.1`. */
export function rewriteList(chunk: Buffer): Buffer {
  const text = chunk.toString('latin1');
  if (!/(^|\r\n)LIST /.test(text)) return chunk;
  return Buffer.from(
    text.replace(
      /(^|\r\n)LIST (\S+) HTTP\//g,
      (_m, lead: string, target: string) => `${lead}GET ${target}${target.includes('?') ? '&' : '?'}list=true HTTP/`,
    ),
    'latin1',
  );
}
