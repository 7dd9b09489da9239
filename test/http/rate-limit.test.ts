import { jest } from '@jest/globals';
import {
  ADMIN,
  AGENT,
  ORCH,
  auditRecords,
  call,
  openRateWindows,
  startSibling,
  startTestBroker,
  type TestBroker,
} from '../helpers/broker.ts';

/**
 * Rate limits (contract sections 2 and 3): per identity string on every
 * authenticated route, shared by all instances through Redis; introspection
 * with its own budget; authentication failures limited per client address
 * before any signature is checked.
 */

const server = (rateLimit?: Record<string, unknown>) => ({
  server: { port: 0, publicUrl: 'http://127.0.0.1:8080', ...(rateLimit ? { rateLimit } : {}) },
});
const brokers: TestBroker[] = [];
async function broker(name: string, rateLimit?: Record<string, unknown>): Promise<TestBroker> {
  const b = await startTestBroker(name, { config: server(rateLimit) });
  brokers.push(b);
  return b;
}
afterAll(async () => {
  for (const b of brokers.reverse()) await b.close();
});

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
async function form(url: string, path: string, params: Record<string, string>, headers: Record<string, string> = {}) {
  const res = await fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(params),
  });
  return { status: res.status, headers: res.headers, body: (await res.json().catch(() => undefined)) as any };
}
const exchange = (t: TestBroker, subject: string, extra: Record<string, string> = {}) =>
  form(t.url, '/v1/token', {
    grant_type: TOKEN_EXCHANGE,
    subject_token: subject,
    subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
    audience: 'tickets-api',
    task_id: 't-none',
    ...extra,
  });

function expectRetryAfter(h: Headers): void {
  const v = Number(h.get('retry-after'));
  expect(Number.isInteger(v)).toBe(true);
  expect(v).toBeGreaterThanOrEqual(1);
}

describe('defaults', () => {
  test('on by default: 50/s with a burst of 100 per identity; introspect 1000/2000; unauthenticated 20/40', async () => {
    const t = await broker('rl-defaults');
    expect(t.config.server.rateLimit).toMatchObject({
      perSecond: 50,
      burst: 100,
      introspect: { perSecond: 1000, burst: 2000 },
      unauthenticated: { perSecond: 20, burst: 40 },
    });
    const orch = t.as(ORCH);
    const started = Date.now();
    // A lease read, not a task read: 300 task reads at once would also meet server.rateLimit.concurrentReads
    // (16 running at once), and the burst would not all pass.
    const statuses = await Promise.all(
      Array.from({ length: 300 }, async () => (await call(t.url, 'GET', `/v1/leases/${'0'.repeat(32)}`, orch)).status),
    );
    const seconds = (Date.now() - started) / 1000;
    // Anything but the two answers is named in the failure.
    expect(statuses.filter((s) => s !== 404 && s !== 429)).toEqual([]);
    const ok = statuses.filter((s) => s === 404).length;
    const limited = statuses.filter((s) => s === 429).length;
    expect(ok + limited).toBe(300);
    // The whole burst passes; beyond it, at most 50 per started second (the reserve is spent).
    expect(ok).toBeGreaterThanOrEqual(100);
    expect(ok).toBeLessThanOrEqual(100 + 50 * Math.ceil(seconds));
    expect(limited).toBeGreaterThan(0);
    // Another identity has its own budget.
    expect((await call(t.url, 'GET', '/v1/tasks/t-none', t.as(AGENT))).status).toBe(404);
  });
});

