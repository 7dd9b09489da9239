import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import { AGENT, ORCH, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';

let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('credentials');
});
afterAll(async () => {
  await t.close();
});

const agentId = `spiffe://dev.local${AGENT}`;
let n = 0;
async function openTask(over: Record<string, unknown> = {}): Promise<string> {
  const taskId = `t-cred-${++n}`;
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'triage',
    ttlSeconds: 600,
    grants: [
      { role: 'tickets-api', scopes: ['tickets:read', 'tickets:write'], maxTtlSeconds: 300 },
      { role: 'demo-api', scopes: [] },
    ],
    ...over,
  });
  expect(r.status).toBe(201);
  return taskId;
}
const introspect = async (token: string) =>
  (
    await fetch(`${t.url}/v1/introspect`, {
      method: 'POST',
      headers: { ...t.as('/resource/tickets'), 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }),
    })
  ).json() as Promise<Record<string, unknown>>;

describe('issuing jwt credentials', () => {
  test('201 with an RFC 9068 token a resource server verifies against the JWKS, and introspection says active', async () => {
    const taskId = await openTask();
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), {
      taskId,
      role: 'tickets-api',
      scopes: ['tickets:read'],
      ttlSeconds: 120,
    });
    expect(r.status).toBe(201);
    expect(r.headers.get('cache-control')).toBe('no-store');
    expect(r.body).toMatchObject({ taskId, role: 'tickets-api', provider: 'jwt', revocable: true, ttlSeconds: 120 });
    expect(r.body.leaseId).toMatch(/^[0-9a-f]{32}$/);
    const c = r.body.credentials;
    expect(c).toMatchObject({ token_type: 'Bearer', expires_in: 120, scope: 'tickets:read' });
    // The resource server: any JOSE library, against the broker's JWKS.
    const jwks = createRemoteJWKSet(new URL(`${t.url}/.well-known/jwks.json`));
    const { payload, protectedHeader } = await jwtVerify(c.access_token, jwks, {
      issuer: t.config.server.publicUrl,
      audience: 'https://tickets.internal',
      typ: 'at+jwt',
    });
    expect(protectedHeader.alg).toBe('ES256');
    expect(payload).toMatchObject({ sub: agentId, client_id: agentId, scope: 'tickets:read', task_id: taskId, jti: r.body.leaseId });
    expect(payload.exp! - payload.iat!).toBe(120);
    expect(Date.parse(r.body.expiresAt)).toBe(payload.exp! * 1000);
    const active = await introspect(c.access_token);
    expect(active).toMatchObject({
      active: true,
      scope: 'tickets:read',
      sub: agentId,
      aud: 'https://tickets.internal',
      iss: t.config.server.publicUrl,
      jti: r.body.leaseId,
      client_id: agentId,
      task_id: taskId,
    });
    // The lease record never holds the token.
    const raw = await t.broker.deps.redis.hgetall(t.broker.deps.keys.lease(r.body.leaseId));
    expect(JSON.stringify(raw)).not.toContain(c.access_token.split('.')[2]);
  });

  test('scopes default to the grant; TTL defaults to and is clamped by the grant and role', async () => {
    const taskId = await openTask();
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api', ttlSeconds: 5000 });
    expect(r.status).toBe(201);
    expect(r.body.credentials.scope).toBe('tickets:read tickets:write');
    expect(r.body.ttlSeconds).toBe(300); // grant maxTtlSeconds
    const d = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'demo-api' });
    expect(d.body.ttlSeconds).toBe(300); // role maxTtlSeconds (grant defaulted to it)
  });

  test.each([
    ['another agent', '/agent/other', { role: 'tickets-api' }, 403, 'not_task_agent'],
    ['a role not granted', AGENT, { role: 'prod-deploy' }, 403, 'role_not_granted'],
    ['a scope outside the grant', AGENT, { role: 'tickets-api', scopes: ['tickets:admin'] }, 403, 'scope_not_granted'],
    ['an unknown task', AGENT, { taskId: 't-nope', role: 'tickets-api' }, 404, 'task_not_found'],
    ['an unknown field', AGENT, { role: 'tickets-api', foo: 1 }, 400, 'unknown_field'],
    ['a zero TTL', AGENT, { role: 'tickets-api', ttlSeconds: 0 }, 400, 'invalid_request'],
  ])('%s is refused', async (_n, who, over, status, code) => {
    const taskId = await openTask();
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(who), { taskId, ...over });
    expect(r.status).toBe(status);
    expect(r.body.code).toBe(code);
  });

  test('policy denies what the task ceiling allows (ttl above the policy limit) with 403 policy_denied', async () => {
    const taskId = await openTask({ grants: [{ role: 'tickets-api', scopes: ['tickets:read'], maxTtlSeconds: 900 }], ttlSeconds: 7200 });
    // base.cedar permits up to 3600 s; the role allows 900 so the policy passes here...
    expect((await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api' })).status).toBe(201);
    // ...and an identity outside spiffe://dev.local/agent/* matches no permit at all.
    const other = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
      taskId: 't-robot',
      agent: 'spiffe://dev.local/robot/x',
      tenant: 'acme',
      purpose: 'p',
      ttlSeconds: 60,
      grants: [{ role: 'demo-api' }],
    });
    expect(other.status).toBe(201);
    const denied = await call(t.url, 'POST', '/v1/credentials', t.as('/robot/x'), { taskId: 't-robot', role: 'demo-api' });
    expect(denied.status).toBe(403);
    expect(denied.body).toMatchObject({ code: 'policy_denied', reason: 'policy' });
    // The reason class, never the policy text or ids.
    for (const leak of ['agents-issue-within-task', 'principal', 'when', 'cedar']) expect(JSON.stringify(denied.body)).not.toContain(leak);
  });
});

