import { parseOutboxMember } from '../../src/audit/outbox-member.ts';
import { auditRecords, openAgentTask } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';
import {
  type AppendCall,
  exportAuditNow,
  failingAfterFirstLoss,
  lossRecords,
  quarantine,
  recoveryMonitor,
  rollBack,
  snapshot,
} from '../helpers/recovery-harness.ts';

/**
 * A rollback recovery records the rollback with one `broker.data_loss` record in `ops` and in each chain it
 * repaired. An attempt that claimed the rollback (rollback-claim.lua), wrote some of those records and then
 * failed (Redis failing mid-way) wrote all of them again at its next attempt, and the records of chains that
 * attempt no longer found changed (the first attempt repaired them) not at all. Each record is now written once:
 * the claim keeps what is to be recorded, and each record names its own identity, checked in the append's step.
 */
const own = brokerOnOwnRedis('rollback-retry', { broker: { dataLossCheckMs: 600_000 } });

test('a rollback recovery that failed after writing part of its records writes each record exactly once on its next attempt', async () => {
  const { redis, t } = own;
  const { deps } = t.broker;
  // Redis goes back to a snapshot taken before a task was opened (a bucket chain) and a quarantine (ops), both exported.
  await snapshot(redis);
  await openAgentTask(t, 'rb-retry', [{ role: 'demo-api' }]);
  await quarantine(t, 'rb-retry');
  await exportAuditNow(t);
  await rollBack(redis);

  // The first attempt: the first broker.data_loss record lands, the next fails (Redis failing mid-way).
  const tried: AppendCall[] = [];
  let failing = true;
  const monitor = recoveryMonitor(t, { audit: failingAfterFirstLoss(deps.audit, () => failing, { tried }) });
  await monitor.init();
  expect(monitor.ready).toBe(false);
  await expect(monitor.check()).rejects.toThrow(/injected/);
  expect(monitor.ready).toBe(false);
  // Two chains to record (ops and the task's bucket), one written.
  const bucket = deps.keys.bucketOfTask('rb-retry');
  expect(new Set(tried.map((c) => c.chain))).toEqual(new Set(['ops', String(bucket)]));

  failing = false;
  await monitor.check();
  expect(monitor.ready).toBe(true);
  const losses = await lossRecords(t);
  // Before: the record written at the first attempt twice (ops), and the bucket's missing (its chain repaired already).
  expect(losses.map((r) => String(r.chain)).sort()).toEqual(['ops', String(bucket)].sort());
  expect(losses.every((r) => r.reason === 'redis_rolled_back')).toBe(true);
}, 60_000);

test('a record with an identity is written once per chain, whether sent twice at once or again later; an outbox member shaped like one is poison', async () => {
  const { audit, keys, redis } = own.t.broker.deps;
  const event = { action: 'broker.data_loss' as const, actor: 'broker', decision: 'ok' as const, reason: 'once-test' };
  expect(await Promise.all([audit.appendOnce('ops', event, 'once-test'), audit.appendOnce('ops', event, 'once-test')])).toEqual([
    true,
    false,
  ]);
  expect(await audit.appendOnce('ops', event, 'once-test')).toBe(false);
  // Another chain keeps its own identities.
  expect(await audit.appendOnce(1, event, 'once-test')).toBe(true);
  const written = (await auditRecords(redis, keys)).filter((r) => r.reason === 'once-test');
  expect(written.map((r) => String(r.chain)).sort()).toEqual(['1', 'ops']);
  expect(parseOutboxMember(`once:x ${JSON.stringify({ action: 'task.open', actor: 'a', decision: 'allow' })}`)).toBeUndefined();
});
