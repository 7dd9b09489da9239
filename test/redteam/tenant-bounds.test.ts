import { permitAllPolicies } from '../helpers/approvals.ts';
import { call, startTestBroker, UNLIMITED_SERVER, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team, authorization boundaries between tenants: the workloads of tenant A (its orchestrator, its agent)
 * against tenant B's task, leases, approvals, audit and list cursors, and a sub-agent of B against B's own task.
 * Everything here held when it was written; it stays as the map of what was tried. Policy permits everything, so
 * only the broker's own party checks stand.
 */
const id = (p: string) => `spiffe://dev.local${p}`;
const OA = '/orchestrator/rt-tenant-a';
const OB = '/orchestrator/rt-tenant-b';
const AA = '/agent/rt-tenant-a';
const AB = '/agent/rt-tenant-b';
const SUB = '/agent/rt-tenant-b-sub';
let t: TestBroker;
let leaseB: string;
let approvalB: string;
let tokenB: string;

beforeAll(async () => {
  t = await startTestBroker('rt-tenant-bounds', { config: { policies: permitAllPolicies('rt-tenant-bounds'), server: UNLIMITED_SERVER } });
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(OB), {
    taskId: 'rt-tb',
    agent: id(AB),
    tenant: 'b',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }, { role: 'prod-deploy' }, { role: 'tickets-api', scopes: ['tickets:read'] }],
  });
  expect(open.status).toBe(201);
  const cred = await call(t.url, 'POST', '/v1/credentials', t.as(AB), { taskId: 'rt-tb', role: 'demo-api' });
  expect(cred.status).toBe(201);
  leaseB = cred.body.leaseId;
  tokenB = cred.body.credentials.access_token;
  const asked = await call(t.url, 'POST', '/v1/credentials', t.as(AB), { taskId: 'rt-tb', role: 'prod-deploy' });
  expect(asked.status).toBe(202);
  approvalB = asked.body.approvalId;
});
afterAll(async () => {
  await t.close();
});

const refused = async (who: string, method: string, path: string, body?: unknown) => {
  const r = await call(t.url, method, path, t.as(who), body);
  return `${r.status} ${r.body?.code}`;
};

test.each([AA, OA])("%s cannot read, end, use or decide anything of tenant B's task", async (who) => {
  expect({
    read: await refused(who, 'GET', '/v1/tasks/rt-tb'),
    complete: await refused(who, 'POST', '/v1/tasks/rt-tb/complete'),
    credential: await refused(who, 'POST', '/v1/credentials', { taskId: 'rt-tb', role: 'demo-api' }),
    leases: await refused(who, 'GET', '/v1/tasks/rt-tb/leases'),
    evidence: await refused(who, 'GET', '/v1/tasks/rt-tb/evidence'),
    audit: await refused(who, 'GET', '/v1/audit?taskId=rt-tb'),
    lease: await refused(who, 'GET', `/v1/leases/${leaseB}`),
    revoke: await refused(who, 'DELETE', `/v1/leases/${leaseB}`),
    approval: await refused(who, 'GET', `/v1/approvals/${approvalB}`),
    decide: await refused(who, 'POST', `/v1/approvals/${approvalB}`, { decision: 'approve' }),
    subtask: await refused(who, 'POST', '/v1/tasks', {
      parentTaskId: 'rt-tb',
      agent: id(AA),
      ttlSeconds: 60,
      grants: [{ role: 'demo-api' }],
    }),
  }).toEqual({
    read: '403 not_task_party',
    complete: '403 not_task_orchestrator',
    credential: '403 not_task_agent',
    leases: '403 not_task_party',
    evidence: '403 not_task_party',
    audit: '403 not_task_party',
    lease: '403 not_lease_party',
    revoke: '403 not_lease_party',
    approval: '403 not_approval_party',
    decide: '403 not_approver',
    subtask: '403 not_parent_agent',
  });
  for (const q of [`agent=${encodeURIComponent(id(AB))}`, `orchestrator=${encodeURIComponent(id(OB))}`, 'tenant=b']) {
    const list = await call(t.url, 'GET', `/v1/tasks?${q}`, t.as(who));
    expect([list.status, list.body.items]).toEqual([200, []]);
  }
  const approvals = await call(t.url, 'GET', '/v1/approvals', t.as(who));
  expect([approvals.status, approvals.body.items]).toEqual([200, []]);
  // The lease is untouched.
  expect((await call(t.url, 'GET', `/v1/leases/${leaseB}`, t.as(AB))).body.status).toBe('active');
});

