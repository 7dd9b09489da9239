import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

// Black-box finding: one number answered two ways. A task `ttlSeconds` over `tasks.maxTtlSeconds` (86,400
// here) answered 400 `ttl_too_long` up to 604,800 and 400 `invalid_request` (a schema bound) above it; a
// credential `ttlSeconds` or a grant `maxTtlSeconds` was clamped to the role's maximum up to 604,800 and
// refused above it. Now the schema says only what is malformed; what is too long is the config's to say.
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('bb-ttl', { config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080' } } });
});
afterAll(async () => {
  await t.close();
});

const AGENT_ID = `spiffe://dev.local${AGENT}`;
const task = (taskId: string, extra: Record<string, unknown> = {}) => ({
  taskId,
  agent: AGENT_ID,
  tenant: 'acme',
  purpose: 'p',
  ttlSeconds: 600,
  grants: [{ role: 'demo-api' }],
  ...extra,
});
const TOO_LONG = [86_401, 604_800, 604_801, 10_000_000, Number.MAX_SAFE_INTEGER];
const MALFORMED: unknown[] = [0, -1, 1.5, Number.MAX_SAFE_INTEGER + 1, 1e300, '60'];

test('any whole ttlSeconds over tasks.maxTtlSeconds is ttl_too_long, for tasks and sub-tasks alike (found by black-box red team)', async () => {
  expect((await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), task('bb-ttl-parent'))).status).toBe(201);
  for (const ttlSeconds of TOO_LONG) {
    const root = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), task(`bb-ttl-${ttlSeconds}`, { ttlSeconds }));
    // Before: 604,801 and above answered invalid_request (field ttlSeconds), below it ttl_too_long.
    expect(['root', ttlSeconds, root.status, root.body.code]).toEqual(['root', ttlSeconds, 400, 'ttl_too_long']);
    const sub = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
      parentTaskId: 'bb-ttl-parent',
      taskId: 's',
      agent: AGENT_ID,
      ttlSeconds,
      grants: [{ role: 'demo-api' }],
    });
    expect(['sub', ttlSeconds, sub.status, sub.body.code]).toEqual(['sub', ttlSeconds, 400, 'ttl_too_long']);
  }
  // What is no TTL at all stays a malformed field.
  for (const ttlSeconds of MALFORMED) {
    const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), task('bb-ttl-bad', { ttlSeconds }));
    expect([ttlSeconds, r.status, r.body.code, r.body.field]).toEqual([ttlSeconds, 400, 'invalid_request', 'ttlSeconds']);
  }
});

test('a credential ttlSeconds or a grant maxTtlSeconds over every maximum is clamped, whatever the number (found by black-box red team)', async () => {
  // A grant ceiling above the role's maximum (demo-api: 300 s) is a ceiling the role's maximum lowers.
  for (const maxTtlSeconds of [604_800, 604_801, Number.MAX_SAFE_INTEGER]) {
    const id = `bb-ttl-grant-${maxTtlSeconds}`;
    const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), task(id, { grants: [{ role: 'demo-api', maxTtlSeconds }] }));
    // Before: 201 for 604,800, 400 invalid_request (field grants.0.maxTtlSeconds) above it.
    expect([maxTtlSeconds, open.status]).toEqual([maxTtlSeconds, 201]);
    const cred = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: id, role: 'demo-api' });
    expect([maxTtlSeconds, cred.status, cred.body.ttlSeconds]).toEqual([maxTtlSeconds, 201, 300]);
  }
  expect((await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), task('bb-ttl-cred'))).status).toBe(201);
  for (const ttlSeconds of [604_800, 604_801, 10_000_000, Number.MAX_SAFE_INTEGER]) {
    const cred = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'bb-ttl-cred', role: 'demo-api', ttlSeconds });
    // Before: 201 with 300 s for 604,800, 400 invalid_request (field ttlSeconds) above it.
    expect([ttlSeconds, cred.status, cred.body.ttlSeconds]).toEqual([ttlSeconds, 201, 300]);
  }
  for (const ttlSeconds of MALFORMED) {
    const cred = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'bb-ttl-cred', role: 'demo-api', ttlSeconds });
    expect([ttlSeconds, cred.status, cred.body.code, cred.body.field]).toEqual([ttlSeconds, 400, 'invalid_request', 'ttlSeconds']);
    const open = await call(
      t.url,
      'POST',
      '/v1/tasks',
      t.as(ORCH),
      task('bb-ttl-bad', { grants: [{ role: 'demo-api', maxTtlSeconds: ttlSeconds }] }),
    );
    expect([ttlSeconds, open.status, open.body.code, open.body.field]).toEqual([
      ttlSeconds,
      400,
      'invalid_request',
      'grants.0.maxTtlSeconds',
    ]);
  }
});
