import { validateConfig } from '../../src/config/load.ts';
import { approvedDeploy, permitAllPolicies } from '../helpers/approvals.ts';
import { ORCH, auditRecords, call, dropPrefix, startTestBroker, testRawConfig, type TestBroker, uniquePrefix } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';

/**
 * Red team: quarantining an approver did not take back what it had approved. An approver approves a
 * pending request (say it was compromised and approves a colluding agent's prod deploy); an admin
 * quarantines it before the agent comes back for the credential. On the code this was written against,
 * the agent's next identical request answered 201 with the credential all the same: the quarantine
 * stopped the approver's own calls, not the approval it left behind. Quarantining an orchestrator ends the
 * tasks it opened ("a compromised orchestrator's grants are not trusted", docs/security.md); likewise a
 * quarantined approver's approvals not yet used are void, and the request waits for another approver.
 */
let t: TestBroker;
beforeAll(async () => {
  // Policy permits everything, so only the broker's own approval checks stand.
  t = await startTestBroker('rt-approval-quarantine', { config: { policies: permitAllPolicies('rt-approval-quarantine') } });
});
afterAll(async () => {
  await t.close();
});

const AGENT = '/agent/deployer';
const BOB = '/ops/bob'; // an approver (and admin) in the test config
const ALICE = '/ops/alice';
const id = (p: string) => `spiffe://dev.local${p}`;

test('an approval decided by an approver quarantined since hands out nothing; the request waits for another approver', async () => {
  const { approvalId: firstId, ask } = await approvedDeploy(t, 'rt-aq-1', AGENT, BOB);

  const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ALICE), { agent: id(BOB), reason: 'approver key leaked' });
  expect(q.status).toBe(201);

  // The agent comes back, several requests at once: no credential on bob's word; one new approval, pending.
  const burst = await Promise.all(Array.from({ length: 5 }, ask));
  expect(burst.map((r) => r.status)).toEqual([202, 202, 202, 202, 202]);
  expect(new Set(burst.map((r) => r.body.approvalId)).size).toBe(1);
  const again = burst[0]!;
  expect({ status: again.status, body: again.body }).toEqual({ status: 202, body: { approvalId: expect.any(String), status: 'pending' } });
  expect(again.body.approvalId).not.toBe(firstId);
  const old = await call(t.url, 'GET', `/v1/approvals/${firstId}`, t.as(ALICE));
  expect(old.body).toMatchObject({ status: 'expired', decidedBy: id(BOB) });
  // Asking again is the same pending approval, not another.
  expect((await ask()).body.approvalId).toBe(again.body.approvalId);

  // Recorded: the broker voided bob's approval, naming the quarantine.
  const records = await auditRecords(t.broker.deps.redis, t.broker.deps.keys);
  expect(records.filter((r) => r.action === 'approval.decide' && r.actor === 'broker')).toEqual([
    expect.objectContaining({
      taskId: 'rt-aq-1',
      role: 'prod-deploy',
      decision: 'deny',
      reason: 'approver_quarantined',
      detail: expect.objectContaining({ approvalId: firstId, decidedBy: id(BOB), pattern: id(BOB) }),
    }),
  ]);

  // Another approver's approval works as ever, once.
  expect((await call(t.url, 'POST', `/v1/approvals/${again.body.approvalId}`, t.as(ALICE), { decision: 'approve' })).status).toBe(200);
  const issued = await ask();
  expect(issued.status).toBe(201);
  expect(issued.body.credentials.access_token).toEqual(expect.any(String));
});

/**
 * Review: a voided approval showed `approved` in reads and lists until the agent came back (the void happened only
 * on the agent's next request), so approvers and the console saw a live approval that could hand out nothing. Reads
 * and lists now void it as the agent's request would, once: one `approval.decide` by the broker, however many reads.
 */
