import { readdirSync } from 'node:fs';
import { CONSOLE_DIST } from '../../src/console/static.ts';
import { ADMIN, AGENT, ORCH, call } from '../helpers/broker.ts';
import { openApiChecker } from '../helpers/openapi.ts';
import { seen } from '../helpers/openapi-setup.ts';
import { type FullBroker, IDP, startFullBroker } from './full-broker.ts';

// Every operation of docs/openapi.yaml, answered at least once with success and
// once with a typical error, by a broker with every router mounted. Each answer
// is checked against the document by test/helpers/openapi-setup.ts; the last
// test fails if an operation went unexercised, so every operation stays
// checked whatever the other tests do.

let b: FullBroker;
const agent = `spiffe://dev.local${AGENT}`;
beforeAll(async () => {
  b = await startFullBroker('oas-cover');
}, 30_000);
afterAll(async () => {
  await b?.close();
});

/** A bearer workload identity for a path under spiffe://dev.local. */
const t = (who: string) => b.t.as(who);
const req = (method: string, path: string, headers: Record<string, string> = {}, body?: unknown) =>
  call(b.url, method, path, headers, body);
const raw = (path: string, init: RequestInit = {}) => fetch(`${b.url}${path}`, { redirect: 'manual', ...init });
const form = (path: string, fields: Record<string, string>, headers: Record<string, string> = {}) =>
  raw(path, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(fields).toString(),
  });
const task = (taskId: string, grants: unknown[], extra: Record<string, unknown> = {}) => ({
  taskId,
  agent,
  tenant: 'acme',
  purpose: 'openapi coverage',
  ttlSeconds: 1800,
  grants,
  ...extra,
});

test('operations: health, readiness, metrics, the document, JWKS, metadata', async () => {
  expect((await req('GET', '/healthz')).status).toBe(200);
  expect((await req('GET', '/readyz')).status).toBe(200);
  const metrics = await raw('/metrics');
  expect(metrics.status).toBe(200);
  expect(await metrics.text()).toContain('# HELP');
  expect((await req('GET', '/openapi.json')).body.servers[0].url).toBe(b.publicUrl);
  expect((await req('GET', '/.well-known/jwks.json')).body.keys.length).toBeGreaterThan(0);
  expect((await req('GET', '/.well-known/oauth-authorization-server')).body.issuer).toBe(b.publicUrl);
});

test('unknown routes and OPTIONS answer 404 route_not_found problems', async () => {
  for (const [method, path] of [
    ['GET', '/nope'],
    ['OPTIONS', '/v1/tasks'],
    ['OPTIONS', '/healthz'],
    ['PUT', '/healthz'],
    ['GET', '/v1/token'],
  ] as const) {
    const res = await req(method, path, t(ORCH));
    expect([method, path, res.status, res.headers.get('content-type')]).toEqual([
      method,
      path,
      404,
      'application/problem+json; charset=utf-8',
    ]);
    expect(res.body.code).toBe('route_not_found');
  }
  expect((await req('GET', '/v1/nope')).status).toBe(401);
});

