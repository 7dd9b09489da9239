import { AGENT, ADMIN, ORCH, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';

let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('tasks');
});
afterAll(async () => {
  await t.close();
});

/** Redis's clock in ms, truncated as the broker's scripts truncate it. */
async function redisNow(): Promise<number> {
  const [s, us] = await t.broker.deps.redis.time();
  return Number(s) * 1000 + Math.floor(Number(us) / 1000);
}

const agentId = `spiffe://dev.local${AGENT}`;
const body = (over: Record<string, unknown> = {}) => ({
  agent: agentId,
  tenant: 'acme',
  purpose: 'triage ticket 4711',
  ttlSeconds: 600,
  grants: [{ role: 'tickets-api', scopes: ['tickets:read'], maxTtlSeconds: 300 }],
  labels: { ticket: '4711' },
  ...over,
});

describe('opening tasks', () => {
  test('an orchestrator opens a task: 201 with the contract fields', async () => {
    // The deadline is set on Redis's clock (task-open.lua: Redis TIME + ttl), so it is judged on that clock, read
    // just before and just after the call: this process's Date.now may be off Redis's by any amount.
    const before = await redisNow();
    const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), body({ taskId: 't-open-1' }));
    const after = await redisNow();
    expect(r.status).toBe(201);
    expect(r.body).toMatchObject({
      taskId: 't-open-1',
      agent: agentId,
      tenant: 'acme',
      status: 'open',
      grants: [{ role: 'tickets-api', scopes: ['tickets:read'], maxTtlSeconds: 300 }],
    });
    const deadline = Date.parse(r.body.expiresAt);
    expect(deadline).toBeGreaterThanOrEqual(before + 600_000);
    expect(deadline).toBeLessThanOrEqual(after + 600_000);
  });

  test('a generated taskId when absent', async () => {
    const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), body());
    expect(r.status).toBe(201);
    expect(r.body.taskId).toMatch(/^t-[0-9a-f-]{36}$/);
  });

  test('the same request with the same taskId answers 200 with the same task; a different body 409', async () => {
    const first = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), body({ taskId: 't-idem' }));
    const again = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), body({ taskId: 't-idem' }));
    expect(first.status).toBe(201);
    expect(again.status).toBe(200);
    expect(again.body).toEqual(first.body);
    const other = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), body({ taskId: 't-idem', purpose: 'something else' }));
    expect(other.status).toBe(409);
    expect(other.body.code).toBe('task_id_conflict');
  });

  test.each([
    ['an agent (not an orchestrator)', AGENT, 403, 'not_orchestrator'],
    ['an unknown trust domain caller', null, 401, 'identity_invalid'],
  ])('%s cannot open a task', async (_n, who, status, code) => {
    const headers = who
      ? t.as(who)
      : {
          authorization: `Bearer ${t.issuer.signRaw({ alg: 'ES256', kid: t.issuer.kid }, { sub: 'spiffe://evil.example/orch', aud: 'jit-broker', exp: Math.floor(Date.now() / 1000) + 60 })}`,
        };
    const r = await call(t.url, 'POST', '/v1/tasks', headers, body());
    expect(r.status).toBe(status);
    expect(r.body.code).toBe(code);
    expect(r.headers.get('content-type')).toContain('application/problem+json');
  });

  test.each([
    ['a role that is not configured', { grants: [{ role: 'nope', scopes: [] }] }],
    ['a scope the role does not allow', { grants: [{ role: 'tickets-api', scopes: ['tickets:delete'] }] }],
  ])('a caller that may not open tasks learns nothing from %s: 403 not_orchestrator (found by red team)', async (_n, over) => {
    // The grants were checked first: unknown_role / scope_not_allowed (unaudited) told an agent which roles exist.
    const r = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), body({ taskId: 't-probe', ...over }));
    expect(r.status).toBe(403);
    expect(r.body.code).toBe('not_orchestrator');
  });

  test.each([
    ['unknown role', { grants: [{ role: 'nope', scopes: [] }] }, 'unknown_role'],
    ['scope the role does not allow', { grants: [{ role: 'tickets-api', scopes: ['tickets:delete'] }] }, 'scope_not_allowed'],
    ['bad taskId', { taskId: 'has space' }, 'invalid_request'],
    // A URL path segment `..` or `.` is resolved away by every client: /console/tasks/.. is the console's home, and
    // /v1/tasks/../complete is /v1/complete. Such a task could not be opened in the console nor addressed.
    ['a taskId that is a dot segment', { taskId: '..' }, 'invalid_request'],
    ['a taskId that is a single dot', { taskId: '.' }, 'invalid_request'],
    ['unknown field', { extra: 1 }, 'unknown_field'],
    ['missing tenant', { tenant: undefined }, 'invalid_request'],
    ['no grants', { grants: [] }, 'invalid_request'],
    ['duplicate role grants', { grants: [{ role: 'demo-api' }, { role: 'demo-api' }] }, 'invalid_request'],
    ['non-string label', { labels: { a: 1 } }, 'invalid_request'],
    // An identity pattern as the agent: nobody is that agent, and the console's Revoke all / Quarantine on its
    // agent page (which send the agent as the pattern) would stop every agent below it.
    ['an agent that is an identity pattern', { agent: 'spiffe://dev.local/agent/*' }, 'invalid_request'],
    ['ttl above the broker maximum', { ttlSeconds: 7 * 86_400 }, 'ttl_too_long'],
  ])('400 for %s', async (_n, over, code) => {
    const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), body(over));
    expect(r.status).toBe(400);
    expect(r.body.code).toBe(code);
  });
});

