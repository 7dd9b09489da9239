import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { ADMIN, AGENT, call, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * A quarantine puts itself in force and its `quarantine.add` record in the ops outbox in one script
 * (quarantine-add.lua); the record is then appended. When that append failed (a Redis command timeout, the
 * ops chain contended), the call stopped there: the quarantine was in force but the identity's open tasks
 * stayed open and their live leases (AWS sessions up to an hour) unrevoked, though the record was safe in
 * the outbox for recovery. Before quarantine-add.lua the record was appended first, so the same failure left
 * nothing in force. The tasks are now ended before the append.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('quarantine-append-failure');
});
afterAll(async () => {
  await t?.close();
});

test('a failed append of the quarantine record does not leave the quarantined identity its tasks and leases', async () => {
  await openAgentTask(t, 'qaf-1', [{ role: 'demo-api' }]);
  const issued = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'qaf-1', role: 'demo-api' });
  expect(issued.status).toBe(201);
  const audit = t.broker.deps.audit;
  const real = audit.appendOutbox.bind(audit);
  let failed = 0;
  audit.appendOutbox = async (chain, members, at) => {
    if (chain === 'ops' && failed === 0 && members.some((m) => m.includes('"quarantine.add"'))) {
      failed += 1;
      throw new Error('Command timed out');
    }
    return real(chain, members, at);
  };
  try {
    const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: `spiffe://dev.local${AGENT}`, reason: 'suspect' });
    expect(failed).toBe(1);
    expect(q.status).toBeGreaterThanOrEqual(500);
  } finally {
    audit.appendOutbox = real;
  }
  // The quarantine is in force, and so is what it ends.
  expect(t.broker.deps.quarantine.list().map((e) => e.pattern)).toEqual([`spiffe://dev.local${AGENT}`]);
  const task = await call(t.url, 'GET', '/v1/tasks/qaf-1', t.as(ADMIN));
  // Before: `open`, its lease `active`.
  expect([task.body.status, task.body.reason]).toEqual(['completed', 'revoked_by_admin']);
  const lease = await call(t.url, 'GET', `/v1/leases/${issued.body.leaseId}`, t.as(ADMIN));
  expect(lease.body.reason).toBe('revoked_by_admin');
  // The record was not lost: still in the ops outbox, for recovery.
  const outbox = await t.broker.deps.redis.zrange(t.broker.deps.keys.auditOutbox('ops'), '0', '-1');
  expect(outbox.filter((m) => m.includes('"quarantine.add"'))).toHaveLength(1);
});
