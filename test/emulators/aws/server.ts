import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { Account, type AccessKey, type Decision, type Session } from './account.ts';
import type { Handler } from './action.ts';
import { AwsError } from './errors.ts';
import { iamHandlers } from './iam.ts';
import { parseSigV4, verifySigV4 } from './sigv4.ts';
import { stsHandlers } from './sts.ts';
import { errorXml, IAM_NS, STS_NS, successXml } from './xml.ts';

/** The two awsQuery services the emulator speaks, told apart by `Version`. */
const SERVICES: Record<string, { name: 'sts' | 'iam'; ns: string; handlers: Record<string, Handler> }> = {
  '2011-06-15': { name: 'sts', ns: STS_NS, handlers: stsHandlers },
  '2010-05-08': { name: 'iam', ns: IAM_NS, handlers: iamHandlers },
};

export interface AwsEmulatorOptions {
  accountId?: string;
  /** Packed-size limit in bytes for session policy + tags (default 2048). */
  packedPolicyLimit?: number;
}

/** One request as the emulator saw it (parameters carry no secrets; responses are not kept). */
export interface RecordedRequest {
  service: 'sts' | 'iam' | 'unknown';
  action: string;
  params: Record<string, string>;
  accessKeyId: string | undefined;
  status: number;
  code: string | undefined;
}

interface Fault {
  remaining: number;
  action: string | undefined;
  status: number;
  code: string;
  message: string;
}

/** A user created by the test, with its first access key. */
export interface EmulatedUser {
  userName: string;
  arn: string;
  accessKeyId: string;
  secretAccessKey: string;
}

export interface AwsEmulator {
  /** Base URL (`http://127.0.0.1:<port>`), for both STS and IAM clients' `endpoint`. */
  url: string;
  accountId: string;
  stop(): Promise<void>;
  /** The next `n` requests (of `action`, if given) answer 400 Throttling. */
  setThrottle(n: number, action?: string): void;
  /** The next `n` requests (of `action`, if given) answer 500 InternalFailure (or the given code/status). */
  failNext(n: number, opts?: { action?: string; status?: number; code?: string }): void;
  /** While down, every connection is reset without a response. */
  setDown(down?: boolean): void;
  /**
   * The next request of `action` is carried out, and its answer held back for `ms` (a slow or lost
   * answer: the side effect happened, the caller does not know it yet; a test can kill the caller meanwhile).
   * `lose`: then the connection is reset instead of answered (the caller never learns the outcome).
   */
  holdAnswer(action: string, ms: number, opts?: { lose?: boolean }): void;
  /**
   * The next request of `action` is held BEFORE it is carried out (stuck on its way to IAM: its caller
   * may time out, retry and go on while it has still to land) until `release()`; `landed` resolves once
   * it has been carried out; `arrived` once it is being held (its caller is waiting on it). Its answer goes
   * to a caller that may be long gone.
   */
  holdRequest(action: string): { release(): void; arrived: Promise<void>; landed: Promise<void> };
  /** A newly created access key answers InvalidClientTokenId for its first `calls` requests (IAM eventual consistency). */
  setKeyPropagationDelay(calls: number): void;
  createRole(
    name: string,
    opts?: { maxSessionDuration?: number; trust?: string[]; externalId?: string; path?: string },
  ): { roleName: string; roleId: string; arn: string };
  /** Deletes a role (its inline policies with it; IAM refuses its sessions from then on). */
  deleteRole(name: string): void;
  createUser(name: string): EmulatedUser;
  /** An inline policy of a role, parsed; undefined when absent. */
  rolePolicy(roleName: string, policyName: string): unknown;
  rolePolicyNames(roleName: string): string[];
  accessKeys(userName: string): Pick<AccessKey, 'accessKeyId' | 'status'>[];
  /** Sessions issued by AssumeRole, newest last. */
  sessions(): Session[];
  /** How IAM would judge `action` on `resource` for a session (session policy ∩ role denies). */
  evaluate(accessKeyId: string, action: string, resource: string): Decision;
  requests(action?: string): RecordedRequest[];
  /** Emulator time (sessions expire by it); starts at wall-clock time. */
  now(): number;
  advanceTime(ms: number): void;
  /**
   * Lets principals of this account assume roles of `other`'s (cross-account AssumeRole, as STS is global):
   * the session is `other`'s (its `evaluate` judges it), while IAM calls signed here still act in this account.
   */
  reachAccount(other: AwsEmulator): void;
}

/** The account behind each emulator (for `reachAccount`). */
const accountOf = new WeakMap<AwsEmulator, Account>();

