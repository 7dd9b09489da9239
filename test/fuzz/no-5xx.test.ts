import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { request as httpRequest, Agent } from 'node:http';
import fc from 'fast-check';
import type { AwsEmulator } from '../emulators/aws/index.ts';
import { awsForBroker } from '../providers/aws/helpers.ts';
import { ADMIN, AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { ROUTES, type FixtureIds, type RouteSpec } from './routes.ts';

/**
 * Contract section 3: "No request, however malformed, answers 500". A
 * property-based fuzzer throws malformed requests at every route of
 * ./routes.ts (odd methods, odd ids, wrong bodies and content types,
 * duplicate headers, garbage and real-but-wrong tokens) and asserts that the
 * broker never answers 5xx. On a failure fast-check prints the seed and the
 * shrunk request; FUZZ_SEED=<seed> replays it, FUZZ_RUNS raises the count.
 */

const RUNS = Number(process.env.FUZZ_RUNS ?? 1500);
const TIME_LIMIT_MS = Number(process.env.FUZZ_TIME_MS ?? 10_000);
const SEED = process.env.FUZZ_SEED === undefined ? undefined : Number(process.env.FUZZ_SEED);

let t: TestBroker;
let emu: AwsEmulator;
let ids: FixtureIds;
let tokens: Record<string, string>;
const once = new TestIssuer('once.local');
const agent = new Agent({ keepAlive: true, maxSockets: 4 });

beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  const role = aws.role;
  const issuer = new TestIssuer();
  t = await startTestBroker('fuzz', {
    issuer,
    config: {
      trust: [
        { name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: issuer.bundle().keys } },
        // Single-use tokens, so a replayed one and absurd dates next to a replay marker get fuzzed too.
        {
          name: 'once',
          kind: 'spiffe',
          trustDomain: 'once.local',
          audiences: ['jit-broker'],
          jwks: { keys: once.bundle().keys },
          singleUse: true,
        },
      ],
      // Limits off so malformed input reaches the handlers; the limited paths are fuzzed in their own property below.
      server: {
        port: 0,
        publicUrl: 'http://127.0.0.1:8080',
        rateLimit: { perSecond: 0, introspect: { perSecond: 0 }, unauthenticated: { perSecond: 0 } },
      },
      providers: aws.providers,
      roles: {
        'tickets-api': {
          provider: 'jwt',
          audience: 'https://tickets.internal',
          maxTtlSeconds: 900,
          scopes: ['tickets:read', 'tickets:write'],
        },
        'prod-deploy': { provider: 'jwt', audience: 'https://deploy.internal', maxTtlSeconds: 300, approval: 'required' },
        'reports-bucket': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 },
      },
    },
  });
  const agentId = `spiffe://dev.local${AGENT}`;
  const task = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-fuzz',
    agent: agentId,
    tenant: 'acme',
    purpose: 'fuzz',
    ttlSeconds: 3600,
    grants: [
      { role: 'tickets-api', scopes: ['tickets:read'] },
      { role: 'prod-deploy' },
      { role: 'reports-bucket', scopes: ['s3:GetObject'] },
    ],
  });
  expect(task.status).toBe(201);
  const lease = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-fuzz', role: 'tickets-api' });
  expect(lease.status).toBe(201);
  const approval = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-fuzz', role: 'prod-deploy' });
  expect(approval.status).toBe(202);
  ids = { taskId: 't-fuzz', leaseId: lease.body.leaseId, approvalId: approval.body.approvalId, agent: agentId };

  const now = Math.floor(Date.now() / 1000);
  const attacker = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const sub = agentId;
  const h = { alg: 'ES256', kid: t.issuer.kid, typ: 'JWT' };
  const replayed = once.svid(AGENT, { jti: true, ttl: 3600 });
  const ho = { alg: 'ES256', kid: once.kid, typ: 'JWT' };
  const onceSub = `spiffe://once.local${AGENT}`;
  tokens = {
    agent: t.issuer.svid(AGENT, { ttl: 3600 }),
    orchestrator: t.issuer.svid(ORCH, { ttl: 3600 }),
    admin: t.issuer.svid(ADMIN, { ttl: 3600 }),
    resource: t.issuer.svid('/resource/tickets', { ttl: 3600 }),
    replayed,
    expired: t.issuer.signRaw(h, { sub, aud: 'jit-broker', iat: now - 7200, exp: now - 3600 }),
    wrongAudience: t.issuer.svid(AGENT, { aud: ['elsewhere'] }),
    tenYears: t.issuer.signRaw(h, { sub, aud: 'jit-broker', exp: now + 10 * 365 * 86_400 }),
    hugeExp: once.signRaw(ho, { sub: onceSub, aud: 'jit-broker', exp: 1e16, jti: randomUUID() }),
    fractionalExp: once.signRaw(ho, { sub: onceSub, aud: 'jit-broker', exp: now + 60.5, jti: randomUUID() }),
    uppercaseScheme: t.issuer.signRaw(h, { sub: 'SPIFFE://dev.local/agent/support', aud: 'jit-broker', exp: now + 60 }),
    noPath: t.issuer.signRaw(h, { sub: 'spiffe://dev.local', aud: 'jit-broker', exp: now + 60 }),
    protoSub: t.issuer.signRaw(h, { sub: 'spiffe://dev.local/__proto__', aud: 'jit-broker', exp: now + 60 }),
    unknownKid: t.issuer.signRaw({ ...h, kid: 'k'.repeat(8192) }, { sub, aud: 'jit-broker', exp: now + 60 }),
    attacker: t.issuer.signRaw(h, { sub, aud: 'jit-broker', exp: now + 60 }, attacker),
    algNone: `${Buffer.from(JSON.stringify({ alg: 'none', kid: t.issuer.kid })).toString('base64url')}.${Buffer.from(JSON.stringify({ sub, aud: 'jit-broker', exp: now + 60 })).toString('base64url')}.`,
    claimsNotObject: t.issuer.signRaw(h, ['not', 'an', 'object'] as unknown as Record<string, unknown>),
    subNotString: t.issuer.signRaw(h, { sub: { id: 1 }, aud: 'jit-broker', exp: now + 60 }),
    audNumbers: t.issuer.signRaw(h, { sub, aud: [1, 2], exp: now + 60 }),
    garbage: 'garbage',
    dots: '...',
    long: 'a'.repeat(20_000),
  };
  // The replayed token is spent once so every later use is a replay.
  await call(t.url, 'GET', '/v1/tasks/t-fuzz', { authorization: `Bearer ${replayed}` });
}, 60_000);

