import { AGENT, ORCH, call, openRateWindows, startTestBroker, type TestBroker } from '../helpers/broker.ts';

let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('http', { config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', bodyLimitBytes: 65_536 } } });
});
afterAll(async () => {
  await t.close();
});

async function raw(path: string, init: RequestInit & { headers?: Record<string, string> }) {
  const res = await fetch(`${t.url}${path}`, init);
  return { status: res.status, type: res.headers.get('content-type') ?? '', body: (await res.json().catch(() => undefined)) as any };
}

describe('bad input gets a clear error and loses nothing', () => {
  test('413 for a body over 64 KiB', async () => {
    const r = await raw('/v1/tasks', {
      method: 'POST',
      headers: { ...t.as(ORCH), 'content-type': 'application/json' },
      body: JSON.stringify({ purpose: 'x'.repeat(70_000) }),
    });
    expect(r.status).toBe(413);
    expect(r.body.code).toBe('body_too_large');
  });

  test('415 for a body that is not application/json', async () => {
    const r = await raw('/v1/tasks', { method: 'POST', headers: { ...t.as(ORCH), 'content-type': 'text/plain' }, body: '{}' });
    expect(r.status).toBe(415);
    expect(r.type).toContain('application/problem+json');
    expect(r.body).toMatchObject({ status: 415, code: 'unsupported_media_type', title: 'Unsupported Media Type' });
    expect(r.body.type).toBeDefined();
    expect(r.body.detail).toBeDefined();
  });

  test('400 for malformed JSON', async () => {
    const r = await raw('/v1/tasks', { method: 'POST', headers: { ...t.as(ORCH), 'content-type': 'application/json' }, body: '{"agent":' });
    expect(r.status).toBe(400);
    expect(r.body.code).toBe('malformed_json');
  });

  test('400 for a string that is not well-formed Unicode (a lone surrogate escape), value or key (found by red team)', async () => {
    // Stored, it read back as U+FFFD: the task answered with a tenant no kill switch or filter could name.
    const open = (body: string) =>
      raw('/v1/tasks', { method: 'POST', headers: { ...t.as(ORCH), 'content-type': 'application/json' }, body });
    const task = (over: string) =>
      `{"agent":"spiffe://dev.local/agent/x","tenant":"acme","purpose":"p","ttlSeconds":60,"grants":[{"role":"demo-api"}]${over}}`;
    for (const [over, field] of [
      [',"tenant":"acme\\ud800"', 'tenant'],
      [',"labels":{"k\\udc00":"v"}', 'labels'],
      [',"labels":{"ticket":"\\udbff\\udbff"}', 'labels.ticket'],
    ] as const) {
      const r = await open(task(over));
      expect([field, r.status, r.body.code, r.body.field]).toEqual([field, 400, 'invalid_request', field]);
    }
    // A surrogate pair is a character like any other.
    expect((await open(task(',"purpose":"deploy \\ud83d\\ude80"'))).status).toBe(201);
    // Deep nesting is refused as input, never a stack overflow (500).
    const deep = (await open(`{"labels":${'['.repeat(30_000)}${']'.repeat(30_000)}}`)).status;
    expect(deep).toBe(400);
  });

  test('404 for an unknown lease id, whatever its form (ids are opaque); 404 for unknown routes', async () => {
    expect((await call(t.url, 'GET', '/v1/leases/NOT-HEX', t.as(AGENT))).body.code).toBe('lease_not_found');
    expect((await call(t.url, 'GET', `/v1/leases/${'a'.repeat(32)}`, t.as(AGENT))).status).toBe(404);
    const r = await call(t.url, 'GET', '/v1/nothing-here', t.as(AGENT));
    expect(r.status).toBe(404);
    expect(r.body.code).toBe('route_not_found');
  });

  test('400 invalid_request for a URL that does not decode (nothing was wrong with the body)', async () => {
    const r = await raw('/v1/tasks/%E0%A4%A', { headers: t.as(AGENT) });
    expect(r.status).toBe(400);
    expect(r.body.code).toBe('invalid_request');
  });

  test('OPTIONS is not a method of the API (no CORS): 404 route_not_found, with or without a token', async () => {
    for (const path of ['/v1/tasks', '/v1/leases/l-x', '/v1/admin/quarantine', '/v1/token'])
      for (const headers of [t.as(AGENT), {}]) {
        const res = await fetch(`${t.url}${path}`, { method: 'OPTIONS', headers });
        expect([path, res.status, ((await res.json()) as any).code]).toEqual([path, 404, 'route_not_found']);
      }
  });

  test('the identity is checked before the body is parsed: no token + huge body is 401', async () => {
    const r = await raw('/v1/tasks', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ x: 'y'.repeat(100_000) }),
    });
    expect(r.status).toBe(401);
    expect(r.body.code).toBe('identity_missing');
  });

  test('a rejected open task leaves nothing behind', async () => {
    const before = await t.broker.deps.redis.keys(`${t.prefix}:*task:*`);
    await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
      taskId: 't-bad',
      agent: 'spiffe://dev.local/agent/x',
      tenant: 'a',
      purpose: 'p',
      ttlSeconds: 60,
      grants: [{ role: 'nope' }],
    });
    expect(await t.broker.deps.redis.keys(`${t.prefix}:*task:*`)).toEqual(before);
  });
});

describe('operations endpoints', () => {
  test('healthz, readyz and metrics', async () => {
    expect((await call(t.url, 'GET', '/healthz', {})).status).toBe(200);
    const ready = await call(t.url, 'GET', '/readyz', {});
    expect(ready.status).toBe(200);
    expect(ready.body.checks.redis).toBe(true);
    const m = await (await fetch(`${t.url}/metrics`)).text();
    for (const name of [
      'jit_credentials_issued_total',
      'jit_denials_total',
      'jit_revocations_total',
      'jit_revocation_lag_seconds',
      'jit_active_leases',
    ])
      expect(m).toContain(name);
  });

  test('RFC 8414 metadata points at the endpoints', async () => {
    const r = await call(t.url, 'GET', '/.well-known/oauth-authorization-server', {});
    expect(r.body).toMatchObject({
      issuer: 'http://127.0.0.1:8080',
      token_endpoint: 'http://127.0.0.1:8080/v1/token',
      introspection_endpoint: 'http://127.0.0.1:8080/v1/introspect',
      jwks_uri: 'http://127.0.0.1:8080/.well-known/jwks.json',
      grant_types_supported: ['urn:ietf:params:oauth:grant-type:token-exchange'],
    });
  });
});

describe('rate limiting', () => {
  test('an identity over its budget gets 429 with Retry-After; another identity is unaffected', async () => {
    const limited = await startTestBroker('ratelimit', {
      config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 1, burst: 3 } } },
    });
    try {
      await openRateWindows(limited, 'id', `spiffe://dev.local${ORCH}`);
      const statuses: number[] = [];
      for (let i = 0; i < 5; i++) statuses.push((await call(limited.url, 'GET', '/v1/tasks/t-none', limited.as(ORCH))).status);
      expect(statuses.slice(0, 3)).toEqual([404, 404, 404]);
      const r = await call(limited.url, 'GET', '/v1/tasks/t-none', limited.as(ORCH));
      expect(r.status).toBe(429);
      expect(r.body.code).toBe('rate_limited');
      expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect((await call(limited.url, 'GET', '/v1/tasks/t-none', limited.as(AGENT))).status).toBe(404);
    } finally {
      await limited.close();
    }
  });
});
