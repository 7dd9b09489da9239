import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ORCH, auditRecords, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

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
  const policies = mkdtempSync(join(tmpdir(), 'rt-approval-quarantine-'));
  writeFileSync(join(policies, 'all.cedar'), 'permit (principal, action, resource);\n');
  t = await startTestBroker('rt-approval-quarantine', { config: { policies } });
});
afterAll(async () => {
  await t.close();
});

const AGENT = '/agent/deployer';
const BOB = '/ops/bob'; // an approver (and admin) in the test config
const ALICE = '/ops/alice';
const id = (p: string) => `spiffe://dev.local${p}`;

test('an approval decided by an approver quarantined since hands out nothing; the request waits for another approver', async () => {
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'rt-aq-1',
    agent: id(AGENT),
    tenant: 'acme',
    purpose: 'deploy',
    ttlSeconds: 600,
    grants: [{ role: 'prod-deploy' }],
  });
  expect(open.status).toBe(201);
  const ask = () => call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'rt-aq-1', role: 'prod-deploy' });
  const first = await ask();
  expect(first.status).toBe(202);
  const approved = await call(t.url, 'POST', `/v1/approvals/${first.body.approvalId}`, t.as(BOB), { decision: 'approve' });
  expect(approved.body.status).toBe('approved');

  const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ALICE), { agent: id(BOB), reason: 'approver key leaked' });
  expect(q.status).toBe(201);

  // The agent comes back: no credential on bob's word; a new approval, pending.
  const again = await ask();
  expect({ status: again.status, body: again.body }).toEqual({ status: 202, body: { approvalId: expect.any(String), status: 'pending' } });
  expect(again.body.approvalId).not.toBe(first.body.approvalId);
  const old = await call(t.url, 'GET', `/v1/approvals/${first.body.approvalId}`, t.as(ALICE));
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
      detail: expect.objectContaining({ approvalId: first.body.approvalId, decidedBy: id(BOB), pattern: id(BOB) }),
    }),
  ]);

  // Another approver's approval works as ever, once.
  expect((await call(t.url, 'POST', `/v1/approvals/${again.body.approvalId}`, t.as(ALICE), { decision: 'approve' })).status).toBe(200);
  const issued = await ask();
  expect(issued.status).toBe(201);
  expect(issued.body.credentials.access_token).toEqual(expect.any(String));
});