afterAll(async () => {
  if (process.env.FUZZ_VERBOSE) process.stdout.write(`${sends} requests\n`);
  if (process.env.FUZZ_VERBOSE)
    process.stdout.write(
      `${[...stats]
        .sort((a, b) => b[1] - a[1])
        .map(([k, n]) => `${String(n).padStart(6)} ${k}`)
        .join('\n')}\n`,
    );
  agent.destroy();
  await t?.close();
  await emu?.stop();
});

// ---------- arbitraries ----------

const oddIds = [
  '__proto__',
  'constructor',
  'prototype',
  'hasOwnProperty',
  'toString',
  '%00',
  'a%00b',
  '%',
  '%zz',
  '%E0%A4%A',
  '~',
  't-fuzz~child',
  '..',
  '%2e%2e',
  '.',
  '%2F',
  'a%2Fb',
  '%20',
  '*',
  'spiffe%3A%2F%2Fdev.local%2Fagent%2F*',
  'a'.repeat(129),
  'a'.repeat(10_000),
  'f'.repeat(32),
  'F'.repeat(32),
  '%F0%9F%92%A9',
  '%C0%AF',
  '%EF%BF%BF',
];
/** encodeURIComponent, which throws on a lone surrogate: send that as the bytes of one instead. */
const encodeUri = (s: string) => {
  try {
    return encodeURIComponent(s);
  } catch {
    return '%ED%A0%80';
  }
};
const idArb = (real: () => string) =>
  fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom(...oddIds) },
    { weight: 2, arbitrary: fc.string({ maxLength: 40 }).map(encodeUri) },
    { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 20 }).map(encodeUri) },
    { weight: 2, arbitrary: fc.constant(null).map(real) },
  );

