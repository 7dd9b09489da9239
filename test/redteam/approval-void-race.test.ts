import { approvedDeploy, permitAllPolicies } from '../helpers/approvals.ts';
import { auditRecords, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Review 3 (held): an approval whose approver was quarantined is voided by whichever call finds it first: a read,
 * a list, another approver's decision or the agent's next request. All of them at once void it once: one broker
 * record, no 5xx, and every answer shows it `expired` or asks again.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('rt-approval-void-race', { config: { policies: permitAllPolicies('rt-approval-void-race') } });
});
afterAll(async () => {
  await t.close();
});

const AGENT = '/agent/deployer';
const BOB = '/ops/bob';
const ALICE = '/ops/alice';
const id = (p: string) => `spiffe://dev.local${p}`;

test('reads, lists, decisions and requests racing to void one approval record it once and never fail', async () => {
  const { approvalId, ask } = await approvedDeploy(t, 'rt-avr-1', AGENT, BOB);
  expect((await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ALICE), { agent: id(BOB), reason: 'key leaked' })).status).toBe(201);

  const answers = await Promise.all([
    ...Array.from({ length: 4 }, () => call(t.url, 'GET', `/v1/approvals/${approvalId}`, t.as(ALICE))),
    ...Array.from({ length: 3 }, () => call(t.url, 'GET', '/v1/approvals?status=approved&limit=500', t.as(ALICE))),
    ...Array.from({ length: 2 }, () => call(t.url, 'POST', `/v1/approvals/${approvalId}`, t.as(ALICE), { decision: 'approve' })),
    ...Array.from({ length: 2 }, ask),
  ]);
  expect(answers.filter((r) => r.status >= 500)).toEqual([]);
  for (const r of answers.slice(0, 4)) expect(r.body).toMatchObject({ status: 'expired' });
  for (const r of answers.slice(4, 7)) {
    expect(r.status).toBe(200);
    // Filtered as it stands: not among the approved ones.
    expect((r.body.items as { approvalId: string }[]).map((a) => a.approvalId)).not.toContain(approvalId);
  }
  for (const r of answers.slice(7, 9)) expect([r.status, r.body.code]).toEqual([409, 'approval_expired']);
  for (const r of answers.slice(9)) expect(r.status).toBe(202);
  const voids = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter(
    (r) => r.action === 'approval.decide' && r.actor === 'broker' && r.detail?.approvalId === approvalId,
  );
  expect(voids).toHaveLength(1);
  expect(voids[0]).toMatchObject({ decision: 'deny', reason: 'approver_quarantined' });
});

/**
 * Review 3: the agent's request found its approval by the request index, then read it; voided in between (by a read,
 * a list, or the same agent's other request, as above: 409 for 2 of 5 requests at once, now and then), it answered
 * 409 `approval_expired` instead of asking again. The void is made to land there: the approval is read (and so
 * voided, a real GET) right after the request's index lookup named it.
 */
test('a request whose approval is voided between its lookup and its read asks again (202), not 409', async () => {
  const CAROL = '/ops/carol';
  const { approvalId, ask } = await approvedDeploy(t, 'rt-avr-2', AGENT, CAROL);
  expect((await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ALICE), { agent: id(CAROL), reason: 'key leaked' })).status).toBe(201);

  const store = t.broker.deps.approvals;
  const get = store.get.bind(store);
  let armed = true;
  let read: Awaited<ReturnType<typeof call>> | undefined;
  store.get = async (aid, now) => {
    if (armed && aid === approvalId) {
      armed = false;
      read = await call(t.url, 'GET', `/v1/approvals/${approvalId}`, t.as(ALICE));
    }
    return get(aid, now);
  };
  try {
    const again = await ask();
    expect(read?.body.status).toBe('expired'); // voided by the read, between the lookup and the request's own read
    expect([again.status, again.body.status]).toEqual([202, 'pending']);
    expect(again.body.approvalId).not.toBe(approvalId);
  } finally {
    store.get = get;
  }
});

/**
 * Review 4: a decision on an approval past its own deadline, its task's record still reading `open` (the sweep
 * had not come yet), was told the approval "was taken back: its approver no longer stands", and to ask again.
 * Only an approval whose approver is gone says so.
 */
test('an approval past its own deadline is not said to be taken back', async () => {
  const dave = '/ops/dave';
  const { approvalId } = await approvedDeploy(t, 'rt-avr-deadline', AGENT, dave);
  // Its deadline passed (moved behind the API: the task stays open, as between a deadline and its sweep).
  await t.broker.deps.redis.hset(t.broker.deps.keys.approval(approvalId), 'expiresAt', String(Date.now() - 60_000));
  const r = await call(t.url, 'POST', `/v1/approvals/${approvalId}`, t.as(dave), { decision: 'approve' });
  expect([r.status, r.body.code]).toEqual([409, 'approval_expired']);
  expect(r.body.detail).not.toMatch(/taken back/);
});