test("token exchange on tenant B's task as A's agent is unauthorized_client", async () => {
  const res = await fetch(`${t.url}/v1/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
      subject_token: t.issuer.svid(AA),
      subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      audience: 'demo-api',
      task_id: 'rt-tb',
    }),
  });
  expect([res.status, ((await res.json()) as { error: string }).error]).toEqual([400, 'unauthorized_client']);
});

test('a broker-minted access token is no workload identity (bearer or subject_token)', async () => {
  expect((await call(t.url, 'GET', '/v1/tasks/rt-tb', { authorization: `Bearer ${tokenB}` })).status).toBe(401);
  const res = await fetch(`${t.url}/v1/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
      subject_token: tokenB,
      subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      audience: 'demo-api',
      task_id: 'rt-tb',
    }),
  });
  expect([res.status, ((await res.json()) as { error: string }).error]).toEqual([400, 'invalid_grant']);
});

test("a list cursor of B's orchestrator is refused to A's, with other filters, on another list, or edited", async () => {
  for (let i = 0; i < 2; i++) {
    const o = await call(t.url, 'POST', '/v1/tasks', t.as(OB), {
      taskId: `rt-tb-${i}`,
      agent: id(AB),
      tenant: 'b',
      purpose: 'p',
      ttlSeconds: 600,
      grants: [{ role: 'demo-api' }],
    });
    expect(o.status).toBe(201);
  }
  const page = await call(t.url, 'GET', '/v1/tasks?limit=1', t.as(OB));
  const cursor = page.body.nextCursor as string;
  expect(typeof cursor).toBe('string');
  const [body, mac] = cursor.split('.') as [string, string];
  const pos = JSON.parse(Buffer.from(body, 'base64url').toString('utf8'));
  pos.p.s = 0;
  const edited = `${Buffer.from(JSON.stringify(pos)).toString('base64url')}.${mac}`;
  const c = encodeURIComponent;
  expect([
    await refused(OA, 'GET', `/v1/tasks?limit=1&cursor=${c(cursor)}`),
    await refused(OB, 'GET', `/v1/tasks?limit=1&status=open&cursor=${c(cursor)}`),
    await refused(OB, 'GET', `/v1/approvals?limit=1&cursor=${c(cursor)}`),
    await refused(OB, 'GET', `/v1/tasks?limit=1&cursor=${c(edited)}`),
  ]).toEqual(Array(4).fill('400 invalid_cursor'));
});

test("B's sub-agent reads only its sub-task, not B's task, and cannot widen its grant", async () => {
  const sub = await call(t.url, 'POST', '/v1/tasks', t.as(AB), {
    parentTaskId: 'rt-tb',
    taskId: 's1',
    agent: id(SUB),
    ttlSeconds: 300,
    grants: [{ role: 'demo-api', maxTtlSeconds: 60 }],
  });
  expect(sub.status).toBe(201);
  expect({
    parent: await refused(SUB, 'GET', '/v1/tasks/rt-tb'),
    audit: await refused(SUB, 'GET', '/v1/audit?taskId=rt-tb'),
    approval: await refused(SUB, 'GET', `/v1/approvals/${approvalB}`),
    credential: await refused(SUB, 'POST', '/v1/credentials', { taskId: 'rt-tb', role: 'demo-api' }),
    completeOwn: await refused(SUB, 'POST', '/v1/tasks/rt-tb~s1/complete'),
    widerTtl: await refused(SUB, 'POST', '/v1/tasks', {
      parentTaskId: 'rt-tb~s1',
      agent: id(AA),
      ttlSeconds: 60,
      grants: [{ role: 'demo-api', maxTtlSeconds: 120 }],
    }),
    otherRole: await refused(SUB, 'POST', '/v1/tasks', {
      parentTaskId: 'rt-tb~s1',
      agent: id(AA),
      ttlSeconds: 60,
      grants: [{ role: 'tickets-api' }],
    }),
    longer: await refused(SUB, 'POST', '/v1/tasks', {
      parentTaskId: 'rt-tb~s1',
      agent: id(AA),
      ttlSeconds: 3000,
      grants: [{ role: 'demo-api' }],
    }),
  }).toEqual({
    parent: '403 not_task_party',
    audit: '403 not_task_party',
    approval: '403 not_approval_party',
    credential: '403 not_task_agent',
    completeOwn: '403 not_task_orchestrator',
    widerTtl: '403 delegation_widens',
    otherRole: '403 delegation_widens',
    longer: '403 delegation_outlives_parent',
  });
  const cred = await call(t.url, 'POST', '/v1/credentials', t.as(SUB), { taskId: 'rt-tb~s1', role: 'demo-api', ttlSeconds: 900 });
  expect([cred.status, cred.body.ttlSeconds]).toEqual([201, 60]);
});
