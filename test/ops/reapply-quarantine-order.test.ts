import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { AuditRecord } from '../../src/audit/record.ts';
import { reapplyEndings } from '../../src/ops/reapply.ts';
import { ADMIN, AGENT, auditRecords, call, ORCH, openAgentTask, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';

/**
 * A quarantine told again to a Redis that went back in time (src/ops/reapply.ts) is put in force with its
 * record in the ops outbox (quarantine-add.lua), its identity's tasks that came back open are ended, and the
 * record appended. It appended the record first: a failed append (a command timeout, the ops chain contended)
 * stopped there, with the quarantine in force and the tasks open, their leases live. The tasks are now ended
 * before the append, as an admin's quarantine does (AdminService.quarantine).
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('reapply-quarantine-order');
});
afterAll(async () => {
  await t?.close();
});

test("a failed append of a quarantine told again does not leave the identity's tasks open", async () => {
  await openAgentTask(t, 'rq-1', [{ role: 'demo-api' }]);
  const issued = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'rq-1', role: 'demo-api' });
  expect(issued.status).toBe(201);
  const pattern = `spiffe://dev.local${AGENT}`;
  // The export's record of a quarantine the rolled-back Redis no longer holds.
  const lost: AuditRecord = {
    seq: 7,
    time: new Date().toISOString(),
    prev: '0'.repeat(64),
    hash: '1'.repeat(64),
    action: 'quarantine.add',
    actor: `spiffe://dev.local${ADMIN}`,
    decision: 'ok',
    reason: 'suspect',
    detail: { pattern, at: new Date().toISOString() },
  };
  const { deps, services } = t.broker;
  const audit = deps.audit;
  const real = audit.appendOutbox.bind(audit);
  let failed = 0;
  audit.appendOutbox = async (chain, members, at) => {
    if (chain === 'ops' && members.some((m) => m.includes('"quarantine.add"'))) {
      failed += 1;
      throw new Error('Command timed out');
    }
    return real(chain, members, at);
  };
  try {
    await expect(reapplyEndings(deps, { tasks: services.tasks, admin: services.admin }, [lost])).rejects.toThrow(/timed out/);
  } finally {
    audit.appendOutbox = real;
  }
  expect(failed).toBe(1);
  expect(await deps.redis.hexists(deps.keys.quarantine(), pattern)).toBe(1);
  // Before: `open`, its lease `active`.
  const task = await call(t.url, 'GET', '/v1/tasks/rq-1', t.as(ADMIN));
  expect([task.body.status, task.body.reason]).toEqual(['completed', 'revoked_by_admin']);
  // The record waits in the ops outbox; recovery appends it (ending nothing more).
  const { redis, keys } = deps;
  const flat = await redis.zrange(keys.auditOutbox('ops'), '0', '-1', 'WITHSCORES');
  expect(flat.filter((m) => m.includes('"quarantine.add"'))).toHaveLength(1);
  for (let i = 0; i < flat.length; i += 2) await redis.zadd(keys.auditOutbox('ops'), 'XX', Number(flat[i + 1]) - 60_000, flat[i]!);
  await t.broker.outbox.pass();
  const recs = await auditRecords(redis, keys);
  expect(recs.filter((r) => r.action === 'quarantine.add')).toEqual([
    expect.objectContaining({ actor: 'broker', detail: expect.objectContaining({ pattern, reapplied: 'redis_rolled_back' }) }),
  ]);
  expect(recs.filter((r) => r.action === 'task.revoke' && r.taskId === 'rq-1')).toHaveLength(1);
});

test('the record of a quarantine told again is kept fresh while its tasks are ended: recovery leaves it to the process', async () => {
  const agent = '/agent/rq-fresh';
  const pattern = `spiffe://dev.local${agent}`;
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'rq-fresh',
    agent: pattern,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  expect(open.status).toBe(201);
  const lost: AuditRecord = {
    seq: 8,
    time: new Date().toISOString(),
    prev: '0'.repeat(64),
    hash: '1'.repeat(64),
    action: 'quarantine.add',
    actor: `spiffe://dev.local${ADMIN}`,
    decision: 'ok',
    reason: 'suspect',
    detail: { pattern, at: new Date().toISOString() },
  };
  const { deps, services } = t.broker;
  const { redis, keys } = deps;
  const outbox = keys.auditOutbox('ops');
  let recoveredMeanwhile: number | undefined;
  // Endings that outlast the grace period (many tasks): here the record is aged past it while they run.
  const slowAdmin = Object.assign(Object.create(services.admin), {
    endQuarantined: async (p: string) => {
      const [member] = (await redis.zrange(outbox, '0', '-1')).filter((m) => m.includes('"quarantine.add"') && m.includes(pattern));
      const aged = Number(await redis.zscore(outbox, member!)) - 60_000;
      await redis.zadd(outbox, 'XX', aged, member!);
      // Moved forward again by the process still ending the tasks (every 2.5 s). Before: nothing did, and
      // another instance's recovery took the record, ending the same tasks at the same time.
      await waitFor(async () => Number(await redis.zscore(outbox, member!)) > aged, 10_000, 100);
      recoveredMeanwhile = await t.broker.outbox.pass();
      return services.admin.endQuarantined(p);
    },
  });
  await reapplyEndings(deps, { tasks: services.tasks, admin: slowAdmin }, [lost]);
  expect(recoveredMeanwhile).toBe(0);
  expect((await deps.tasks.get('rq-fresh'))?.status).toBe('completed');
  const recs = (await auditRecords(redis, keys)).filter((r) => r.action === 'quarantine.add' && r.detail?.pattern === pattern);
  expect(recs).toHaveLength(1);
  expect(recs[0]!.detail).toMatchObject({ reapplied: 'redis_rolled_back' });
  expect(await redis.zcard(outbox)).toBe(0);
}, 30_000);
