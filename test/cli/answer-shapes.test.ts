import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { resolve } from 'node:path';
import { ensureBuilt, JIT, NODE20, runCollect } from '../helpers/cli.ts';
import { type FakeBroker, send, startFakeBroker } from '../helpers/fake-broker.ts';

/**
 * Every command's answer is the shape the contract gives it (docs/openapi.yaml's required fields), about what was
 * asked: a 2xx of `[]`, `{}`, `null`, text, nothing, or another object than the one named (a wrong URL, a proxy, a
 * broken or hostile broker) is exit 3 bad_response, not exit 0 with nothing (or the wrong thing) said. The compiled
 * CLI and client, on Node 20, against a fake broker.
 */
/**
 * Fake brokers, each answering `METHOD /path` with the [status, body] its map holds (a test sets it): one for each
 * body a test tries, so its runs of the CLI (each a process of its own) go at once instead of one after the other.
 */
const fakes: { broker: FakeBroker; answers: Map<string, [number, string]> }[] = [];
/** Bodies a command is tried with: GARBAGE's 5, another object, the real one. */
const SLOTS = 7;

beforeAll(async () => {
  await ensureBuilt();
  for (let i = 0; i < SLOTS; i++) {
    const answers = new Map<string, [number, string]>();
    const broker = await startFakeBroker((req, res) => {
      req.resume();
      req.on('end', () => {
        const path = new URL(req.url ?? '/', 'http://x').pathname;
        const [status, body] = answers.get(`${req.method} ${path}`) ?? [
          404,
          '{"type":"about:blank","title":"Not Found","status":404,"detail":"no such route","code":"not_found"}',
        ];
        send(res, status, body);
      });
    });
    fakes.push({ broker, answers });
  }
}, 120_000);
afterAll(() => Promise.all(fakes.map((f) => f.broker.close())));

/** `file` run against fake broker `slot` (killed after 20 s). */
const run = (slot: number, file: string, args: string[]) => {
  const url = fakes[slot]!.broker.url;
  return runCollect(file, args, { JIT_BROKER_URL: url, JIT_TOKEN: 'a.b.c', U: url }, { killMs: 20_000 });
};
/** The CLI with `args` against fake broker `slot`, which answers `route` with `status` and `body`. */
const jit = (slot: number, route: string, status: number, body: string, args: string[]) => {
  fakes[slot]!.answers.set(route, [status, body]);
  return run(slot, NODE20, [JIT, ...args]);
};

/** 2xx bodies that are none of the broker's answers. */
const GARBAGE: Record<string, string> = { list: '[]', empty: '{}', null: 'null', text: '"x"', nothing: '' };
const T = '2030-01-01T00:00:00Z';
const TASK = { taskId: 't-1', agent: 'spiffe://x/a', tenant: 'x', status: 'open', expiresAt: T, grants: [] };
const APPROVAL = {
  approvalId: 'a-1',
  taskId: 't-1',
  role: 'r',
  scopes: [],
  ttlSeconds: 60,
  agent: 'spiffe://x/a',
  purpose: 'p',
  status: 'approved',
  requestedAt: T,
  expiresAt: T,
};
const LEASE = {
  leaseId: 'l-1',
  taskId: 't-1',
  role: 'r',
  provider: 'jwt',
  agent: 'a',
  scopes: [],
  status: 'active',
  issuedAt: T,
  expiresAt: T,
};
const evidence = (taskId: string) => ({
  task: { ...TASK, taskId },
  tree: [],
  treeNextCursor: null,
  leases: [],
  leasesNextCursor: null,
  audit: { items: [], nextCursor: null },
  chain: 'intact',
});
const OPEN = ['task', 'open', '--agent', 'spiffe://x/a', '--tenant', 'x', '--purpose', 'p', '--ttl', '60', '--grant', 'r'];