describe('per identity, across instances', () => {
  test('429 problem with Retry-After once the burst is spent, on whichever instance', async () => {
    const a = await broker('rl-shared', { perSecond: 1, burst: 3 });
    const b = await startSibling(a);
    try {
      await openRateWindows(a, 'id', `spiffe://dev.local${ORCH}`);
      const seq = [a, b, a, b, a, b];
      const out = [];
      for (const x of seq) out.push(await call(x.url, 'GET', '/v1/tasks/t-none', x.as(ORCH)));
      const statuses = out.map((r) => r.status);
      // Per-instance buckets would give each instance 3: here the two share one budget of 3.
      expect(statuses).toEqual([404, 404, 404, 429, 429, 429]);
      const r = out[3]!;
      expect(r.headers.get('content-type')).toContain('application/problem+json');
      expect(r.body).toMatchObject({ status: 429, code: 'rate_limited' });
      expectRetryAfter(r.headers);
      // The counters live in Redis under the configured prefix.
      const keys = await a.broker.deps.redis.keys(`${a.prefix}:rl:*`);
      expect(keys.length).toBeGreaterThan(0);
    } finally {
      await b.close();
    }
  });

  test('a 429 is an audited denial: one record per identity and minute, the repeats folded into a count', async () => {
    const a = await broker('rl-audited', { perSecond: 1, burst: 1 });
    await openRateWindows(a, 'id', `spiffe://dev.local${ORCH}`);
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await call(a.url, 'GET', '/v1/tasks/t-none', a.as(ORCH))).status);
    expect(statuses).toEqual([404, 429, 429, 429, 429, 429]);
    await a.broker.deps.audit.flushFolds(true);
    const records = (await auditRecords(a.broker.deps.redis, a.broker.deps.keys)).filter((r) => r.reason === 'rate_limited');
    // Before: none (only the jit_rate_limited_total metric counted them).
    expect(records.map((r) => ({ action: r.action, actor: r.actor, decision: r.decision, budget: r.detail?.budget }))[0]).toEqual({
      action: 'access.deny',
      actor: `spiffe://dev.local${ORCH}`,
      decision: 'deny',
      budget: 'identity',
    });
    expect(records.length).toBeLessThanOrEqual(2);
    expect(1 + (records[1]?.count ?? 0)).toBe(statuses.filter((s) => s === 429).length);
  });

  test('the budget recovers: after Retry-After seconds the identity may call again', async () => {
    const t = await broker('rl-recover', { perSecond: 1, burst: 2 });
    expect((await call(t.url, 'GET', '/v1/tasks/t-none', t.as(ORCH))).status).toBe(404);
    expect((await call(t.url, 'GET', '/v1/tasks/t-none', t.as(ORCH))).status).toBe(404);
    const r = await call(t.url, 'GET', '/v1/tasks/t-none', t.as(ORCH));
    expect(r.status).toBe(429);
    await new Promise((res) => setTimeout(res, Number(r.headers.get('retry-after')) * 1000 + 50));
    expect((await call(t.url, 'GET', '/v1/tasks/t-none', t.as(ORCH))).status).toBe(404);
  });

  test('admin routes are limited like the rest', async () => {
    const t = await broker('rl-admin', { perSecond: 1, burst: 2 });
    await openRateWindows(t, 'id', `spiffe://dev.local${ADMIN}`);
    const statuses = [];
    for (let i = 0; i < 4; i++) statuses.push((await call(t.url, 'POST', '/v1/admin/rotate', t.as(ADMIN), { target: 'nothing' })).status);
    expect(statuses.slice(0, 2).every((s) => s !== 429)).toBe(true);
    expect(statuses.slice(2)).toEqual([429, 429]);
  });

  test('/v1/token counts against the subject identity once its token is verified: slow_down', async () => {
    const t = await broker('rl-token', { perSecond: 1, burst: 2 });
    await openRateWindows(t, 'id', `spiffe://dev.local${AGENT}`);
    expect((await call(t.url, 'GET', '/v1/tasks/t-none', t.as(AGENT))).status).toBe(404);
    expect((await exchange(t, t.issuer.svid(AGENT))).status).toBe(400); // no such task, but counted
    const r = await exchange(t, t.issuer.svid(AGENT));
    expect(r.status).toBe(429);
    expect(r.body.error).toBe('slow_down');
    expect(typeof r.body.error_description).toBe('string');
    expect(r.headers.get('cache-control')).toBe('no-store');
    expectRetryAfter(r.headers);
    // Another agent's exchange is not affected.
    expect((await exchange(t, t.issuer.svid('/agent/other'))).status).toBe(400);
  });

  test('introspection has its own budget', async () => {
    const t = await broker('rl-introspect', { perSecond: 1, burst: 1, introspect: { perSecond: 2, burst: 3 } });
    const rs = t.as('/resource/tickets');
    await openRateWindows(t, 'id', 'spiffe://dev.local/resource/tickets');
    await openRateWindows(t, 'introspect', 'spiffe://dev.local/resource/tickets');
    expect((await call(t.url, 'GET', '/v1/tasks/t-none', rs)).status).toBe(404);
    expect((await call(t.url, 'GET', '/v1/tasks/t-none', rs)).status).toBe(429);
    const out = [];
    for (let i = 0; i < 4; i++) out.push(await form(t.url, '/v1/introspect', { token: 'x' }, rs));
    expect(out.map((r) => r.status)).toEqual([200, 200, 200, 429]);
    expect(out[0]!.body).toEqual({ active: false });
    expect(out[3]!.body.error).toBe('slow_down');
    expectRetryAfter(out[3]!.headers);
  });

  test('perSecond: 0 turns a limit off', async () => {
    // concurrentReads: 0 too: 150 reads at once would otherwise meet that bound (16), whatever perSecond says.
    const t = await broker('rl-off', { perSecond: 0, unauthenticated: { perSecond: 0 }, concurrentReads: 0 });
    const statuses = await Promise.all(
      Array.from({ length: 150 }, async () => (await call(t.url, 'GET', '/v1/tasks/t-none', t.as(ORCH))).status),
    );
    expect(new Set(statuses)).toEqual(new Set([404]));
    const bad = await Promise.all(
      Array.from({ length: 60 }, async () => (await call(t.url, 'GET', '/v1/tasks/t-none', { authorization: 'Bearer x.y.z' })).status),
    );
    expect(new Set(bad)).toEqual(new Set([401]));
  });
});

