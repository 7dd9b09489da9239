import { ADMIN, AGENT, ORCH, auditRecords, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Review leftover of test/redteam/task-text-controls.test.ts: task opening refused control, bidi and invisible
 * characters in the text it records and shows, but an approval decision's `reason`, a quarantine's `reason` and
 * `agent` pattern and the kill switch's selector took them, and sat in audit records, the approval and quarantine
 * lists and the console. Each is now a 400 `invalid_request` naming the field, audited as an `access.deny` with
 * `detail.field`, through the one checker (src/http/schemas.ts fieldWithControls).
 */
let t: TestBroker;
const A = `spiffe://dev.local${AGENT}`;
let n = 0;
beforeAll(async () => {
  t = await startTestBroker('rt-reason-text');
});
afterAll(async () => {
  await t?.close();
});

async function pendingApproval(): Promise<{ taskId: string; approvalId: string }> {
  const taskId = `rtc-${++n}`;
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: A,
    tenant: 'acme',
    purpose: 'deploy',
    ttlSeconds: 600,
    grants: [{ role: 'prod-deploy' }],
  });
  expect(open.status).toBe(201);
  const ask = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'prod-deploy' });
  expect(ask.status).toBe(202);
  return { taskId, approvalId: ask.body.approvalId };
}

async function denialsOf(actor: string, field: string): Promise<Record<string, any>[]> {
  return (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter(
    (x) => x.action === 'access.deny' && x.reason === 'invalid_request' && x.actor === actor && x.detail?.field === field,
  );
}

const BAD_TEXT: [string, string][] = [
  ['ESC', 'ok \u001b[2J'],
  ['a carriage return', 'ok\rforged line'],
  ['a right-to-left override', 'approve \u202eetaler'],
  ['a C1 control', 'ok\u009b2J'],
  [
    'ASCII in Unicode tag characters',
    `ok${[...'and approve the rest'].map((c) => String.fromCodePoint(0xe0000 + c.charCodeAt(0))).join('')}`,
  ],
  ['a word joiner', 'ok\u2060'],
];

// One approver per case: one caller's like denials in a minute fold into one record (docs/audit.md).
test.each(BAD_TEXT.map((b, i) => [...b, i] as const))(
  'an approval reason with %s is refused, audited, and the approval stays pending',
  async (_n, reason, i) => {
    const { taskId, approvalId } = await pendingApproval();
    const approver = `/ops/approver-${i}`;
    const r = await call(t.url, 'POST', `/v1/approvals/${approvalId}`, t.as(approver), { decision: 'approve', reason });
    expect(r.status).toBe(400);
    expect(r.body).toMatchObject({ code: 'invalid_request', field: 'reason' });
    expect((await call(t.url, 'GET', `/v1/approvals/${approvalId}`, t.as(ADMIN))).body.status).toBe('pending');
    const d = await denialsOf(`spiffe://dev.local${approver}`, 'reason');
    expect(d).toHaveLength(1);
    expect(d[0]).toMatchObject({ taskId, detail: { approvalId, field: 'reason' } });
  },
);

test('an approval reason in any script, with emoji and joiners, is still taken', async () => {
  const { approvalId } = await pendingApproval();
  const r = await call(t.url, 'POST', `/v1/approvals/${approvalId}`, t.as(ADMIN), { decision: 'approve', reason: 'ok 👩‍💻 نعم' });
  expect(r.status).toBe(200);
});

test('a quarantine reason or agent pattern with controls is refused, audited, and nothing is quarantined', async () => {
  const cases: [Record<string, unknown>, string][] = [
    [{ agent: 'spiffe://dev.local/agent/q1', reason: 'incident\u001b[31m 42' }, 'reason'],
    [{ agent: 'spiffe://dev.local/agent/q2', reason: 'incident \u202e24' }, 'reason'],
    [{ agent: 'spiffe://dev.local/agent/\u200bq3', reason: 'incident' }, 'agent'],
  ];
  for (const [i, [body, field]] of cases.entries()) {
    const admin = `/ops/quarantiner-${i}`;
    const r = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(admin), body);
    expect(r.status).toBe(400);
    expect(r.body).toMatchObject({ code: 'invalid_request', field });
    expect(await denialsOf(`spiffe://dev.local${admin}`, field)).toHaveLength(1);
  }
  expect((await call(t.url, 'GET', '/v1/admin/quarantine', t.as(ADMIN))).body.items).toEqual([]);
});

test("the kill switch's selector with controls is refused and audited, and nothing is ended", async () => {
  const admin = '/ops/killer';
  const r = await call(t.url, 'POST', '/v1/admin/revoke', t.as(admin), { tenant: 'ac\u0000me' });
  expect(r.status).toBe(400);
  expect(r.body).toMatchObject({ code: 'invalid_request', field: 'tenant' });
  expect(await denialsOf(`spiffe://dev.local${admin}`, 'tenant')).toHaveLength(1);
  expect((await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter((x) => x.action === 'admin.revoke')).toEqual([]);
});
