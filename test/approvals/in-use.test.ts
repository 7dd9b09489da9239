import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { ApprovalStore } from '../../src/approvals/approval-store.ts';
import { ADMIN, AGENT, call, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * One approval, one credential (contract section 3): once a request has taken the approval, the same request
 * needs a new one, so it answers 202 with a new pending approval (given back, the first one withdraws it:
 * give-back.test.ts). Found from the weak list: a request that came in while the approval was being taken
 * answered, by the luck of timing, 409 `approval_consumed` (it found the approval approved, then lost the race to
 * consume it) or 409 `approval_expired` (it read the approval once it was consumed) instead. These pin the
 * interleavings down and expect what a request a moment later gets.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('approval-in-use');
});
afterAll(async () => {
  await t?.close();
});

const store = (): ApprovalStore => t.broker.deps.approvals;

/** Opens `taskId` with `prod-deploy`, asks once and approves: the approval the request covers. */
async function approved(taskId: string): Promise<{ req: Record<string, unknown>; approvalId: string }> {
  await openAgentTask(t, taskId, [{ role: 'prod-deploy' }]);
  const req = { taskId, role: 'prod-deploy', ttlSeconds: 60 };
  const p = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), req);
  expect(p.status).toBe(202);
  const approvalId = p.body.approvalId as string;
  expect((await call(t.url, 'POST', `/v1/approvals/${approvalId}`, t.as(ADMIN), { decision: 'approve' })).status).toBe(200);
  return { req, approvalId };
}

const ask = (req: Record<string, unknown>) => call(t.url, 'POST', '/v1/credentials', t.as(AGENT), req);

/** The same request after the pair: the new approval, approved, gives one credential. */
async function newApprovalWorks(req: Record<string, unknown>, pendingId: string): Promise<void> {
  expect((await call(t.url, 'POST', `/v1/approvals/${pendingId}`, t.as(ADMIN), { decision: 'approve' })).status).toBe(200);
  expect((await ask(req)).status).toBe(201);
}

test('two identical requests that both found the approval approved: one gets the credential, the other a new pending approval', async () => {
  const { req, approvalId } = await approved('in-use-1');
  // Both look the approval up before either takes it.
  const real = store().findOrCreate.bind(store());
  let arrived = 0;
  let bothThere!: () => void;
  const barrier = new Promise<void>((r) => {
    bothThere = r;
  });
  store().findOrCreate = async (...args) => {
    const found = await real(...args);
    if (++arrived <= 2) {
      if (arrived === 2) bothThere();
      await barrier;
    }
    return found;
  };
  let answers: { status: number; body: any }[];
  try {
    answers = await Promise.all([ask(req), ask(req)]);
  } finally {
    store().findOrCreate = real;
  }
  // `code` of a problem; `approval` the status of a 202's approval.
  const seen = answers
    .map((a) => ({ http: a.status, code: a.body.code, approval: a.status === 202 ? a.body.status : undefined }))
    .sort((a, b) => a.http - b.http);
  // Before: [201, 409 approval_consumed].
  expect(seen).toEqual([
    { http: 201, code: undefined, approval: undefined },
    { http: 202, code: undefined, approval: 'pending' },
  ]);
  const pending = answers.find((a) => a.status === 202)!.body.approvalId as string;
  expect(pending).not.toBe(approvalId);
  expect((await call(t.url, 'GET', `/v1/approvals/${approvalId}`, t.as(ADMIN))).body.status).toBe('consumed');
  await newApprovalWorks(req, pending);
});

test('a request that read the approval just after another request took it gets a new pending approval', async () => {
  const { req, approvalId } = await approved('in-use-2');
  // B's lookup names the approval; its read of it waits until A has taken it and got its credential.
  const real = store().get.bind(store());
  let entered!: () => void;
  const bWaiting = new Promise<void>((r) => {
    entered = r;
  });
  let release!: () => void;
  const gate = new Promise<void>((r) => {
    release = r;
  });
  let held = false;
  store().get = async (id, ...rest) => {
    if (id === approvalId && !held) {
      held = true;
      entered();
      await gate;
    }
    return real(id, ...rest);
  };
  let b: { status: number; body: any };
  try {
    const bAnswer = ask(req);
    await bWaiting;
    const a = await ask(req);
    expect(a.status).toBe(201);
    release();
    b = await bAnswer;
  } finally {
    release();
    store().get = real;
  }
  // Before: 409 approval_expired ("The approval for this request is consumed.").
  expect({ http: b.status, code: b.body.code, approval: b.body.status }).toEqual({ http: 202, code: undefined, approval: 'pending' });
  expect(b.body.approvalId).not.toBe(approvalId);
  await newApprovalWorks(req, b.body.approvalId);
});