describe('unauthenticated callers, per client address, before any signature is checked', () => {
  test('failures are counted; once over, even a valid token is refused without verifying it', async () => {
    const t = await broker('rl-unauth', { unauthenticated: { perSecond: 1, burst: 3 } });
    await openRateWindows(t, 'unauth', '127.0.0.1');
    const verify = jest.spyOn(t.broker.deps.verifier, 'verify');
    const bad = { authorization: `Bearer ${t.issuer.svid(AGENT, { aud: 'someone-else' })}` };
    const out = [];
    for (let i = 0; i < 4; i++) out.push(await call(t.url, 'GET', '/v1/tasks/t-none', bad));
    expect(out.map((r) => r.status)).toEqual([401, 401, 401, 429]);
    expect(out[3]!.body.code).toBe('rate_limited');
    expectRetryAfter(out[3]!.headers);
    verify.mockClear();
    const good = await call(t.url, 'GET', '/v1/tasks/t-none', t.as(ORCH));
    expect(good.status).toBe(429);
    const tok = await exchange(t, t.issuer.svid(AGENT));
    expect(tok.status).toBe(429);
    expect(tok.body.error).toBe('slow_down');
    const intro = await form(t.url, '/v1/introspect', { token: 'x' }, t.as('/resource/tickets'));
    expect(intro.status).toBe(429);
    expect(intro.body.error).toBe('slow_down');
    expect(verify).not.toHaveBeenCalled();
    verify.mockRestore();
    // Unauthenticated routes stay open.
    expect((await call(t.url, 'GET', '/healthz', {})).status).toBe(200);
    expect((await call(t.url, 'GET', '/.well-known/jwks.json', {})).status).toBe(200);
  });

  test('bad subject tokens on /v1/token count too', async () => {
    const t = await broker('rl-unauth-token', { unauthenticated: { perSecond: 1, burst: 2 } });
    await openRateWindows(t, 'unauth', '127.0.0.1');
    const out = [];
    for (let i = 0; i < 3; i++) out.push(await exchange(t, 'not-a-jwt'));
    expect(out.map((r) => r.status)).toEqual([400, 400, 429]);
    expect(out.map((r) => r.body.error)).toEqual(['invalid_grant', 'invalid_grant', 'slow_down']);
  });

  test('shared across instances; other client addresses are not affected (behind a trusted proxy)', async () => {
    const a = await broker('rl-unauth-shared', { unauthenticated: { perSecond: 1, burst: 2 }, trustProxy: 'loopback' });
    const b = await startSibling(a);
    try {
      await openRateWindows(a, 'unauth', '203.0.113.7');
      const from = (ip: string, h: Record<string, string> = {}) => ({ 'x-forwarded-for': ip, ...h });
      const none = (x: TestBroker, ip: string) => call(x.url, 'GET', '/v1/tasks/t-none', from(ip));
      expect((await none(a, '203.0.113.7')).status).toBe(401);
      expect((await none(b, '203.0.113.7')).status).toBe(401);
      expect((await none(a, '203.0.113.7')).status).toBe(429);
      expect((await none(b, '203.0.113.7')).status).toBe(429);
      // Another address, and a valid caller from it, are fine.
      expect((await none(b, '203.0.113.8')).status).toBe(401);
      expect((await call(a.url, 'GET', '/v1/tasks/t-none', from('203.0.113.9', a.as(ORCH)))).status).toBe(404);
    } finally {
      await b.close();
    }
  });

  test('IPv6 callers are counted per /64, not per address', async () => {
    const t = await broker('rl-unauth-v6', { unauthenticated: { perSecond: 1, burst: 2 }, trustProxy: 'loopback' });
    await openRateWindows(t, 'unauth', '2001:db8:1:2::/64');
    const none = (ip: string) => call(t.url, 'GET', '/v1/tasks/t-none', { 'x-forwarded-for': ip });
    expect((await none('2001:db8:1:2::1')).status).toBe(401);
    expect((await none('2001:db8:1:2::ffff:2')).status).toBe(401);
    expect((await none('2001:db8:1:2:aaaa::3')).status).toBe(429);
    expect((await none('2001:db8:1:3::1')).status).toBe(401);
  });
});
