import { decodeJwt } from 'jose';
import { ADMIN, AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: a broker JWT could outlive its task. The TTL was clamped to the time left on the task when the request
 * was decided, and `exp` set from the time the token was signed: everything between (policy, the approval's
 * lookup and use, each a Redis round trip that a loaded Redis answers late) was added to the token's life past
 * the task's deadline. With under a second left, the 1-s minimum alone did the same. A resource server verifying
 * offline accepts the token until `exp`, after the task is over; the AWS provider already bounds its sessions by
 * the task's deadline. `exp` is now never past the task's deadline.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('rt-jwt-exp');
});
afterAll(async () => {
  await t?.close();
});

test("a token signed after a slow decision still ends by its task's deadline", async () => {
  const taskId = 'rt-jwt-exp-1';
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'deploy',
    ttlSeconds: 20,
    grants: [{ role: 'prod-deploy' }],
  });
  expect(open.status).toBe(201);
  const deadline = Date.parse(open.body.expiresAt);
  const ask = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'prod-deploy' });
  expect(ask.status).toBe(202);
  const ok = await call(t.url, 'POST', `/v1/approvals/${ask.body.approvalId}`, t.as(ADMIN), { decision: 'approve' });
  expect(ok.status).toBe(200);

  // The approval's use answers late, as a loaded Redis does: the request was decided (and its TTL clamped to the
  // task) before, the token is signed after.
  const approvals = t.broker.deps.approvals;
  const consume = approvals.consume.bind(approvals);
  approvals.consume = async (r) => {
    await new Promise((res) => setTimeout(res, 3000));
    return consume(r);
  };
  let r: Awaited<ReturnType<typeof call>>;
  try {
    r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'prod-deploy' });
  } finally {
    approvals.consume = consume;
  }
  expect(r.status).toBe(201);
  const { exp } = decodeJwt(r.body.credentials.access_token);
  expect(exp! * 1000).toBeLessThanOrEqual(deadline);
  expect(Date.parse(r.body.expiresAt)).toBeLessThanOrEqual(deadline);
  // The lease ends with the token.
  const lease = await call(t.url, 'GET', `/v1/leases/${r.body.leaseId}`, t.as(AGENT));
  expect(Date.parse(lease.body.expiresAt)).toBe(exp! * 1000);
});

test('with under a second left on the task, the 1-s minimum does not carry the token past the deadline', async () => {
  const taskId = 'rt-jwt-exp-2';
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 3,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
  });
  expect(open.status).toBe(201);
  const deadline = Date.parse(open.body.expiresAt);
  // Wait on the broker's clock until less than a second is left (but some is).
  const clock = t.broker.deps.clock;
  while (deadline - clock.now() > 700) await new Promise((res) => setTimeout(res, 20));
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api' });
  // 409 when the deadline falls within the second of the signature (a token would be dead on arrival: `expires_in` 0,
  // which the API document does not allow and CI once saw), or the machine was too slow to ask in time.
  if (r.status === 409) {
    expect(r.body.code).toBe('task_not_open');
    return;
  }
  expect(r.status).toBe(201);
  const { exp, iat } = decodeJwt(r.body.credentials.access_token);
  expect(exp! * 1000).toBeLessThanOrEqual(deadline);
  expect(exp!).toBeGreaterThan(iat!);
  expect(r.body.credentials.expires_in).toBeGreaterThanOrEqual(1);
});

test('a deadline within the second of the signature is refused as an ended task, before any lease is recorded', async () => {
  // Ask repeatedly in the task's last second: every answer is a 409 or a token that lives at least a second.
  const taskId = 'rt-jwt-exp-3';
  const clock = t.broker.deps.clock;
  // Opened early in a second, so that its deadline (3 s on) leaves most of its own second to ask in.
  while (clock.now() % 1000 > 300) await new Promise((res) => setTimeout(res, 5));
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 3,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
  });
  expect(open.status).toBe(201);
  const deadline = Date.parse(open.body.expiresAt);
  // From the start of the deadline's own second on (before the deadline itself): a token signed now would get
  // exp = that second = iat. Before: 201 with expires_in 0.
  const second = Math.floor(deadline / 1000) * 1000;
  if (deadline - second < 150) return; // too little of that second left to ask in on a loaded machine
  while (clock.now() < second) await new Promise((res) => setTimeout(res, 5));
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api' });
  expect([r.status, r.body.code]).toEqual([409, 'task_not_open']);
  const leases = await call(t.url, 'GET', `/v1/tasks/${taskId}/leases`, t.as(ORCH));
  expect(leases.body.items).toEqual([]);
});