const MAX_BODY = 1_048_576;

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) reject(new AwsError('RequestEntityTooLarge', 413, 'Request body too large.'));
      else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/**
 * Starts a strict STS + IAM emulator (awsQuery over HTTP) on a random
 * loopback port. Requests must be SigV4-signed by a known key (verified for
 * real); anything the emulator does not implement answers loudly.
 */
export async function startAwsEmulator(opts: AwsEmulatorOptions = {}): Promise<AwsEmulator> {
  let offset = 0;
  // AWS keeps its own time: the emulator's clock does not follow the process's Date.now (which a test may skew), but
  // it is the true time, as AWS's is: `new Date()` reads the system's wall clock without going through `Date.now`.
  // Anchored on the monotonic clock instead (performance.timeOrigin, taken when the jest worker started), it kept
  // the time of the worker's start plus elapsed time: a wall clock set forward by NTP during a long run left
  // "AWS" seconds behind the broker's clock (Redis's TIME, the same wall clock), and a session issued 3 s after a
  // kill switch fell before its cut-off (test/revocation/kill-lost-job.test.ts, CI 2026-12-03).
  // biome-ignore lint/complexity/useDateNow: Date.now is what tests skew; new Date() reads the wall clock without it.
  const account = new Account(opts.accountId ?? '123456789012', () => new Date().getTime() + offset);
  const packedPolicyLimit = opts.packedPolicyLimit ?? 2048;
  const faults: Fault[] = [];
  const log: RecordedRequest[] = [];
  let down = false;
  let propagationDelay = 0;
  const holds: { action: string; ms: number; lose: boolean }[] = [];
  const stuck: { action: string; gate: Promise<void>; arrived: () => void; landed: () => void }[] = [];
  const sockets = new Set<Socket>();
  const peers = new Map<string, Account>();

  const takeFault = (action: string): Fault | undefined => {
    const f = faults.find((x) => x.remaining > 0 && (x.action === undefined || x.action === action));
    if (f) f.remaining--;
    return f;
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const requestId = randomUUID();
    const entry: RecordedRequest = { service: 'unknown', action: '', params: {}, accessKeyId: undefined, status: 200, code: undefined };
    let ns = STS_NS;
    const send = (status: number, xml: string) => {
      entry.status = status;
      log.push(entry);
      // SDKs correct their signing clock from Date; it must be the clock the signature window is checked against (sigv4.ts).
      res.writeHead(status, { 'Content-Type': 'text/xml', 'x-amzn-RequestId': requestId, Date: new Date(Date.now()).toUTCString() });
      res.end(xml);
    };
    try {
      const url = new URL(req.url ?? '/', 'http://emulator');
      if (url.pathname !== '/') {
        entry.status = 404;
        log.push(entry);
        res.writeHead(404, { 'x-amzn-RequestId': requestId }).end();
        return;
      }
      if (req.method !== 'POST') throw new AwsError('InvalidAction', 400, `Emulator: only POST is implemented, got ${req.method}.`);
      const type = String(req.headers['content-type'] ?? '')
        .split(';')[0]!
        .trim()
        .toLowerCase();
      if (type !== 'application/x-www-form-urlencoded')
        throw new AwsError('InvalidAction', 400, `Emulator: expected an application/x-www-form-urlencoded body, got "${type}".`);
      const body = await readBody(req);
      const params: Record<string, string> = {};
      for (const [k, v] of new URLSearchParams(body.toString('utf8'))) {
        if (k in params) throw new AwsError('InvalidParameter', 400, `Emulator: parameter ${k} given twice.`);
        params[k] = v;
      }
      entry.params = params;
      entry.action = params.Action ?? '';
      if (!params.Action) throw new AwsError('MissingAction', 400, 'Missing Action');
      if (!params.Version) throw new AwsError('MissingParameter', 400, 'The request must contain the parameter Version');
      const service = SERVICES[params.Version];
      if (!service) throw new AwsError('NoSuchVersion', 400, `The requested version (${params.Version}) of service is not available.`);
      ns = service.ns;
      entry.service = service.name;
      const handler = Object.hasOwn(service.handlers, params.Action) ? service.handlers[params.Action] : undefined;
      if (!handler) throw new AwsError('InvalidAction', 400, `Could not find operation ${params.Action} for version ${params.Version}`);

      const fault = takeFault(params.Action);
      if (fault) throw new AwsError(fault.code, fault.status, fault.message);

      const auth = parseSigV4(req.headers.authorization);
      entry.accessKeyId = auth.accessKeyId;
      if (auth.service !== service.name)
        throw new AwsError('SignatureDoesNotMatch', 403, `Credential should be scoped to correct service: '${service.name}'.`);
      const token = req.headers['x-amz-security-token'];
      const { principal, secret } = account.principal(auth.accessKeyId, typeof token === 'string' ? token : undefined);
      verifySigV4({ method: req.method, url: req.url ?? '/', headers: req.headers, body }, auth, secret);
      if (token !== undefined && !auth.signedHeaders.includes('x-amz-security-token'))
        throw new AwsError('IncompleteSignature', 400, 'X-Amz-Security-Token must be signed.');
      account.checkNotExpired(principal);

      const at0 = stuck.findIndex((h) => h.action === params.Action);
      const held = at0 >= 0 ? stuck.splice(at0, 1)[0] : undefined;
      if (held) {
        held.arrived();
        await held.gate;
      }
      let result: string | undefined;
      try {
        result = handler({ account, principal, params, packedPolicyLimit, keyPropagationDelay: propagationDelay, peers });
      } finally {
        held?.landed();
      }
      const at = holds.findIndex((h) => h.action === params.Action);
      const hold = at >= 0 ? holds.splice(at, 1)[0] : undefined;
      if (hold) await new Promise((r) => setTimeout(r, hold.ms).unref());
      if (hold?.lose) {
        entry.code = 'ConnectionReset';
        log.push(entry);
        req.socket.destroy();
        return;
      }
      send(200, successXml(ns, params.Action, result, requestId));
    } catch (err) {
      if (err instanceof AwsError) {
        entry.code = err.code;
        send(err.status, errorXml(ns, err.code, err.status, err.message, requestId));
        return;
      }
      entry.code = 'InternalFailure';
      send(500, errorXml(ns, 'InternalFailure', 500, `Emulator bug: ${(err as Error).message}`, requestId));
    }
  }

  const server = createServer((req, res) => {
    if (down) {
      req.socket.destroy();
      return;
    }
    void handle(req, res);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  const emulator: AwsEmulator = {
    url: `http://127.0.0.1:${port}`,
    accountId: account.accountId,
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
    setThrottle: (n, action) => faults.push({ remaining: n, action, status: 400, code: 'Throttling', message: 'Rate exceeded' }),
    failNext: (n, o = {}) =>
      faults.push({
        remaining: n,
        action: o.action,
        status: o.status ?? 500,
        code: o.code ?? 'InternalFailure',
        message: 'We encountered an internal error. Please try again.',
      }),
    setDown: (d = true) => {
      down = d;
    },
    holdAnswer: (action, ms, o = {}) => {
      holds.push({ action, ms, lose: o.lose === true });
    },
    holdRequest: (action) => {
      let release!: () => void;
      let arrived!: () => void;
      let landed!: () => void;
      const gate = new Promise<void>((r) => {
        release = r;
      });
      const here = new Promise<void>((r) => {
        arrived = r;
      });
      const done = new Promise<void>((r) => {
        landed = r;
      });
      stuck.push({ action, gate, arrived, landed });
      return { release, arrived: here, landed: done };
    },
    setKeyPropagationDelay: (calls) => {
      propagationDelay = calls;
    },
    createRole: (name, o) => {
      const r = account.createRole(name, o);
      return { roleName: r.roleName, roleId: r.roleId, arn: r.arn };
    },
    deleteRole: (name) => {
      account.roles.delete(name);
    },
    createUser: (name) => {
      const user = account.createUser(name);
      const key = account.createAccessKey(name);
      return { userName: user.userName, arn: user.arn, accessKeyId: key.accessKeyId, secretAccessKey: key.secretAccessKey };
    },
    rolePolicy: (roleName, policyName) => {
      const doc = account.role(roleName).inlinePolicies.get(policyName);
      return doc === undefined ? undefined : JSON.parse(doc);
    },
    rolePolicyNames: (roleName) => [...account.role(roleName).inlinePolicies.keys()],
    accessKeys: (userName) =>
      [...account.keys.values()].filter((k) => k.userName === userName).map((k) => ({ accessKeyId: k.accessKeyId, status: k.status })),
    sessions: () => [...account.sessions.values()],
    evaluate: (accessKeyId, action, resource) => {
      const s = account.sessions.get(accessKeyId);
      if (!s) throw new Error(`no session ${accessKeyId}`);
      return account.evaluate(s, action, resource);
    },
    requests: (action) => log.filter((e) => action === undefined || e.action === action),
    now: () => account.clock(),
    advanceTime: (ms) => {
      offset += ms;
    },
    reachAccount: (other) => {
      const theirs = accountOf.get(other);
      if (!theirs) throw new Error('not an emulator');
      peers.set(theirs.accountId, theirs);
    },
  };
  accountOf.set(emulator, account);
  return emulator;
}