describe('reading and completing tasks', () => {
  test('the orchestrator, the agent and an admin may read it; another agent may not', async () => {
    await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), body({ taskId: 't-read' }));
    for (const who of [ORCH, AGENT, ADMIN]) {
      const r = await call(t.url, 'GET', '/v1/tasks/t-read', t.as(who));
      expect(r.status).toBe(200);
      expect(r.body).toMatchObject({ taskId: 't-read', status: 'open', leases: [] });
    }
    expect((await call(t.url, 'GET', '/v1/tasks/t-read', t.as('/agent/other'))).status).toBe(403);
    expect((await call(t.url, 'GET', '/v1/tasks/t-missing', t.as(ORCH))).status).toBe(404);
  });

  test('complete answers 202 with the count of leases it revokes, and is idempotent', async () => {
    await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), body({ taskId: 't-complete' }));
    for (let i = 0; i < 2; i++) {
      const c = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-complete', role: 'tickets-api' });
      expect(c.status).toBe(201);
    }
    const first = await call(t.url, 'POST', '/v1/tasks/t-complete/complete', t.as(ORCH));
    expect(first.status).toBe(202);
    expect(first.body).toEqual({ taskId: 't-complete', status: 'completed', leases: 2 });
    const again = await call(t.url, 'POST', '/v1/tasks/t-complete/complete', t.as(ORCH));
    expect(again.status).toBe(202);
    // Nothing is revoked twice: the repeat revokes no lease.
    expect(again.body).toEqual({ taskId: 't-complete', status: 'completed', leases: 0 });
    const task = await waitFor(async () => {
      const r = await call(t.url, 'GET', '/v1/tasks/t-complete', t.as(ORCH));
      return r.body.leases.every((l: { status: string }) => l.status === 'revoked') && r.body;
    });
    expect(task.status).toBe('completed');
    for (const l of task.leases) expect(l).toMatchObject({ status: 'revoked', reason: 'task_completed' });
    // Once completed, no new credential.
    const late = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-complete', role: 'tickets-api' });
    expect(late.status).toBe(409);
    expect(late.body.code).toBe('task_not_open');
  });

  test('only the opening orchestrator (or an admin) may complete', async () => {
    await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), body({ taskId: 't-owner' }));
    const r = await call(t.url, 'POST', '/v1/tasks/t-owner/complete', t.as(AGENT));
    expect(r.status).toBe(403);
    expect(r.body.code).toBe('not_task_orchestrator');
    expect((await call(t.url, 'POST', '/v1/tasks/t-owner/complete', t.as('/orchestrator/other'))).status).toBe(403);
  });

  test('a task expires at its deadline and its leases are revoked with reason task_expired', async () => {
    await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), body({ taskId: 't-expire', ttlSeconds: 1 }));
    const c = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-expire', role: 'tickets-api' });
    expect(c.status).toBe(201);
    expect(c.body.ttlSeconds).toBeLessThanOrEqual(1); // clamped to the time left on the task
    const task = await waitFor(async () => {
      const r = await call(t.url, 'GET', '/v1/tasks/t-expire', t.as(ORCH));
      return r.body.status === 'expired' && r.body.leases[0]?.status !== 'active' && r.body.leases[0]?.status !== 'revoking' && r.body;
    }, 5000);
    expect(['revoked', 'expired']).toContain(task.leases[0].status);
    const done = await call(t.url, 'POST', '/v1/tasks/t-expire/complete', t.as(ORCH));
    expect(done.status).toBe(409);
    expect(done.body.code).toBe('task_expired');
  });
});
