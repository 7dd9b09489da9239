import type { AuditLog } from '../../src/audit/audit-log.ts';
import { auditRecords } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';
import { quarantine, recoveryMonitor, rollBack, snapshot } from '../helpers/recovery-harness.ts';

/**
 * Red team (locks at a 10-s hold), the rollback path of recovery-twice.test.ts: one `broker.data_loss` record
 * per rollback. Recovery looked at the list of rollback recoveries, recorded the rollback, then pushed its id:
 * an instance stalled between the look and the push (its recovery lock lapsed, another instance took it,
 * looked at the same list, recorded and pushed) went on and recorded the same rollback a second time.
 */
const own = brokerOnOwnRedis('rollback-twice', { broker: { dataLossCheckMs: 600_000 } });

test('a rollback recovery stalled before it recorded (its lock lapsed, another recovered meanwhile) records no second data loss (found by red team)', async () => {
  const { t, redis } = own;
  const { deps } = t.broker;
  // Redis goes back to a snapshot taken before a quarantine the export holds: a rollback, noticed at a first look.
  await snapshot(redis);
  await quarantine(t, 'rt-rb');
  await rollBack(redis);

  let stalled = false;
  const b = recoveryMonitor(t);
  // A stalls past its hold right before it writes its record: its lock lapses and B recovers meanwhile.
  const stalling = new Proxy(deps.audit, {
    get(target, prop) {
      // appendOnce: how a rollback's records are written (each once: rollback-record-retry.test.ts).
      if (prop === 'appendTo' || prop === 'appendOnce')
        return async (...args: Parameters<AuditLog['appendOnce']>) => {
          if (!stalled && args[1].action === 'broker.data_loss') {
            stalled = true;
            await deps.redis.del(deps.keys.lock('recovery'));
            await b.check();
          }
          return prop === 'appendOnce' ? target.appendOnce(...args) : target.appendTo(args[0], args[1]);
        };
      const v = Reflect.get(target, prop) as unknown;
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  const a = recoveryMonitor(t, { audit: stalling });
  // Their first look: each notices the rollback (the export is ahead of Redis), to recover at its next check.
  await a.init();
  await b.init();
  expect([a.ready, b.ready]).toEqual([false, false]);
  await a.check();
  await deps.audit.flush?.();
  expect(stalled).toBe(true);
  expect([a.ready, b.ready]).toEqual([true, true]);
  const losses = (await auditRecords(deps.redis, deps.keys)).filter((r) => r.action === 'broker.data_loss' && r.chain === 'ops');
  // Before: 2 (B's, then A's once it went on).
  expect(losses.map((r) => r.reason)).toEqual(['redis_rolled_back']);
  expect(await deps.redis.lrange(deps.keys.rollbackRecoveries(), 0, -1)).toEqual([losses[0]!.detail.recovery]);
}, 60_000);