const methodArb = (route: RouteSpec) =>
  fc.oneof(
    { weight: 6, arbitrary: fc.constant(route.method) },
    { weight: 2, arbitrary: fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS') },
    { weight: 1, arbitrary: fc.constantFrom('TRACE', 'PROPFIND', 'SEARCH', 'CONNECT') },
  );

const jsonValue = fc.jsonValue({ maxDepth: 3 });
const specialKeys = fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', '', ' ', 'a.b', '\u0000');

/** A near-valid body bent in one of many ways. */
function mutatedBody(route: RouteSpec): fc.Arbitrary<unknown> {
  const example = route.example;
  const base = () => (example ? example(ids) : {});
  return fc.oneof(
    fc.constant(null).map(base),
    fc.tuple(fc.constant(null), fc.nat(20), jsonValue).map(([, i, v]) => {
      const b = base();
      const keys = Object.keys(b);
      if (keys.length) b[keys[i % keys.length]!] = v;
      return b;
    }),
    fc.tuple(fc.constant(null), fc.nat(20)).map(([, i]) => {
      const b = base();
      const keys = Object.keys(b);
      if (keys.length) delete b[keys[i % keys.length]!];
      return b;
    }),
    fc.tuple(fc.constant(null), specialKeys, jsonValue).map(([, k, v]) => {
      const b = base();
      Object.defineProperty(b, k, { value: v, enumerable: true, configurable: true, writable: true });
      return b;
    }),
    jsonValue,
    fc.dictionary(fc.string({ maxLength: 8 }), jsonValue, { maxKeys: 60 }),
  );
}

const contentTypes = [
  'application/json',
  'application/json; charset=utf-8',
  'application/json; charset=utf-16',
  'application/json; charset=latin1',
  'application/json; charset=nope',
  'application/merge-patch+json',
  'application/x-www-form-urlencoded',
  'application/x-www-form-urlencoded; charset=iso-8859-1',
  'multipart/form-data; boundary=x',
  'text/plain',
  'application/octet-stream',
  '*/*',
  ';;;',
  'application/json, text/plain',
];

interface FuzzRequest {
  method: string;
  path: string;
  headers: Record<string, string | string[]>;
  body?: Buffer;
}

function encodeBody(kind: 'json' | 'form' | 'raw' | 'none', value: unknown, raw: Buffer): Buffer | undefined {
  if (kind === 'none') return undefined;
  if (kind === 'raw') return raw;
  if (kind === 'json') return Buffer.from(JSON.stringify(value) ?? 'null');
  const p = new URLSearchParams();
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) p.append(k, typeof v === 'string' ? v : JSON.stringify(v));
  } else p.append('value', JSON.stringify(value));
  return Buffer.from(p.toString());
}

const rawBodies = fc.oneof(
  fc.constant(Buffer.from('')),
  fc.constant(Buffer.from('{"a":')),
  fc.constant(Buffer.from([0xff, 0xfe, 0x00, 0x7b])),
  fc.constant(Buffer.from('%')),
  fc.constant(Buffer.from('a=1&a=2&a[b]=3&__proto__[x]=1&constructor[prototype][y]=2')),
  fc.constant(Buffer.from(Array.from({ length: 80 }, (_, i) => `f${i}=v`).join('&'))),
  fc.constant(Buffer.alloc(70_000, 'x')),
  fc.constant(Buffer.from(`{"a":"${'x'.repeat(70_000)}"}`)),
  fc.constant(Buffer.from(`${'['.repeat(5000)}${']'.repeat(5000)}`)),
  fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
  fc.string({ maxLength: 200 }).map((s) => Buffer.from(s)),
);

function authHeader(route: RouteSpec, tokenName: string, scheme: string): Record<string, string | string[]> {
  if (tokenName === 'absent') return {};
  const token = tokens[tokenName]!;
  if (scheme === 'duplicate') return { authorization: [`Bearer ${token}`, `Bearer ${tokens.admin}`] };
  if (scheme === 'raw') return { authorization: token };
  if (scheme === 'basic') return { authorization: `Basic ${Buffer.from(`u:${token.slice(0, 50)}`).toString('base64')}` };
  if (route.auth === 'container' && scheme === 'bare') return { authorization: token };
  return { authorization: `${scheme === 'lower' ? 'bearer' : 'Bearer'}  ${token}` };
}