describe('tasks, credentials, leases, approvals, audit', () => {
  let leaseId: string;
  let approvalId: string;

  test('open a task: 201, the same again 200, another body 409, and the typical refusals', async () => {
    const body = task('t-cover', [
      { role: 'tickets-api', scopes: ['tickets:read'] },
      { role: 'prod-deploy' },
      { role: 'reports-bucket', scopes: ['s3:GetObject'] },
    ]);
    expect((await req('POST', '/v1/tasks', t(ORCH), body)).status).toBe(201);
    expect((await req('POST', '/v1/tasks', t(ORCH), body)).status).toBe(200);
    expect((await req('POST', '/v1/tasks', t(ORCH), { ...body, purpose: 'other' })).body.code).toBe('task_id_conflict');
    expect((await req('POST', '/v1/tasks', t(ORCH), { ...body, taskId: 'a~b' })).body.code).toBe('invalid_task_id');
    expect((await req('POST', '/v1/tasks', t(ORCH), { ...body, taskId: 't-x', bogus: 1 })).body.code).toBe('unknown_field');
    expect((await req('POST', '/v1/tasks', t(AGENT), { ...body, taskId: 't-y' })).body.code).toBe('not_orchestrator');
    expect((await req('POST', '/v1/tasks', {}, body)).body.code).toBe('identity_missing');
    expect((await req('POST', '/v1/tasks', t(AGENT), { ...body, taskId: 'sub', parentTaskId: 'nope' })).body.code).toBe('task_not_found');
    const text = await raw('/v1/tasks', { method: 'POST', headers: { ...t(ORCH), 'content-type': 'text/plain' }, body: 'x' });
    expect(text.status).toBe(415);
    const big = await raw('/v1/tasks', {
      method: 'POST',
      headers: { ...t(ORCH), 'content-type': 'application/json' },
      body: JSON.stringify({ ...body, purpose: 'x'.repeat(100_000) }),
    });
    expect(big.status).toBe(413);
    const bad = await raw('/v1/tasks', { method: 'POST', headers: { ...t(ORCH), 'content-type': 'application/json' }, body: '{' });
    expect(((await bad.json()) as { code: string }).code).toBe('malformed_json');
  });

  test('a sub-task, lists and reads', async () => {
    const sub = await req('POST', '/v1/tasks', t(AGENT), {
      taskId: 'sub',
      parentTaskId: 't-cover',
      agent: 'spiffe://dev.local/agent/helper',
      ttlSeconds: 600,
      grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
    });
    expect(sub.status).toBe(201);
    expect(sub.body.taskId).toBe('t-cover~sub');
    expect((await req('GET', '/v1/tasks?status=open&limit=10', t(ORCH))).status).toBe(200);
    expect((await req('GET', '/v1/tasks?limit=501', t(ORCH))).body.code).toBe('invalid_request');
    expect((await req('GET', '/v1/tasks?cursor=nope', t(ORCH))).body.code).toBe('invalid_cursor');
    expect((await req('GET', '/v1/tasks/t-cover', t(ORCH))).status).toBe(200);
    expect((await req('GET', '/v1/tasks/t-cover~sub', t(AGENT))).status).toBe(200);
    expect((await req('GET', '/v1/tasks/nope', t(ORCH))).body.code).toBe('task_not_found');
    expect((await req('GET', '/v1/tasks/a%20b', t(ORCH))).body.code).toBe('invalid_id');
    expect((await req('GET', '/v1/tasks/t-cover', t('/agent/other'))).body.code).toBe('not_task_party');
  });

  test('credentials: jwt 201, aws 201, approval 202 then 201, and the refusals', async () => {
    const jwt = await req('POST', '/v1/credentials', t(AGENT), { taskId: 't-cover', role: 'tickets-api', ttlSeconds: 120 });
    expect(jwt.status).toBe(201);
    leaseId = jwt.body.leaseId;
    expect((await req('POST', '/v1/credentials', t(AGENT), { taskId: 't-cover', role: 'reports-bucket' })).status).toBe(201);
    const pending = await req('POST', '/v1/credentials', t(AGENT), { taskId: 't-cover', role: 'prod-deploy' });
    expect(pending.status).toBe(202);
    approvalId = pending.body.approvalId;
    expect((await req('POST', '/v1/credentials', t(AGENT), { taskId: 't-cover', role: 'demo-api' })).body.code).toBe('role_not_granted');
    expect((await req('POST', '/v1/credentials', t('/agent/other'), { taskId: 't-cover', role: 'tickets-api' })).body.code).toBe(
      'not_task_agent',
    );
    expect((await req('POST', '/v1/credentials', t(AGENT), { taskId: 'nope', role: 'tickets-api' })).body.code).toBe('task_not_found');
    expect((await req('POST', '/v1/credentials', t(AGENT), { taskId: 't-cover', role: 'tickets-api', scopes: ['x'] })).status).toBe(403);
  });

  test('approvals: list, read, decide, decided again 409; the approved request answers 201 once', async () => {
    expect((await req('GET', '/v1/approvals?status=pending', t(ADMIN))).body.items.length).toBeGreaterThan(0);
    expect((await req('GET', '/v1/approvals?status=maybe', t(ADMIN))).status).toBe(400);
    expect((await req('GET', `/v1/approvals/${approvalId}`, t(AGENT))).body.status).toBe('pending');
    expect((await req('GET', `/v1/approvals/${'0'.repeat(32)}`, t(ADMIN))).body.code).toBe('approval_not_found');
    expect((await req('POST', `/v1/approvals/${approvalId}`, t(AGENT), { decision: 'approve' })).body.code).toBe('not_approver');
    expect((await req('POST', `/v1/approvals/${approvalId}`, t(ADMIN), { decision: 'approve', reason: 'change 1' })).status).toBe(200);
    expect((await req('POST', `/v1/approvals/${approvalId}`, t(ADMIN), { decision: 'reject' })).body.code).toBe('approval_decided');
    expect((await req('POST', '/v1/credentials', t(AGENT), { taskId: 't-cover', role: 'prod-deploy' })).status).toBe(201);
  });

  test('leases: read, revoke, and the refusals', async () => {
    expect((await req('GET', `/v1/leases/${leaseId}`, t(AGENT))).body.status).toBe('active');
    expect((await req('GET', `/v1/leases/${leaseId}`, t('/agent/other'))).body.code).toBe('not_lease_party');
    expect((await req('GET', `/v1/leases/${'0'.repeat(32)}`, t(AGENT))).body.code).toBe('lease_not_found');
    expect((await req('GET', '/v1/leases/xyz', t(AGENT))).body.code).toBe('lease_not_found');
    expect((await req('DELETE', `/v1/leases/${leaseId}`, t(AGENT))).status).toBe(202);
    expect((await req('DELETE', `/v1/leases/${'0'.repeat(32)}`, t(AGENT))).status).toBe(404);
  });

  test('OAuth: token exchange, introspection, their RFC 6749 errors', async () => {
    const exchange = {
      grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
      subject_token: b.t.issuer.svid(AGENT),
      subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      audience: 'tickets-api',
      scope: 'tickets:read',
      task_id: 't-cover',
    };
    const ok = await form('/v1/token', exchange);
    expect(ok.status).toBe(200);
    const { access_token } = (await ok.json()) as { access_token: string };
    expect(((await (await form('/v1/token', { ...exchange, subject_token: 'x' })).json()) as { error: string }).error).toBe(
      'invalid_grant',
    );
    expect((await form('/v1/token', { ...exchange, audience: 'prod-deploy' })).status).toBe(400);
    expect((await raw('/v1/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })).status).toBe(415);
    const active = await form('/v1/introspect', { token: access_token }, t('/resource/tickets'));
    expect(await active.json()).toMatchObject({ active: true, task_id: 't-cover' });
    expect(await (await form('/v1/introspect', { token: 'x' }, t('/resource/tickets'))).json()).toEqual({ active: false });
    expect((await form('/v1/introspect', {}, t('/resource/tickets'))).status).toBe(400);
    expect((await form('/v1/introspect', { token: access_token })).status).toBe(401);
  });

  test('AWS container credentials: the SDK shape, and problems with Code and Message', async () => {
    const path = '/v1/aws/container-credentials/t-cover/reports-bucket';
    const token = b.t.issuer.svid(AGENT, { ttl: 600 });
    const ok = await req('GET', `${path}?scope=s3:GetObject`, { authorization: token });
    expect(ok.status).toBe(200);
    expect(Object.keys(ok.body).sort()).toEqual(['AccessKeyId', 'Expiration', 'SecretAccessKey', 'Token']);
    const missing = await req('GET', path);
    expect([missing.status, missing.body.Code, missing.headers.get('www-authenticate')]).toEqual([401, 'identity_missing', 'Bearer']);
    expect((await req('GET', '/v1/aws/container-credentials/t-cover/tickets-api', { authorization: token })).body.Code).toBe(
      'not_an_aws_role',
    );
    expect((await req('GET', path, { authorization: b.t.issuer.svid('/agent/other') })).body.Code).toBe('not_task_agent');
    expect((await req('GET', '/v1/aws/container-credentials/nope/reports-bucket', { authorization: token })).status).toBe(404);
    // Redis out of reach: 503 to retry, as on every route.
    const { credentials } = b.t.broker.services;
    const request = credentials.request;
    credentials.request = async () => {
      throw new Error('Connection is closed.');
    };
    try {
      const down = await req('GET', path, { authorization: token });
      expect([down.status, down.body.Code]).toEqual([503, 'not_ready']);
    } finally {
      credentials.request = request;
    }
    // A path Express cannot decode is refused in the same shape.
    const undecodable = await req('GET', '/v1/aws/container-credentials/%C0%AF/reports-bucket', { authorization: token });
    expect([undecodable.status, undecodable.body.Code]).toEqual([400, 'invalid_request']);
  });

  test('audit and evidence', async () => {
    expect((await req('GET', '/v1/audit?taskId=t-cover&limit=5', t(ORCH))).body.items.length).toBe(5);
    expect((await req('GET', `/v1/audit?action=task.open&since=${new Date(Date.now() - 60_000).toISOString()}`, t(ADMIN))).status).toBe(
      200,
    );
    expect((await req('GET', '/v1/audit', t(ORCH))).body.code).toBe('audit_task_required');
    expect((await req('GET', '/v1/audit?taskId=nope', t(ORCH))).status).toBe(404);
    const evidence = await req('GET', '/v1/tasks/t-cover/evidence?limit=3', t(ORCH));
    expect(evidence.body.chain).toBe('intact');
    expect(evidence.body.tree).toHaveLength(2);
    expect((await req('GET', '/v1/tasks/nope/evidence', t(ORCH))).status).toBe(404);
    const leases = await req('GET', '/v1/tasks/t-cover/leases?tree=true&limit=1', t(ORCH));
    expect(leases.status).toBe(200);
    expect((await req('GET', '/v1/tasks/t-cover/leases?tree=maybe', t(ORCH))).status).toBe(400);
  });

  test('complete: 202 (twice), and the refusals', async () => {
    expect((await req('POST', '/v1/tasks/t-cover/complete', t(AGENT))).body.code).toBe('not_task_orchestrator');
    expect((await req('POST', '/v1/tasks/t-cover/complete', t(ORCH))).status).toBe(202);
    expect((await req('POST', '/v1/tasks/t-cover/complete', t(ORCH), {})).body).toMatchObject({ status: 'completed' });
    expect((await req('POST', '/v1/tasks/nope/complete', t(ORCH))).status).toBe(404);
    expect((await req('POST', '/v1/tasks/t-cover/complete', t(ORCH), { now: true })).body.code).toBe('unknown_field');
    expect((await req('POST', '/v1/credentials', t(AGENT), { taskId: 't-cover', role: 'tickets-api' })).body.code).toBe('task_not_open');
  });
});

describe('admin', () => {
  test('rotate and reload policy', async () => {
    const rotated = await req('POST', '/v1/admin/rotate', t(ADMIN), { target: 'signing-key' });
    expect(rotated.status).toBe(202);
    expect(rotated.body.rotated).toEqual(['signing-key']);
    expect((await req('POST', '/v1/admin/rotate', t(ADMIN), { target: 'nothing' })).body.code).toBe('unknown_rotation_target');
    expect((await req('POST', '/v1/admin/rotate', t(ORCH), { target: 'signing-key' })).body.code).toBe('not_admin');
    expect((await req('POST', '/v1/admin/policy/reload', t(ADMIN))).status).toBe(202);
    expect((await req('POST', '/v1/admin/policy/reload', t(AGENT))).status).toBe(403);
  });

  test('kill switch and quarantine', async () => {
    await req('POST', '/v1/tasks', t(ORCH), task('t-kill', [{ role: 'tickets-api' }]));
    expect((await req('POST', '/v1/admin/revoke', t(ADMIN), { taskId: 't-kill' })).body).toEqual({ tasks: 1, leases: 0 });
    expect((await req('POST', '/v1/admin/revoke', t(ADMIN), { taskId: 't-kill', tenant: 'acme' })).status).toBe(400);
    expect((await req('POST', '/v1/admin/revoke', t(AGENT), { tenant: 'acme' })).status).toBe(403);
    const pattern = 'spiffe://dev.local/agent/rogue/*';
    expect((await req('POST', '/v1/admin/quarantine', t(ADMIN), { agent: pattern, reason: 'leaked' })).status).toBe(201);
    expect((await req('POST', '/v1/admin/quarantine', t(ADMIN), { agent: 'spiffe://dev.local/ops/*', reason: 'x' })).body.code).toBe(
      'quarantine_self',
    );
    expect((await req('GET', '/v1/tasks', t('/agent/rogue/1'))).body.code).toBe('identity_quarantined');
    expect((await req('GET', '/v1/admin/quarantine', t(ADMIN))).body.items).toHaveLength(1);
    expect((await req('GET', '/v1/admin/quarantine', t(ORCH))).status).toBe(403);
    expect((await req('DELETE', `/v1/admin/quarantine/${encodeURIComponent(pattern)}`, t(ADMIN))).body).toEqual({ pattern, lifted: true });
    expect((await req('DELETE', `/v1/admin/quarantine/${encodeURIComponent(pattern)}`, t(ADMIN))).body.code).toBe('quarantine_not_found');
  });

  test('audit seals: every chain for an admin (the ops chain has records), 403 for anyone else, 400 for a parameter', async () => {
    const seals = await req('GET', '/v1/admin/audit/seals', t(ADMIN));
    expect(seals.status).toBe(200);
    expect(seals.body.chains.find((c: { chain: unknown }) => c.chain === 'ops')).toMatchObject({ headSeq: expect.any(Number) });
    expect((await req('GET', '/v1/admin/audit/seals', t(ORCH))).status).toBe(403);
    expect((await req('GET', '/v1/admin/audit/seals?x=1', t(ADMIN))).status).toBe(400);
  });
});

describe('console', () => {
  test('session, metrics, sign-out, and the /v1 operations under /console/api', async () => {
    expect((await req('GET', '/console/api/session')).body).toEqual({ signedIn: false });
    const cookie = await b.session('admin');
    expect((await req('GET', '/console/api/session', { cookie })).body).toMatchObject({ signedIn: true, identity: `${IDP}#admin` });
    expect((await req('GET', '/console/api/metrics', { cookie })).status).toBe(200);
    expect((await req('GET', '/console/api/metrics')).body.code).toBe('console_signed_out');
    expect((await req('GET', '/console/api/v1/tasks', { cookie })).status).toBe(200);
    expect((await req('GET', '/console/api/v1/admin/quarantine', { cookie })).status).toBe(200);
    const open = task('t-console', [{ role: 'tickets-api' }]);
    expect((await req('POST', '/console/api/v1/tasks', { cookie }, open)).body.code).toBe('console_csrf');
    expect((await req('POST', '/console/api/v1/admin/revoke', { cookie, 'x-jit-console': '1' }, { tenant: 'nobody' })).status).toBe(202);
    expect((await req('DELETE', '/console/api/session', { cookie })).body.code).toBe('console_csrf');
    expect((await req('DELETE', '/console/api/session', { cookie, 'x-jit-console': '1' })).status).toBe(204);
    expect((await req('DELETE', '/console/api/session', { cookie, 'x-jit-console': '1' })).status).toBe(401);
    expect((await req('GET', '/console/api/nope', { cookie })).status).toBe(404);
    expect((await req('GET', '/console/API/v1/nope', { cookie: await b.session('admin') })).body.code).toBe('route_not_found');
  });

  test('sign-in redirects, the page, deep links and assets', async () => {
    const login = await raw('/console/login?return=/console/tasks');
    expect([login.status, login.headers.get('location')]).toEqual([303, '/console/?signin_error=provider_unavailable']);
    expect((await raw('/console/callback?code=x&state=nope')).headers.get('location')).toBe('/console/?signin_error=state_unknown');
    expect((await raw('/console')).status).toBe(301);
    for (const path of ['/console/', '/console/tasks/t-1', '/console/favicon.svg']) expect((await raw(path)).status).toBe(200);
    // Paths match case-insensitively: /console/API/... is the API (or no route), never the page.
    expect((await raw('/console/API/x')).status).toBe(404);
    const asset = readdirSync(`${CONSOLE_DIST}assets`).find((f) => f.endsWith('.js'));
    expect((await raw(`/console/assets/${asset}`)).status).toBe(200);
    expect((await raw('/console/assets/nope.js')).status).toBe(404);
    // Last, as it leaves this address blocked for a few seconds: sign-in requests spend the unauthenticated budget.
    const limited = async (path: string) => {
      for (let i = 0; i < 100; i++) {
        const res = await raw(path);
        if (res.status === 429) return res;
      }
      throw new Error(`${path} was never limited`);
    };
    expect(Number((await limited('/console/callback?code=x&state=nope')).headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect((await limited('/console/login')).status).toBe(429);
  });
});

test('every documented operation was answered here, with success and (where it has them) with an error', () => {
  const missing: string[] = [];
  for (const o of openApiChecker().operations) {
    const statuses = [...(seen.get(o.id) ?? [])];
    if (!statuses.some((s) => s < 400)) missing.push(`${o.id}: no success`);
    const errors = Object.keys(o.op.responses).filter((s) => /^4/.test(s));
    if (errors.length > 0 && !statuses.some((s) => s >= 400 && s < 500)) missing.push(`${o.id}: no error`);
  }
  expect(missing).toEqual([]);
  expect([...seen.keys()].filter((k) => k.startsWith('console:')).length).toBeGreaterThanOrEqual(3);
});
