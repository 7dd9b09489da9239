import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';
import { ORCH, call } from '../helpers/broker.ts';
import {
  exportAuditNow,
  interceptAppends,
  lossRecords,
  quarantine,
  recoveryMonitor,
  rollBack,
  snapshot,
} from '../helpers/recovery-harness.ts';

/**
 * The identities of records written once (`<base>audit-once`, audit-append.lua) expire a week after the last.
 * A rollback repair kept in a chain's slot (`<base>rollback-repair`) waits for its recovery's next attempt or
 * for an instance to start, which may be longer (the claimant died and nothing restarted it): by then the ids
 * of the records it had appended again were gone, and they were appended a second time. While a repair is kept
 * the ids do not expire; once it is dropped, they do again.
 */
const own = brokerOnOwnRedis('rollback-once-kept', { broker: { dataLossCheckMs: 600_000 } });

test('the identities written while a rollback repair is kept do not expire until the repair is dropped', async () => {
  const { redis, t } = own;
  const { deps } = t.broker;
  await snapshot(redis);
  await quarantine(t, 'rb-once-kept');
  await exportAuditNow(t);
  await rollBack(redis);
  // A denial on the rolled-back ops chain: it clashes with the export, is taken off and appended again once.
  expect((await call(t.url, 'GET', '/v1/admin/quarantine', t.as(ORCH))).status).toBe(403);
  await deps.audit.flush();

  // The recovery appends the clashing record again, then fails recording the rollback (it dies).
  let failing = true;
  const flaky = interceptAppends(
    deps.audit,
    async ({ record }, append) => {
      if (failing && record.action === 'broker.data_loss') throw new Error('died (injected)');
      return append();
    },
    ['appendOnce'],
  );
  const a = recoveryMonitor(t, { audit: flaky });
  await a.init();
  await expect(a.check()).rejects.toThrow(/injected/);
  expect(await deps.redis.exists(deps.keys.rollbackRepair('ops'))).toBe(1);
  expect(await deps.redis.scard(deps.keys.auditOnce('ops'))).toBe(1);
  // Before: a week (604800000 ms), however long the kept repair waits.
  expect(await deps.redis.pttl(deps.keys.auditOnce('ops'))).toBe(-1);

  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  await deps.audit.flush();
  expect(await deps.redis.exists(deps.keys.rollbackRepair('ops'))).toBe(0);
  // Dropped with the repair: they expire again.
  expect(await deps.redis.pttl(deps.keys.auditOnce('ops'))).toBeGreaterThan(604_000_000);
  const recorded = (await lossRecords(t)).filter((r) => r.reason === 'redis_rolled_back');
  expect(recorded).toHaveLength(1);
  await a.stop();
}, 60_000);
