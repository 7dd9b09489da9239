import { AGENT, ADMIN, ORCH, auditRecords, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

let t: TestBroker;
const agentId = `spiffe://dev.local${AGENT}`;
let n = 0;
beforeAll(async () => {
  t = await startTestBroker('approvals');
});
afterAll(async () => {
  await t.close();
});

async function openTask(ttlSeconds = 600): Promise<string> {
  const taskId = `t-appr-${++n}`;
  await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'deploy',
    ttlSeconds,
    grants: [{ role: 'prod-deploy' }],
  });
  return taskId;
}
const ask = (taskId: string) => call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'prod-deploy' });

test('pending, then approved: the same request gets the credential once', async () => {
  const taskId = await openTask();
  const first = await ask(taskId);
  expect(first.status).toBe(202);
  expect(first.body).toEqual({ approvalId: expect.stringMatching(/^[0-9a-f]{32}$/), status: 'pending' });
  expect((await ask(taskId)).body.approvalId).toBe(first.body.approvalId);
  const status = await call(t.url, 'GET', `/v1/approvals/${first.body.approvalId}`, t.as(AGENT));
  expect(status.body).toMatchObject({ status: 'pending', taskId, role: 'prod-deploy' });
  const ok = await call(t.url, 'POST', `/v1/approvals/${first.body.approvalId}`, t.as(ADMIN), { decision: 'approve', reason: 'change 42' });
  expect(ok.status).toBe(200);
  expect(ok.body).toMatchObject({ status: 'approved', decidedBy: `spiffe://dev.local${ADMIN}` });
  const issued = await ask(taskId);
  expect(issued.status).toBe(201);
  expect(issued.body.role).toBe('prod-deploy');
  // One approval, one credential: the next request waits for a new approval.
  const next = await ask(taskId);
  expect(next.status).toBe(202);
  expect(next.body.approvalId).not.toBe(first.body.approvalId);
});

test('rejected → 403; deciding twice → 409', async () => {
  const taskId = await openTask();
  const { body } = await ask(taskId);
  expect((await call(t.url, 'POST', `/v1/approvals/${body.approvalId}`, t.as(ADMIN), { decision: 'reject', reason: 'no' })).status).toBe(
    200,
  );
  const denied = await ask(taskId);
  expect(denied.status).toBe(403);
  expect(denied.body.code).toBe('approval_rejected');
  const again = await call(t.url, 'POST', `/v1/approvals/${body.approvalId}`, t.as(ADMIN), { decision: 'approve' });
  expect([again.status, again.body.code]).toEqual([409, 'approval_decided']);
  // Found by the black-box red team: an approver trying to turn a rejection into an approval left no record.
  await t.broker.deps.audit.flush();
  const records = await auditRecords(t.broker.deps.redis, t.broker.deps.keys);
  expect(records.filter((r) => r.action === 'approval.decide' && r.reason === 'approval_decided')).toEqual([
    expect.objectContaining({ actor: `spiffe://dev.local${ADMIN}`, decision: 'deny', taskId, detail: { approvalId: body.approvalId } }),
  ]);
});

test('an identity outside approvers cannot decide; an agent cannot approve itself', async () => {
  const taskId = await openTask();
  const { body } = await ask(taskId);
  const r = await call(t.url, 'POST', `/v1/approvals/${body.approvalId}`, t.as(ORCH), { decision: 'approve' });
  expect(r.status).toBe(403);
  expect(r.body.code).toBe('not_approver');
  expect((await call(t.url, 'POST', `/v1/approvals/${body.approvalId}`, t.as(ADMIN), { decision: 'maybe' })).status).toBe(400);
});

test('approvals end with their task', async () => {
  const taskId = await openTask(1);
  const { body } = await ask(taskId);
  await new Promise((r) => setTimeout(r, 1100));
  const r = await call(t.url, 'POST', `/v1/approvals/${body.approvalId}`, t.as(ADMIN), { decision: 'approve' });
  expect(r.status === 409 || r.status === 404).toBe(true);
});

test('approvals end with their task: once it is completed, pending and approved ones read expired and are not listed as such', async () => {
  const pendingTask = await openTask();
  const pending = await ask(pendingTask);
  const approvedTask = await openTask();
  const approved = await ask(approvedTask);
  expect([pending.status, approved.status]).toEqual([202, 202]);
  const ok = await call(t.url, 'POST', `/v1/approvals/${approved.body.approvalId}`, t.as(ADMIN), { decision: 'approve' });
  expect(ok.status).toBe(200);
  for (const taskId of [pendingTask, approvedTask]) {
    expect((await call(t.url, 'POST', `/v1/tasks/${taskId}/complete`, t.as(ORCH))).status).toBe(202);
  }
  // Before: `pending` and `approved` until the task's original deadline.
  for (const id of [pending.body.approvalId, approved.body.approvalId]) {
    expect((await call(t.url, 'GET', `/v1/approvals/${id}`, t.as(ADMIN))).body.status).toBe('expired');
  }
  const listed = async (status: string) =>
    ((await call(t.url, 'GET', `/v1/approvals?status=${status}&limit=500`, t.as(ADMIN))).body.items as { approvalId: string }[]).map(
      (i) => i.approvalId,
    );
  expect(await listed('pending')).not.toContain(pending.body.approvalId);
  expect(await listed('approved')).not.toContain(approved.body.approvalId);
  expect(await listed('expired')).toEqual(expect.arrayContaining([pending.body.approvalId, approved.body.approvalId]));
});