describe('revocation', () => {
  test('task completion makes introspection inactive at once and the lease revoked soon after', async () => {
    const taskId = await openTask();
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api' });
    expect((await introspect(r.body.credentials.access_token)).active).toBe(true);
    await call(t.url, 'POST', `/v1/tasks/${taskId}/complete`, t.as(ORCH));
    expect(await introspect(r.body.credentials.access_token)).toEqual({ active: false });
    const lease = await waitFor(async () => {
      const l = await call(t.url, 'GET', `/v1/leases/${r.body.leaseId}`, t.as(AGENT));
      return l.body.status === 'revoked' && l.body;
    });
    expect(lease).toMatchObject({ reason: 'task_completed', role: 'tickets-api' });
    expect(lease.revokedAt).toBeDefined();
    expect(lease.credentials).toBeUndefined();
  });

  test('DELETE revokes one lease early (agent), leaving the others active', async () => {
    const taskId = await openTask();
    const a = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api' });
    const b = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'demo-api' });
    expect((await call(t.url, 'DELETE', `/v1/leases/${a.body.leaseId}`, t.as('/agent/other'))).status).toBe(403);
    const del = await call(t.url, 'DELETE', `/v1/leases/${a.body.leaseId}`, t.as(AGENT));
    expect(del.status).toBe(202);
    expect(await introspect(a.body.credentials.access_token)).toEqual({ active: false });
    expect((await introspect(b.body.credentials.access_token)).active).toBe(true);
    await waitFor(async () => (await call(t.url, 'GET', `/v1/leases/${a.body.leaseId}`, t.as(ORCH))).body.reason === 'revoked_by_caller');
    expect((await call(t.url, 'DELETE', `/v1/leases/${a.body.leaseId}`, t.as(ORCH))).status).toBe(202);
  });

  test('a lease expires at its TTL: status expired, reason ttl_expired, introspection inactive', async () => {
    const taskId = await openTask();
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api', ttlSeconds: 1 });
    const lease = await waitFor(async () => {
      const l = await call(t.url, 'GET', `/v1/leases/${r.body.leaseId}`, t.as(AGENT));
      return l.body.status === 'expired' && l.body;
    }, 4000);
    expect(lease.reason).toBe('ttl_expired');
    expect(await introspect(r.body.credentials.access_token)).toEqual({ active: false });
  });

  test('introspection: garbage, foreign and tampered tokens are inactive, and the caller must be authenticated', async () => {
    const taskId = await openTask();
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'demo-api' });
    const tok: string = r.body.credentials.access_token;
    const [h, p, s] = tok.split('.');
    const forged = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p!, 'base64url').toString()), scope: 'admin' })).toString(
      'base64url',
    );
    for (const bad of ['x', 'a.b.c', `${h}.${forged}.${s}`, t.issuer.svid('/agent/support')])
      expect(await introspect(bad)).toEqual({ active: false });
    const unauth = await fetch(`${t.url}/v1/introspect`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token: tok }),
    });
    expect(unauth.status).toBe(401);
    expect(((await unauth.json()) as { error: string }).error).toBe('invalid_client');
    expect(decodeProtectedHeader(tok).typ).toBe('at+jwt');
  });
});
