import { openDeployTask, permitAllPolicies } from '../helpers/approvals.ts';
import { call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Found by a red-team pass: an approver that is also an agent could not approve its own request (403
 * self_approval), but could open a sub-task for a helper identity it controls and approve the helper's
 * request: the check compared the approver with the requesting agent only, not with the delegation
 * chain the request was made under. Policy here permits everything, so only the approval check stands.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('rt-approval-delegator', { config: { policies: permitAllPolicies('rt-approval-delegator') } });
});
afterAll(async () => {
  await t.close();
});

const BOB = '/ops/bob'; // matches `approvers` in the test config
const HELPER = '/agent/bob-helper';
const id = (p: string) => `spiffe://dev.local${p}`;

test('an approver cannot approve a request made by a sub-task it delegated to', async () => {
  await openDeployTask(t, 'rt-deleg-approve', BOB);
  const sub = await call(t.url, 'POST', '/v1/tasks', t.as(BOB), {
    parentTaskId: 'rt-deleg-approve',
    taskId: 'h',
    agent: id(HELPER),
    ttlSeconds: 300,
    grants: [{ role: 'prod-deploy' }],
  });
  expect(sub.status).toBe(201);
  const asked = await call(t.url, 'POST', '/v1/credentials', t.as(HELPER), { taskId: sub.body.taskId, role: 'prod-deploy' });
  expect(asked.status).toBe(202);

  const byBob = await call(t.url, 'POST', `/v1/approvals/${asked.body.approvalId}`, t.as(BOB), { decision: 'approve' });
  expect({ status: byBob.status, code: byBob.body.code }).toEqual({ status: 403, code: 'self_approval' });
  // Another approver still can.
  const byAlice = await call(t.url, 'POST', `/v1/approvals/${asked.body.approvalId}`, t.as('/ops/alice'), { decision: 'approve' });
  expect(byAlice.status).toBe(200);
});
