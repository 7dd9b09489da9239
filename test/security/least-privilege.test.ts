import { decodeJwt } from 'jose';
import { ADMIN, AGENT, ORCH, auditRecords, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * What an agent with a valid identity (and no other rights) can never get
 * round (contract section 3, "Limits, namespaces and scopes"). Each case was
 * demonstrated against the broker before these rules existed.
 */
let t: TestBroker;
const agentId = `spiffe://dev.local${AGENT}`;
const SUPPORT = '/agent/support/bot';
const supportId = `spiffe://dev.local${SUPPORT}`;
const B = 'spiffe://dev.local/agent/researcher';
let n = 0;

beforeAll(async () => {
  t = await startTestBroker('least-privilege', {
    config: { tasks: { maxSubtasks: 3, maxLeases: 2, maxPendingApprovals: 2 } },
  });
});
afterAll(async () => {
  await t.close();
});

const as = (path: string, claims: Record<string, unknown> = {}) => ({ authorization: `Bearer ${t.issuer.svid(path, { claims })}` });
const open = async (body: Record<string, unknown>, who = t.as(ORCH)) => {
  const r = await call(t.url, 'POST', '/v1/tasks', who, {
    taskId: `t-lp-${++n}`,
    agent: agentId,
    tenant: 'acme',
    purpose: 'triage',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api' }],
    ...body,
  });
  return r;
};
const cred = (taskId: string, body: Record<string, unknown> = {}, who = t.as(AGENT)) =>
  call(t.url, 'POST', '/v1/credentials', who, { taskId, role: 'tickets-api', ...body });

describe('scopes are literal', () => {
  test("an omitted grant list is the role's configured set; an omitted request list is the grant's", async () => {
    const task = await open({});
    expect(task.body.grants[0].scopes).toEqual(['tickets:read', 'tickets:write']);
    const c = await cred(task.body.taskId);
    expect(decodeJwt(c.body.credentials.access_token).scope).toBe('tickets:read tickets:write');
  });

  test("scopes: [] on a request is exactly no scope (never the grant's whole set)", async () => {
    const task = await open({ grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }] });
    const c = await cred(task.body.taskId, { scopes: [] });
    expect(c.status).toBe(201);
    expect(c.body.scopes).toEqual([]);
    expect(decodeJwt(c.body.credentials.access_token).scope).toBe('');
  });

  test('a sub-task granted scopes: [] gets credentials with no scope', async () => {
    const parent = await open({});
    const sub = await open(
      { parentTaskId: parent.body.taskId, agent: B, ttlSeconds: 60, grants: [{ role: 'tickets-api', scopes: [] }] },
      t.as(AGENT),
    );
    expect(sub.status).toBe(201);
    const c = await cred(sub.body.taskId, {}, t.as('/agent/researcher'));
    expect(c.status).toBe(201);
    expect(decodeJwt(c.body.credentials.access_token).scope).toBe('');
  });
});

describe('a sub-task narrows everything policy sees', () => {
  test('a parent label cannot be changed (the shipped support policy denies closed tickets)', async () => {
    const parent = await open({
      agent: supportId,
      labels: { ticket_status: 'closed' },
      grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
    });
    const support = as(SUPPORT, { tenant: 'acme' });
    // Denied on the parent: the ticket is closed.
    expect((await cred(parent.body.taskId, {}, support)).body.code).toBe('policy_denied');
    // The attack: reopen the ticket in a sub-task of its own.
    const widened = await open(
      {
        parentTaskId: parent.body.taskId,
        agent: supportId,
        ttlSeconds: 60,
        labels: { ticket_status: 'open' },
        grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
      },
      support,
    );
    expect(widened.status).toBe(403);
    expect(widened.body.code).toBe('delegation_widens');
    // Omitting the labels inherits them, so the policy still sees a closed ticket.
    const inherit = await open(
      { parentTaskId: parent.body.taskId, agent: supportId, ttlSeconds: 60, grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }] },
      support,
    );
    expect(inherit.status).toBe(201);
    expect(inherit.body.labels).toEqual({ ticket_status: 'closed' });
    expect((await cred(inherit.body.taskId, {}, support)).body.code).toBe('policy_denied');
  });

  test('new label keys may be added; tenant and purpose are inherited and cannot change', async () => {
    const parent = await open({ labels: { ticket: '4711' } });
    const sub = (over: Record<string, unknown>) =>
      open(
        {
          parentTaskId: parent.body.taskId,
          agent: B,
          ttlSeconds: 60,
          grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
          ...over,
        },
        t.as(AGENT),
      );
    const added = await sub({ labels: { step: 'research' }, tenant: undefined, purpose: undefined });
    expect(added.status).toBe(201);
    expect(added.body).toMatchObject({ tenant: 'acme', purpose: 'triage', labels: { ticket: '4711', step: 'research' } });
    for (const over of [{ tenant: 'globex' }, { purpose: 'deploy everything' }, { labels: { ticket: '4712' } }]) {
      const r = await sub(over);
      expect(r.status).toBe(403);
      expect(r.body.code).toBe('delegation_widens');
    }
  });
});