function requestArb(routes: readonly RouteSpec[]): fc.Arbitrary<FuzzRequest> {
  return fc.constantFrom(...routes).chain((route) =>
    fc
      .record({
        method: methodArb(route),
        params: fc.dictionary(
          fc.constantFrom('taskId', 'leaseId', 'approvalId', 'role', 'pattern'),
          idArb(() => ''),
          { maxKeys: 5 },
        ),
        useReal: fc.boolean(),
        trailing: fc.constantFrom('', '', '', '/', '//', '/.', '?', '#x', '/%2e%2e/healthz'),
        query: fc.array(
          fc.tuple(
            fc.oneof(fc.constantFrom(...(route.query ?? ['limit']), 'limit', 'cursor', '__proto__', 'a[b]'), fc.string({ maxLength: 6 })),
            fc.oneof(
              fc.constantFrom('0', '-1', '501', '1e3', 'NaN', '', '%', 'open', 'pending', '2026-13-45'),
              fc.string({ maxLength: 30 }),
            ),
          ),
          { maxLength: 4 },
        ),
        // Half the time a caller that passes authentication, so malformed input reaches the handlers.
        token: fc.oneof(fc.constantFrom('agent', 'orchestrator', 'admin', 'resource'), fc.constantFrom('absent', ...Object.keys(tokens))),
        scheme: fc.oneof({ weight: 6, arbitrary: fc.constant('Bearer') }, fc.constantFrom('lower', 'raw', 'basic', 'duplicate', 'bare')),
        bodyKind: fc.constantFrom(
          route.body === 'none' ? 'none' : route.body,
          route.body === 'none' ? 'none' : route.body,
          'json',
          'form',
          'raw',
          'none',
        ),
        body: mutatedBody(route),
        raw: rawBodies,
        contentType: fc.option(
          fc.oneof(fc.constantFrom(...contentTypes), fc.array(fc.constantFrom(...contentTypes), { minLength: 2, maxLength: 2 })),
          { nil: undefined },
        ),
        encoding: fc.option(fc.constantFrom('gzip', 'deflate', 'br', 'identity', 'x-nope', 'gzip, gzip'), { nil: undefined, freq: 8 }),
        extraHeaders: fc.dictionary(
          fc.constantFrom('accept', 'x-forwarded-for', 'origin', 'cookie', 'x-requested-with', 'dpop', 'x-amz-date'),
          fc.string({ maxLength: 40 }),
          { maxKeys: 3 },
        ),
      })
      .map((g) => {
        const real: Record<string, string> = {
          taskId: ids.taskId,
          leaseId: ids.leaseId,
          approvalId: ids.approvalId,
          role: 'reports-bucket',
          pattern: encodeURIComponent(`${ids.agent}`),
        };
        const path = route.path.replace(
          /\{(\w+)\}/g,
          (_m, name: string) => (g.useReal ? real[name] : (g.params[name] ?? real[name])) ?? 'x',
        );
        const q = g.query.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&');
        const body = encodeBody(g.bodyKind as 'json' | 'form' | 'raw' | 'none', g.body, g.raw);
        const headers: Record<string, string | string[]> = { ...g.extraHeaders, ...authHeader(route, g.token, g.scheme) };
        if (body !== undefined) {
          headers['content-type'] =
            g.contentType ??
            (g.bodyKind === 'form' ? 'application/x-www-form-urlencoded' : g.bodyKind === 'json' ? 'application/json' : 'text/plain');
          if (g.encoding) headers['content-encoding'] = g.encoding;
        }
        // /v1/token carries the identity in the form, not the header.
        if (route.auth === 'subject_token' && g.bodyKind === 'form' && g.token !== 'absent' && body) {
          const p = new URLSearchParams(body.toString());
          p.set('subject_token', tokens[g.token]!);
          return { method: g.method, path: `${path}${g.trailing}${q ? `?${q}` : ''}`, headers, body: Buffer.from(p.toString()) };
        }
        return { method: g.method, path: `${path}${g.trailing}${q ? `?${q}` : ''}`, headers, body };
      }),
  );
}

