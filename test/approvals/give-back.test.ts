import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { upstreamFailed } from '../../src/errors.ts';
import type { StartedIssue } from '../../src/providers/types.ts';
import { ADMIN, AGENT, ORCH, call, openAgentTask, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';

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

/**
 * The JWT provider's next signatures hang until `release()`, then fail: the lease is recorded (so the
 * approval was consumed) and nothing is handed out. `restore()` puts the real provider back.
 */
function failingSignature(): { started: () => number; release: () => void; restore: () => void } {
  const jwt = t.broker.deps.providers.get('jwt')!;
  const realStart = jwt.start!.bind(jwt);
  let release!: () => void;
  const gate = new Promise<void>((r) => {
    release = r;
  });
  let started = 0;
  jwt.start = (r): StartedIssue => {
    const s = realStart(r);
    started++;
    return { ...s, done: gate.then(() => Promise.reject(upstreamFailed('upstream_error', 'signing failed'))) };
  };
  return { started: () => started, release, restore: () => (jwt.start = realStart) };
}

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

test('an approval handed back while the same request opened a new pending one takes the request back; the new one is withdrawn', async () => {
  await openAgentTask(t, 'gb-2', [{ role: 'prod-deploy' }]);
  const req = { taskId: 'gb-2', role: 'prod-deploy', ttlSeconds: 60 };
  const p = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), req);
  expect(p.status).toBe(202);
  const x = p.body.approvalId as string;
  expect((await call(t.url, 'POST', `/v1/approvals/${x}`, t.as(ADMIN), { decision: 'approve' })).status).toBe(200);

  // Request A consumes X and records its lease; its signature then fails. Request B, the same, comes in between.
  const signing = failingSignature();
  let a: Promise<{ status: number; body: any }>;
  let y: string;
  try {
    a = call(t.url, 'POST', '/v1/credentials', t.as(AGENT), req);
    await waitFor(
      async () => signing.started() > 0 && (await call(t.url, 'GET', `/v1/approvals/${x}`, t.as(ADMIN))).body.status === 'consumed',
    );
    const b = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), req);
    expect(b.status).toBe(202);
    y = b.body.approvalId;
    expect(y).not.toBe(x);
  } finally {
    signing.release();
    signing.restore();
  }
  expect((await a).status).toBe(502);
  expect((await call(t.url, 'GET', `/v1/approvals/${x}`, t.as(ADMIN))).body.status).toBe('approved');
  expect((await call(t.url, 'GET', `/v1/approvals/${y}`, t.as(ADMIN))).body.status).toBe('expired');
  // Withdrawing Y is a decision like the others: recorded in the task's audit trail (before: Y left the approvers'
  // list with no record at all).
  const trail = await call(t.url, 'GET', '/v1/audit?taskId=gb-2&action=approval.decide', t.as(ADMIN));
  expect(trail.body.items.filter((r: { detail?: { approvalId?: string } }) => r.detail?.approvalId === y)).toEqual([
    expect.objectContaining({
      action: 'approval.decide',
      actor: 'broker',
      decision: 'ok',
      taskId: 'gb-2',
      role: 'prod-deploy',
      reason: 'covered_by_approval',
      detail: { approvalId: y, coveredBy: x },
    }),
  ]);
  // Before: 202 with Y, and X stayed approved with nothing able to use it.
  expect((await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), req)).status).toBe(201);
});

test("a give-back by a task whose id was purged and opened again leaves the new task's pending approval alone", async () => {
  const taskId = 'gb-3';
  await openAgentTask(t, taskId, [{ role: 'prod-deploy' }]);
  const req = { taskId, role: 'prod-deploy', ttlSeconds: 60 };
  const p = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), req);
  const x = p.body.approvalId as string;
  expect((await call(t.url, 'POST', `/v1/approvals/${x}`, t.as(ADMIN), { decision: 'approve' })).status).toBe(200);
  const signing = failingSignature();
  let a: Promise<{ status: number; body: any }>;
  let y: string;
  const other = '/agent/other';
  try {
    a = call(t.url, 'POST', '/v1/credentials', t.as(AGENT), req);
    await waitFor(
      async () => signing.started() > 0 && (await call(t.url, 'GET', `/v1/approvals/${x}`, t.as(ADMIN))).body.status === 'consumed',
    );
    signing.restore();
    // The task ends and is purged (its retention passes); another orchestrator opens the id for another agent.
    expect((await call(t.url, 'POST', `/v1/tasks/${taskId}/complete`, t.as(ORCH))).status).toBe(202);
    const deps = t.broker.deps;
    await deps.redis.del(deps.keys.task(taskId), deps.keys.taskApprovals(taskId));
    const reopened = await call(t.url, 'POST', '/v1/tasks', t.as('/orchestrator/other'), {
      taskId,
      agent: `spiffe://dev.local${other}`,
      tenant: 'globex',
      purpose: 'another task',
      ttlSeconds: 600,
      grants: [{ role: 'prod-deploy' }],
    });
    expect(reopened.status).toBe(201);
    const b = await call(t.url, 'POST', '/v1/credentials', t.as(other), req);
    expect(b.status).toBe(202);
    y = b.body.approvalId;
  } finally {
    signing.release();
    signing.restore();
  }
  expect((await a).status).toBe(502);
  // Before (5e124f9): the earlier task's give-back withdrew Y as if it were its twin.
  expect((await call(t.url, 'GET', `/v1/approvals/${y}`, t.as(ADMIN))).body.status).toBe('pending');
  expect((await call(t.url, 'POST', `/v1/approvals/${y}`, t.as(ADMIN), { decision: 'approve' })).status).toBe(200);
  expect((await call(t.url, 'POST', '/v1/credentials', t.as(other), req)).status).toBe(201);
});
