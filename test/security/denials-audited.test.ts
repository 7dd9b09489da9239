import { ADMIN, AGENT, ORCH, auditRecords, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/** Every denial is an audit record, whatever the route (contract section 7). */
let t: TestBroker;
const STRANGER = '/agent/stranger';
const strangerId = `spiffe://dev.local${STRANGER}`;
let leaseId: string;
let approvalId: string;

beforeAll(async () => {
  t = await startTestBroker('denials');
  const agent = `spiffe://dev.local${AGENT}`;
  await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-den',
    agent,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }, { role: 'prod-deploy' }],
  });
  leaseId = (await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-den', role: 'demo-api' })).body.leaseId;
  approvalId = (await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-den', role: 'prod-deploy' })).body.approvalId;
});
afterAll(async () => {
  await t.close();
});

const denialsOf = async (who: string) =>
  (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter((r) => r.actor === who && r.decision === 'deny');

test.each([
  ["GET someone else's lease", 'GET', () => `/v1/leases/${leaseId}`, undefined, 'not_lease_party'],
  ["DELETE someone else's lease", 'DELETE', () => `/v1/leases/${leaseId}`, undefined, 'not_lease_party'],
  ['read an approval', 'GET', () => `/v1/approvals/${approvalId}`, undefined, 'not_approval_party'],
  ['decide an approval', 'POST', () => `/v1/approvals/${approvalId}`, { decision: 'approve' }, 'not_approver'],
  ['rotate', 'POST', () => '/v1/admin/rotate', { target: 'signing-key' }, 'not_admin'],
  ['reload policy', 'POST', () => '/v1/admin/policy/reload', undefined, 'not_admin'],
  ['revoke an agent', 'POST', () => '/v1/admin/revoke', { agent: 'spiffe://dev.local/agent/*' }, 'not_admin'],
  ['quarantine', 'POST', () => '/v1/admin/quarantine', { agent: 'spiffe://dev.local/agent/x', reason: 'r' }, 'not_admin'],
  ['list quarantines', 'GET', () => '/v1/admin/quarantine', undefined, 'not_admin'],
  ['read a task', 'GET', () => '/v1/tasks/t-den', undefined, 'not_task_party'],
  ['complete a task', 'POST', () => '/v1/tasks/t-den/complete', undefined, 'not_task_orchestrator'],
])('%s: 403, counted and audited', async (_n, method, path, body, code) => {
  const before = (await denialsOf(strangerId)).filter((r) => r.reason === code).length;
  await t.broker.deps.audit.flushFolds(true);
  const r = await call(t.url, method, path(), t.as(STRANGER), body);
  expect(r.status).toBe(403);
  expect(r.body.code).toBe(code);
  const after = (await denialsOf(strangerId)).filter((x) => x.reason === code);
  expect(after.length).toBeGreaterThan(before);
});

test('policy.reload is recorded with the admin as its actor', async () => {
  const r = await call(t.url, 'POST', '/v1/admin/policy/reload', t.as(ADMIN));
  expect(r.status).toBe(202);
  const records = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter((x) => x.action === 'policy.reload');
  expect(records.at(-1)).toMatchObject({ actor: `spiffe://dev.local${ADMIN}`, decision: 'ok' });
});