/** Sends one request as-is (no URL normalisation, duplicate headers kept). */
function send(base: string, r: FuzzRequest): Promise<{ status: number; body: string }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: u.hostname, port: u.port, method: r.method, path: r.path, headers: r.headers, agent, timeout: 10_000 },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8').slice(0, 500) }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err: NodeJS.ErrnoException) => {
      // Node's HTTP parser drops requests it refuses (e.g. an unknown method) without an answer: not a 5xx.
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE' || err.code === 'HPE_INVALID_METHOD') resolve({ status: 0, body: err.code });
      else reject(err);
    });
    req.end(r.body);
  });
}

const describeRequest = (r: FuzzRequest) =>
  `${r.method} ${r.path.slice(0, 200)} headers=${JSON.stringify(r.headers).slice(0, 400)} body=${r.body?.toString('utf8').slice(0, 300)}`;

/** Status counts per route, printed with FUZZ_VERBOSE=1 to see how deep the fuzzer gets. */
const stats = new Map<string, number>();
let sends = 0;
async function noServerError(r: FuzzRequest): Promise<void> {
  const t0 = Date.now();
  const res = await send(t.url, r);
  sends++;
  if (process.env.FUZZ_VERBOSE && Date.now() - t0 > 300)
    process.stdout.write(`SLOW ${Date.now() - t0}ms ${res.status} ${describeRequest(r).slice(0, 250)}\n`);
  const key = `${res.status} ${r.method} ${r.path
    .split('?')[0]!
    .replace(/\/v1\/(\w+).*/, '/v1/$1')
    .slice(0, 40)}`;
  stats.set(key, (stats.get(key) ?? 0) + 1);
  if (res.status >= 500) throw new Error(`${res.status} for ${describeRequest(r)}: ${res.body}`);
}

test('the route table names every route the broker mounts', () => {
  const paths = new Set(ROUTES.map((r) => `${r.method} ${r.path.replace(/\{\w+\}/g, ':id')}`));
  for (const must of [
    'POST /v1/tasks',
    'GET /v1/tasks/:id',
    'POST /v1/credentials',
    'POST /v1/token',
    'POST /v1/introspect',
    'POST /v1/admin/rotate',
  ])
    expect(paths).toContain(must);
});

test(
  'no malformed request to any route answers 5xx',
  async () => {
    // Up to four requests at a time: concurrent requests find races that sequential ones cannot.
    const batch = fc.array(requestArb(ROUTES), { minLength: 1, maxLength: 4 });
    await fc.assert(
      fc.asyncProperty(batch, async (rs) => void (await Promise.all(rs.map(noServerError)))),
      {
        numRuns: RUNS,
        interruptAfterTimeLimit: TIME_LIMIT_MS,
        markInterruptAsFailure: false,
        seed: SEED,
        endOnFailure: false,
      },
    );
    // The broker is still healthy afterwards.
    expect((await call(t.url, 'GET', '/readyz', {})).status).toBe(200);
  },
  TIME_LIMIT_MS + 30_000,
);

test('with the limits on, floods of malformed requests get 4xx (429 included), never 5xx', async () => {
  const limited = await startTestBroker('fuzz-limited', {
    issuer: t.issuer,
    config: {
      server: {
        port: 0,
        publicUrl: 'http://127.0.0.1:8080',
        rateLimit: { perSecond: 2, burst: 4, introspect: { perSecond: 2, burst: 4 }, unauthenticated: { perSecond: 2, burst: 4 } },
      },
    },
  });
  try {
    const routes = ROUTES.filter((r) => r.auth !== 'container');
    await fc.assert(
      fc.asyncProperty(requestArb(routes), async (r) => {
        const res = await send(limited.url, r);
        if (res.status >= 500) throw new Error(`${res.status} for ${describeRequest(r)}: ${res.body}`);
      }),
      { numRuns: 300, interruptAfterTimeLimit: 3000, markInterruptAsFailure: false, seed: SEED },
    );
  } finally {
    await limited.close();
  }
}, 30_000);
