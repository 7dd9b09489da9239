import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { ADMIN, AGENT, call, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * One approval, one credential (contract section 3): an approval is consumed by the credential it
 * covers, so a request it covered that is then refused or fails hands it back. Found from outside:
 * the approval was consumed before the lease was recorded, so a refusal after it (here the live-lease
 * bound) spent the approver's decision on nothing and the same request asked for a new approval.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('approval-give-back', { config: { tasks: { maxLeases: 1 } } });
});
afterAll(async () => {
  await t?.close();
});

test('an approved request refused by the live-lease bound keeps its approval; once the slot is free it answers 201, once', async () => {
  await openAgentTask(t, 'gb-1', [{ role: 'demo-api' }, { role: 'prod-deploy' }]);
  const filler = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'gb-1', role: 'demo-api' });
  expect(filler.status).toBe(201);

  const req = { taskId: 'gb-1', role: 'prod-deploy', ttlSeconds: 60 };
  const p = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), req);
  expect(p.status).toBe(202);
  const approvalId = p.body.approvalId;
  expect((await call(t.url, 'POST', `/v1/approvals/${approvalId}`, t.as(ADMIN), { decision: 'approve', reason: 'ok' })).status).toBe(200);

  const refused = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), req);
  expect({ status: refused.status, code: refused.body.code }).toEqual({ status: 429, code: 'limit_exceeded' });
  expect((await call(t.url, 'GET', `/v1/approvals/${approvalId}`, t.as(ADMIN))).body.status).toBe('approved');

  expect((await call(t.url, 'DELETE', `/v1/leases/${filler.body.leaseId}`, t.as(AGENT))).status).toBe(202);
  const again = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), req);
  // Before: 202 with a new pending approval; the first one said `consumed`.
  expect(again.status).toBe(201);
  expect((await call(t.url, 'GET', `/v1/approvals/${approvalId}`, t.as(ADMIN))).body.status).toBe('consumed');
  // Once: the same request after that asks again.
  expect((await call(t.url, 'DELETE', `/v1/leases/${again.body.leaseId}`, t.as(AGENT))).status).toBe(202);
  const third = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), req);
  expect(third.status).toBe(202);
  expect(third.body.approvalId).not.toBe(approvalId);
});