test('reads and lists show an approval whose approver was quarantined as expired at once, voided once', async () => {
  const CAROL = '/ops/carol';
  const { approvalId, ask } = await approvedDeploy(t, 'rt-aq-2', AGENT, CAROL);
  const listed = async (who: string, status: string) =>
    ((await call(t.url, 'GET', `/v1/approvals?status=${status}&limit=500`, t.as(who))).body.items as { approvalId: string }[])
      .map((a) => a.approvalId)
      .includes(approvalId);
  expect(await listed(ALICE, 'approved')).toBe(true);

  expect((await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ALICE), { agent: id(CAROL), reason: 'key leaked' })).status).toBe(201);

  // Before the agent comes back: every read, by every party, at once, shows the truth (before: `approved`).
  const reads = await Promise.all([
    call(t.url, 'GET', `/v1/approvals/${approvalId}`, t.as(ALICE)),
    call(t.url, 'GET', `/v1/approvals/${approvalId}`, t.as(AGENT)),
    call(t.url, 'GET', `/v1/approvals/${approvalId}`, t.as(ORCH)),
    call(t.url, 'GET', '/v1/approvals?status=approved&limit=500', t.as(ALICE)),
    call(t.url, 'GET', '/v1/approvals?limit=500', t.as(AGENT)),
  ]);
  for (const r of reads.slice(0, 3)) expect(r.body).toMatchObject({ approvalId, status: 'expired', decidedBy: id(CAROL) });
  expect((reads[3]!.body.items as { approvalId: string }[]).map((a) => a.approvalId)).not.toContain(approvalId);
  expect((reads[4]!.body.items as { approvalId: string; status: string }[]).find((a) => a.approvalId === approvalId)?.status).toBe(
    'expired',
  );
  expect(await listed(ALICE, 'approved')).toBe(false);
  expect(await listed(ALICE, 'expired')).toBe(true);
  // Deciding on it again says why.
  const decide = await call(t.url, 'POST', `/v1/approvals/${approvalId}`, t.as(ALICE), { decision: 'approve' });
  expect({ status: decide.status, code: decide.body.code }).toEqual({ status: 409, code: 'approval_expired' });

  // The agent comes back: a new pending approval, as before; still one void on record.
  const again = await ask();
  expect(again.status).toBe(202);
  expect(again.body.approvalId).not.toBe(approvalId);
  const records = await auditRecords(t.broker.deps.redis, t.broker.deps.keys);
  expect(records.filter((r) => r.action === 'approval.decide' && r.actor === 'broker' && r.taskId === 'rt-aq-2')).toEqual([
    expect.objectContaining({
      decision: 'deny',
      reason: 'approver_quarantined',
      detail: expect.objectContaining({ approvalId, decidedBy: id(CAROL), pattern: id(CAROL) }),
    }),
  ]);
});

test('an approval decided by an identity that is no longer an approver (config changed, broker restarted) hands out nothing', async () => {
  const issuer = new TestIssuer();
  const prefix = uniquePrefix('rt-approver-removed');
  const policies = permitAllPolicies('rt-approver-removed');
  // One raw config (one KEK), started twice on one prefix: first with bob an approver, then without.
  const raw = testRawConfig(issuer, prefix, { policies });
  const before = await startTestBroker('rt-approver-removed', { issuer, prefix, loaded: validateConfig(raw, {}, 'config/test.yaml') });
  const as = (p: string) => ({ authorization: `Bearer ${issuer.svid(p)}` });
  let after: TestBroker | undefined;
  try {
    const first = await approvedDeploy(before, 'rt-ar-1', AGENT, BOB);
    await before.broker.close();

    // Ops take bob off the approvers and restart.
    const loaded = validateConfig({ ...raw, approvers: [id(ALICE)] }, {}, 'config/test.yaml');
    after = await startTestBroker('rt-approver-removed', { issuer, prefix, loaded });
    // Lists show it as it stands before the agent comes back (before: `approved`).
    const list = await call(after.url, 'GET', '/v1/approvals?limit=500', as(ALICE));
    expect((list.body.items as { approvalId: string; status: string }[]).find((a) => a.approvalId === first.approvalId)).toMatchObject({
      status: 'expired',
    });
    const again = await call(after.url, 'POST', '/v1/credentials', as(AGENT), { taskId: 'rt-ar-1', role: 'prod-deploy' });
    expect({ status: again.status, status2: again.body.status }).toEqual({ status: 202, status2: 'pending' });
    expect(again.body.approvalId).not.toBe(first.approvalId);
    const records = await auditRecords(after.broker.deps.redis, after.broker.deps.keys);
    expect(records.filter((r) => r.action === 'approval.decide' && r.actor === 'broker')).toEqual([
      expect.objectContaining({ reason: 'approver_removed', detail: expect.objectContaining({ decidedBy: id(BOB) }) }),
    ]);
  } finally {
    await after?.broker.close();
    await dropPrefix(prefix);
  }
});