/** Each command: the route it calls, the status and body the broker answers, and a body about something else. */
const CASES: { name: string; args: string[]; route: string; status: number; good: unknown; other?: unknown }[] = [
  {
    name: 'task open',
    args: [...OPEN, '--task', 't-1'],
    route: 'POST /v1/tasks',
    status: 201,
    good: TASK,
    other: { ...TASK, taskId: 't-2' },
  },
  {
    name: 'task open --parent',
    args: [...OPEN, '--task', 'c', '--parent', 't-1'],
    route: 'POST /v1/tasks',
    status: 201,
    good: { ...TASK, taskId: 't-1~c' },
    other: { ...TASK, taskId: 'c' },
  },
  {
    name: 'task show',
    args: ['task', 'show', 't-1'],
    route: 'GET /v1/tasks/t-1',
    status: 200,
    good: { ...TASK, leases: [], leasesNextCursor: null },
    other: { ...TASK, taskId: 't-2', leases: [], leasesNextCursor: null },
  },
  {
    name: 'task complete',
    args: ['task', 'complete', 't-1'],
    route: 'POST /v1/tasks/t-1/complete',
    status: 202,
    good: { taskId: 't-1', status: 'completed', leases: 2 },
    other: { taskId: 't-2', status: 'completed', leases: 2 },
  },
  {
    name: 'task evidence',
    args: ['task', 'evidence', 't-1'],
    route: 'GET /v1/tasks/t-1/evidence',
    status: 200,
    good: evidence('t-1'),
    other: evidence('t-2'),
  },
  {
    name: 'approvals show',
    args: ['approvals', 'show', 'a-1'],
    route: 'GET /v1/approvals/a-1',
    status: 200,
    good: APPROVAL,
    other: { ...APPROVAL, approvalId: 'a-2' },
  },
  {
    name: 'approvals approve',
    args: ['approvals', 'approve', 'a-1'],
    route: 'POST /v1/approvals/a-1',
    status: 200,
    good: APPROVAL,
    other: { ...APPROVAL, approvalId: 'a-2' },
  },
  {
    name: 'approvals reject',
    args: ['approvals', 'reject', 'a-1', '--reason', 'no'],
    route: 'POST /v1/approvals/a-1',
    status: 200,
    good: { ...APPROVAL, status: 'rejected' },
    other: { ...APPROVAL, approvalId: 'a-2', status: 'rejected' },
  },
  {
    name: 'lease show',
    args: ['lease', 'show', 'l-1'],
    route: 'GET /v1/leases/l-1',
    status: 200,
    good: LEASE,
    other: { ...LEASE, leaseId: 'l-2' },
  },
  {
    name: 'lease revoke',
    args: ['lease', 'revoke', 'l-1'],
    route: 'DELETE /v1/leases/l-1',
    status: 202,
    good: { leaseId: 'l-1', status: 'revoking' },
    other: { leaseId: 'l-2', status: 'revoking' },
  },
  {
    name: 'admin revoke',
    args: ['admin', 'revoke', '--task', 't-1'],
    route: 'POST /v1/admin/revoke',
    status: 202,
    good: { tasks: 1, leases: 2 },
    other: { tasks: '1', leases: 2 },
  },
  {
    name: 'admin quarantine',
    args: ['admin', 'quarantine', '--agent', 'spiffe://x/*', '--reason', 'r'],
    route: 'POST /v1/admin/quarantine',
    status: 201,
    good: { pattern: 'spiffe://x/*', reason: 'r', by: 'admin', at: T, tasks: 1, leases: 2, approvedLeases: 0 },
    other: { pattern: 'spiffe://y/*', reason: 'r', by: 'admin', at: T, tasks: 1, leases: 2, approvedLeases: 0 },
  },
  {
    name: 'admin unquarantine',
    args: ['admin', 'unquarantine', 'spiffe://x/*'],
    route: `DELETE /v1/admin/quarantine/${encodeURIComponent('spiffe://x/*')}`,
    status: 200,
    good: { pattern: 'spiffe://x/*', lifted: true },
    other: { pattern: 'spiffe://y/*', lifted: true },
  },
  {
    name: 'admin rotate',
    args: ['admin', 'rotate', 'signing-key'],
    route: 'POST /v1/admin/rotate',
    status: 202,
    good: { target: 'signing-key', rotated: ['signing-key'], kid: 'k2' },
    other: { target: 'aws', rotated: ['iam-access-key'] },
  },
  {
    name: 'admin reload-policy',
    args: ['admin', 'reload-policy'],
    route: 'POST /v1/admin/policy/reload',
    status: 202,
    good: { reloaded: true, policies: 3, version: 'v1' },
    other: { reloaded: 'yes', policies: 3, version: 'v1' },
  },
];

