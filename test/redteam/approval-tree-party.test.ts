import { openDeployTask, permitAllPolicies } from '../helpers/approvals.ts';
import { call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Found by a red-team pass on authorization boundaries: an approver refused on requests made by its own
 * delegates (test/redteam/approval-delegator.test.ts) could still approve a request of the agent that had
 * delegated work TO it, or of another sub-agent of the same tree: a requesting agent opens a sub-task for an
 * approver identity (an AI agent acting on the sub-task's instructions, which the requester writes) and that
 * approver approves the requester's own request. Every agent of one task tree works on one unit of work for
 * the root agent: none of them is a second pair of eyes on another's request. Policy here permits everything,
 * so only the approval check stands.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('rt-approval-tree', { config: { policies: permitAllPolicies('rt-approval-tree') } });
});
afterAll(async () => {
  await t.close();
});

const REQUESTER = '/agent/rt-tree-requester';
const BOB = '/ops/bob'; // matches `approvers` in the test config
const id = (p: string) => `spiffe://dev.local${p}`;

async function subtask(parent: string, name: string, agent: string, by: string): Promise<string> {
  const sub = await call(t.url, 'POST', '/v1/tasks', t.as(by), {
    parentTaskId: parent,
    taskId: name,
    agent: id(agent),
    ttlSeconds: 300,
    grants: [{ role: 'prod-deploy' }],
  });
  expect(sub.status).toBe(201);
  return sub.body.taskId as string;
}

async function ask(taskId: string, agent: string): Promise<string> {
  const asked = await call(t.url, 'POST', '/v1/credentials', t.as(agent), { taskId, role: 'prod-deploy' });
  expect(asked.status).toBe(202);
  return asked.body.approvalId as string;
}

test('an approver the requester delegated to cannot approve the requester’s request', async () => {
  await openDeployTask(t, 'rt-tree-down', REQUESTER);
  await subtask('rt-tree-down', 'helper', BOB, REQUESTER);
  const approvalId = await ask('rt-tree-down', REQUESTER);

  const byBob = await call(t.url, 'POST', `/v1/approvals/${approvalId}`, t.as(BOB), { decision: 'approve' });
  expect({ status: byBob.status, code: byBob.body.code }).toEqual({ status: 403, code: 'self_approval' });
  const state = await call(t.url, 'GET', `/v1/approvals/${approvalId}`, t.as(REQUESTER));
  expect(state.body.status).toBe('pending');
  // Another approver, outside the tree, still can.
  const byAlice = await call(t.url, 'POST', `/v1/approvals/${approvalId}`, t.as('/ops/alice'), { decision: 'approve' });
  expect(byAlice.status).toBe(200);
});

test('an approver that is a sibling sub-agent cannot approve another sub-agent’s request in the same tree', async () => {
  await openDeployTask(t, 'rt-tree-side', REQUESTER);
  await subtask('rt-tree-side', 'approver', BOB, REQUESTER);
  const worker = await subtask('rt-tree-side', 'worker', '/agent/rt-tree-worker', REQUESTER);
  const approvalId = await ask(worker, '/agent/rt-tree-worker');

  const byBob = await call(t.url, 'POST', `/v1/approvals/${approvalId}`, t.as(BOB), { decision: 'approve' });
  expect({ status: byBob.status, code: byBob.body.code }).toEqual({ status: 403, code: 'self_approval' });
  const denied = await call(t.url, 'GET', `/v1/audit?taskId=${encodeURIComponent(worker)}&action=approval.decide`, t.as('/ops/alice'));
  expect(denied.body.items.map((r: { reason: string; actor: string }) => [r.actor, r.reason])).toEqual([[id(BOB), 'self_approval']]);
});

test('an approver in another tree still decides (the check is the tree, not the approver list)', async () => {
  await openDeployTask(t, 'rt-tree-other', REQUESTER);
  await openDeployTask(t, 'rt-tree-bob', BOB);
  const approvalId = await ask('rt-tree-other', REQUESTER);
  const byBob = await call(t.url, 'POST', `/v1/approvals/${approvalId}`, t.as(BOB), { decision: 'approve' });
  expect(byBob.status).toBe(200);
});
