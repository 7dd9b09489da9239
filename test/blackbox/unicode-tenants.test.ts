import { copyFileSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ADMIN, AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

// Black-box finding: tenants and label values were compared code point by code point, so "café" composed
// (U+00E9) and decomposed (e + U+0301), one name to anyone reading it, were two tenants: a kill switch by
// one form missed the tasks opened with the other, and so did `GET /v1/tasks?tenant=`. They are taken in
// NFC wherever the API accepts them.
const NFC = 'caf\u00e9';
const NFD = 'cafe\u0301';
const BLOCKED_NFC = 'blocke\u0301'.normalize('NFC');
const BLOCKED_NFD = 'blocke\u0301';

let t: TestBroker;
beforeAll(async () => {
  // The shipped policies, and one that forbids opening a task of tenant "blocké" (written composed).
  const policies = mkdtempSync(join(tmpdir(), 'jit-nfc-policies-'));
  for (const f of readdirSync('config/policies').filter((f) => f.endsWith('.cedar')))
    copyFileSync(join('config/policies', f), join(policies, f));
  writeFileSync(
    join(policies, 'blocked-tenant.cedar'),
    `forbid (principal, action == Action::"openTask", resource) when { context.task.tenant == "${BLOCKED_NFC}" };\n`,
  );
  t = await startTestBroker('bb-nfc', { config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080' }, policies } });
});
afterAll(async () => {
  await t.close();
});

const AGENT_ID = `spiffe://dev.local${AGENT}`;
const open = (taskId: string, tenant: string, extra: Record<string, unknown> = {}) =>
  call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: AGENT_ID,
    tenant,
    purpose: `triage ${tenant}`,
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
    ...extra,
  });
const status = async (taskId: string) => (await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ADMIN))).body.status;
const listed = async (tenant: string) =>
  ((await call(t.url, 'GET', `/v1/tasks?status=open&tenant=${encodeURIComponent(tenant)}`, t.as(ADMIN))).body.items as { taskId: string }[])
    .map((i) => i.taskId)
    .sort();

test('a kill switch by tenant ends the tasks of that tenant in either Unicode form (found by black-box red team)', async () => {
  for (const [by, other] of [
    [NFC, NFD],
    [NFD, NFC],
  ] as const) {
    const [a, b] = by === NFC ? ['nfc-a', 'nfc-b'] : ['nfd-a', 'nfd-b'];
    const r = await open(a, other);
    // Read back composed, whatever form was sent.
    expect([r.status, r.body.tenant]).toEqual([201, NFC]);
    expect((await open(b, by)).status).toBe(201);
    // Before: the filter in one form listed only the task opened in that form.
    expect(await listed(by)).toEqual([a, b]);
    expect(await listed(other)).toEqual([a, b]);
    const revoke = await call(t.url, 'POST', '/v1/admin/revoke', t.as(ADMIN), { tenant: by });
    // Before: { tasks: 1 }, and the task opened in the other form stayed open.
    expect([revoke.status, revoke.body.tasks]).toEqual([202, 2]);
    expect([await status(a), await status(b)]).toEqual(['completed', 'completed']);
  }
});

test('a task stored with a decomposed tenant (before this release) is still found by the kill switch and the list', async () => {
  expect((await open('nfc-legacy', NFC)).status).toBe(201);
  // As an earlier release stored a decomposed tenant: the field the kill switch and the list filter read.
  await t.broker.deps.redis.hset(t.broker.deps.keys.task('nfc-legacy'), 'tenant', NFD);
  expect(await listed(NFC)).toContain('nfc-legacy');
  const revoke = await call(t.url, 'POST', '/v1/admin/revoke', t.as(ADMIN), { tenant: NFD });
  expect([revoke.status, revoke.body.tasks]).toEqual([202, 1]);
  expect(await status('nfc-legacy')).toBe('completed');
});

test('an open repeated with the decomposed forms of its tenant, purpose and labels is the same request (found by black-box red team)', async () => {
  const first = await open('nfc-repeat', NFC, { labels: { team: `équipe ${NFC}` } });
  expect(first.status).toBe(201);
  const again = await open('nfc-repeat', NFD, { labels: { team: `e\u0301quipe ${NFD}` } });
  // Before: 409 task_id_conflict, a different body byte for byte.
  expect([again.status, again.body.tenant, again.body.purpose, again.body.labels]).toEqual([
    200,
    NFC,
    `triage ${NFC}`,
    { team: `équipe ${NFC}` },
  ]);
  // A sub-task that repeats its parent's tenant, purpose and label in the other form keeps them.
  const sub = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
    parentTaskId: 'nfc-repeat',
    taskId: 's',
    agent: AGENT_ID,
    tenant: NFD,
    purpose: `triage ${NFD}`,
    ttlSeconds: 60,
    grants: [{ role: 'demo-api' }],
    labels: { team: `e\u0301quipe ${NFD}` },
  });
  // Before: 403 delegation_widens ("must keep its parent's tenant").
  expect([sub.status, sub.body.tenant]).toEqual([201, NFC]);
});

test('policy sees the composed form: a forbid on a composed tenant stops a task opened with the decomposed one (found by black-box red team)', async () => {
  const r = await open('nfc-blocked', BLOCKED_NFD);
  // Before: 201, the forbid's "blocké" was not the caller's.
  expect([r.status, r.body.code]).toEqual([403, 'policy_denied']);
  expect((await open('nfc-blocked', BLOCKED_NFC)).body.code).toBe('policy_denied');
  expect((await open('nfc-allowed', 'blocked')).status).toBe(201);
});

test("a token's tenant claim matches the task's tenant in either form (the shipped support-agent policy compares them)", async () => {
  const support = '/agent/support/nfc';
  for (const [taskTenant, claimTenant] of [
    [NFC, NFD],
    [NFD, NFC],
  ] as const) {
    const taskId = `nfc-claim-${taskTenant === NFC ? 'c' : 'd'}`;
    const r = await open(taskId, taskTenant, {
      agent: `spiffe://dev.local${support}`,
      grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
      labels: { ticket_status: 'open' },
    });
    expect(r.status).toBe(201);
    const token = t.issuer.svid(support, { claims: { tenant: claimTenant } });
    const cred = await call(t.url, 'POST', '/v1/credentials', { authorization: `Bearer ${token}` }, { taskId, role: 'tickets-api' });
    // Before: 403 policy_denied (support-own-tenant-only), the claim and the tenant differing in form only.
    expect([taskId, cred.status]).toEqual([taskId, 201]);
  }
});

test('a tenant is bounded once normalised: NFC may lengthen a string', async () => {
  // U+0958 is two code points in NFC: 128 of them are 256.
  const r = await open('nfc-long', '\u0958'.repeat(128));
  expect([r.status, r.body.code, r.body.field]).toEqual([400, 'invalid_request', 'tenant']);
  expect((await open('nfc-long', '\u0958'.repeat(64))).status).toBe(201);
});