test.each(CASES.map((c) => [c.name, c] as const))(
  '%s: an answer that is not the contract’s (or about something else) is exit 3 bad_response; the real one exit 0',
  async (_name, c) => {
    const bodies: [string, number, string][] = [
      ...Object.entries(GARBAGE).map(([k, b]) => [k, c.status, b] as [string, number, string]),
      ['another object', c.status, JSON.stringify(c.other)],
    ];
    // Every body at once, each on its own fake broker; the real one too.
    const [ok, ...rs] = await Promise.all([
      jit(bodies.length, c.route, c.status, JSON.stringify(c.good), [...c.args, '--json']),
      ...bodies.map(([, status, body], i) => jit(i, c.route, status, body, [...c.args, '--json'])),
    ]);
    bodies.forEach(([kind], i) => {
      const r = rs[i]!;
      // Before: exit 0 on every one of them (`{}` or nothing printed, or the other object as if it were the one asked for).
      expect({ kind, code: r.code, out: r.stdout && JSON.parse(r.stdout).code }).toEqual({ kind, code: 3, out: 'bad_response' });
      expect(r.stderr).toMatch(/the broker answered/);
    });
    expect({ code: ok!.code, stderr: ok!.stderr }).toEqual({ code: 0, stderr: '' });
    for (const f of fakes) f.answers.delete(c.route);
  },
  120_000,
);

/** The client's calls no command makes: each against every bad body, on Node 20 with the compiled client. */
test('health, ready, metadata, jwks, token exchange and introspection check their answers', async () => {
  const CALLS: [string, string, number, unknown][] = [
    ['health', 'GET /healthz', 200, { status: 'ok' }],
    ['ready', 'GET /readyz', 503, { status: 'not_ready', checks: { redis: false }, upstreams: {} }],
    [
      'metadata',
      'GET /.well-known/oauth-authorization-server',
      200,
      {
        issuer: 'http://b',
        token_endpoint: 'http://b/v1/token',
        introspection_endpoint: 'http://b/v1/introspect',
        jwks_uri: 'http://b/.well-known/jwks.json',
        grant_types_supported: ['urn:ietf:params:oauth:grant-type:token-exchange'],
      },
    ],
    ['jwks', 'GET /.well-known/jwks.json', 200, { keys: [] }],
    [
      'exchangeToken',
      'POST /v1/token',
      200,
      {
        access_token: 'a.b.c',
        issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
        token_type: 'Bearer',
        expires_in: 60,
        scope: '',
      },
    ],
    ['introspect', 'POST /v1/introspect', 200, { active: false }],
  ];
  // One process per call, trying it against every body at once: a fresh client for each, on the fake broker
  // answering that body (the ones before, 36 processes one after the other, took most of this file's time).
  const KINDS = [...Object.keys(GARBAGE), 'good'];
  const script = `
    import { BrokerClient } from ${JSON.stringify(resolve('dist/client/index.js'))};
    const [name, ...urls] = process.argv.slice(1);
    const outs = await Promise.all(urls.map((url) => {
      const c = new BrokerClient({ url, token: 'a.b.c' });
      const call = { health: () => c.health(), ready: () => c.ready(), metadata: () => c.metadata(), jwks: () => c.jwks(),
        exchangeToken: () => c.exchangeToken({ taskId: 't', audience: 'r' }), introspect: () => c.introspect('x') }[name];
      return call().then(() => 'ok', (e) => e.code);
    }));
    console.log(JSON.stringify(outs));
  `;
  const urls = KINDS.map((_, i) => fakes[i]!.broker.url);
  const results = await Promise.all(
    CALLS.map(([name, route, status, good]) => {
      for (const [i, kind] of KINDS.entries()) fakes[i]!.answers.set(route, [status, GARBAGE[kind] ?? JSON.stringify(good)]);
      return run(0, NODE20, ['--input-type=module', '-e', script, name, ...urls]);
    }),
  );
  CALLS.forEach(([name, route], n) => {
    const r = results[n]!;
    expect({ name, stderr: r.stderr, code: r.code }).toEqual({ name, stderr: '', code: 0 });
    const outs = JSON.parse(r.stdout) as string[];
    for (const [i, kind] of KINDS.entries()) {
      // Before: 'ok' for every body (`{}`, `[]`, null, nothing): a broken broker read as healthy, ready or inactive.
      expect({ name, kind, out: outs[i] }).toEqual({ name, kind, out: kind === 'good' ? 'ok' : 'bad_response' });
    }
    for (const f of fakes) f.answers.delete(route);
  });
}, 120_000);