describe('task ids are namespaced', () => {
  test('a "~" in a caller-sent task id is refused', async () => {
    const r = await open({ taskId: 'a~b' });
    expect(r.status).toBe(400);
    expect(r.body.code).toBe('invalid_task_id');
  });

  test('an agent cannot break or squat another task through its sub-task names', async () => {
    const mine = await open({});
    const victimId = `victim-${n}`;
    for (const name of [`${victimId}:leases`, `${victimId}:children`, victimId]) {
      const s = await open(
        { taskId: name, parentTaskId: mine.body.taskId, agent: B, ttlSeconds: 60, grants: [{ role: 'tickets-api', scopes: [] }] },
        t.as(AGENT),
      );
      expect(s.status).toBe(201);
      expect(s.body.taskId).toBe(`${mine.body.taskId}~${name}`);
    }
    // The orchestrator later uses those ids: nothing is taken, nothing is broken.
    for (const id of [victimId, `${victimId}:leases`]) {
      const v = await open({ taskId: id });
      expect(v.status).toBe(201);
      expect((await cred(id)).status).toBe(201);
    }
    const read = await call(t.url, 'GET', `/v1/tasks/${mine.body.taskId}~${victimId}:leases`, t.as(AGENT));
    expect(read.status).toBe(200);
  });
});

test('only configured roles are roles: inherited object names answer 400 unknown_role', async () => {
  // Names no role could have (spaces, too long) too: before, those were refused as a malformed body (invalid_request).
  for (const role of ['constructor', '__proto__', 'toString', 'hasOwnProperty', 'prototype', 'no such role', 'r'.repeat(65)]) {
    const r = await open({ grants: [{ role }] });
    expect([role, r.status, r.body.code]).toEqual([role, 400, 'unknown_role']);
  }
  const task = await open({});
  for (const role of ['constructor', 'toString', 'no such role', 'r'.repeat(65)]) {
    const r = await cred(task.body.taskId, { role });
    expect(r.status).toBe(403);
    expect(r.body.code).toBe('role_not_granted');
  }
});

describe('growth is bounded', () => {
  test('tasks.maxSubtasks counts every sub-task the tree ever had, nested and ended ones included', async () => {
    const root = await open({});
    const sub = (parent: string, who = t.as(AGENT), agent = B, ttlSeconds = 60) =>
      open({ parentTaskId: parent, agent, ttlSeconds, grants: [{ role: 'tickets-api', scopes: [] }] }, who);
    const s1 = await sub(root.body.taskId);
    expect(s1.status).toBe(201);
    expect((await call(t.url, 'POST', `/v1/tasks/${s1.body.taskId}/complete`, t.as(AGENT))).status).toBe(202);
    const s2 = await sub(root.body.taskId);
    const nested = await sub(s2.body.taskId, t.as('/agent/researcher'), 'spiffe://dev.local/agent/c', 30);
    expect([s2.status, nested.status, nested.body.code]).toEqual([201, 201, undefined]);
    const over = await sub(root.body.taskId);
    expect(over.status).toBe(429);
    expect(over.body.code).toBe('limit_exceeded');
  });

  test('tasks.maxLeases bounds live leases per task; an ended lease frees its place', async () => {
    const task = await open({ taskId: `t-ml-${n}` });
    const a = await cred(task.body.taskId);
    await cred(task.body.taskId);
    const over = await cred(task.body.taskId);
    expect(over.status).toBe(429);
    expect(over.body.code).toBe('limit_exceeded');
    expect((await call(t.url, 'DELETE', `/v1/leases/${a.body.leaseId}`, t.as(AGENT))).status).toBe(202);
    expect((await cred(task.body.taskId)).status).toBe(201);
  });

  test('tasks.maxPendingApprovals bounds the pending approvals of a task', async () => {
    const task = await open({ grants: [{ role: 'prod-deploy' }] });
    const ask = (ttlSeconds: number) => cred(task.body.taskId, { role: 'prod-deploy', ttlSeconds });
    expect((await ask(10)).status).toBe(202);
    expect((await ask(20)).status).toBe(202);
    const over = await ask(30);
    expect(over.status).toBe(429);
    expect(over.body.code).toBe('limit_exceeded');
    expect((await ask(10)).status).toBe(202); // the same request still finds its approval
  });

  test('repeated denials (same actor, code, minute) are one record, and one more with their count', async () => {
    const task = await open({});
    const intruder = '/agent/intruder';
    for (let i = 0; i < 30; i++) expect((await cred(task.body.taskId, {}, t.as(intruder))).status).toBe(403);
    const mine = async () =>
      (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter(
        (r) => r.actor === `spiffe://dev.local${intruder}` && r.reason === 'not_task_agent',
      );
    expect(await mine()).toHaveLength(1);
    await t.broker.deps.audit.flushFolds(true);
    const after = await mine();
    expect(after).toHaveLength(2);
    expect(after[1]).toMatchObject({ count: 29, decision: 'deny' });
  });
});

test('an approval covers exactly the role, scopes and TTL approved, and gives one credential', async () => {
  const task = await open({ grants: [{ role: 'prod-deploy' }], taskId: `t-ap-${n}` });
  const ask = (body: Record<string, unknown>) => cred(task.body.taskId, { role: 'prod-deploy', ...body });
  const first = await ask({ ttlSeconds: 10 });
  expect(first.status).toBe(202);
  const approved = await call(t.url, 'POST', `/v1/approvals/${first.body.approvalId}`, t.as(ADMIN), { decision: 'approve' });
  expect(approved.body).toMatchObject({ status: 'approved', ttlSeconds: 10, requestedAt: expect.stringMatching(/Z$/) });
  // Another TTL is another request: it needs its own approval.
  const longer = await ask({ ttlSeconds: 300 });
  expect(longer.status).toBe(202);
  expect(longer.body.approvalId).not.toBe(first.body.approvalId);
  const issued = await ask({ ttlSeconds: 10 });
  expect(issued.status).toBe(201);
  expect(issued.body.ttlSeconds).toBe(10);
  const again = await ask({ ttlSeconds: 10 });
  expect(again.status).toBe(202);
  expect(again.body.approvalId).not.toBe(first.body.approvalId);
});
