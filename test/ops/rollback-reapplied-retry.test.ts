import type { RedisClient } from '../../src/redis/scripts.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';
import { exportAuditNow, lossRecords, quarantine, recoveryMonitor, rollBack, snapshot } from '../helpers/recovery-harness.ts';

/**
 * A rollback recovery applies again the endings Redis lost, then claims the rollback with its records, which
 * say how many it applied again. An attempt that applied them and failed before the claim left them applied:
 * its next attempt found nothing left to apply (each step is idempotent) and recorded 0, though the first had
 * applied them.
 */
const own = brokerOnOwnRedis('rollback-reapplied-retry', { broker: { dataLossCheckMs: 600_000 } });

test("a rollback recovery that applied the lost endings and failed before its claim records what it applied, not its retry's nothing", async () => {
  const { redis, t } = own;
  const { deps } = t.broker;
  // Redis goes back to a snapshot taken before a quarantine (an ending) the export holds.
  await snapshot(redis);
  await quarantine(t, 'rb-reapplied');
  await exportAuditNow(t);
  await rollBack(redis);

  // Applying again is idempotent: what the first call applied, a second finds applied.
  const applied = new Set<string>();
  const reapply = async (records: { hash: string }[]) => {
    const fresh = records.filter((r) => !applied.has(r.hash));
    for (const r of fresh) applied.add(r.hash);
    return { tasks: 0, leases: 0, quarantines: fresh.length };
  };
  // The claim fails once (Redis failing mid-way), after the endings were applied.
  let failing = true;
  const claimFails = new Proxy(deps.redis, {
    get(target, prop) {
      const v = Reflect.get(target, prop) as unknown;
      if (typeof v !== 'function') return v;
      if (prop !== 'evalsha' && prop !== 'eval') return v.bind(target);
      return (...args: unknown[]) =>
        failing && args.includes(deps.keys.rollbackRecoveries())
          ? Promise.reject(new Error('Redis failed mid-way (injected)'))
          : (v as (...a: unknown[]) => unknown).apply(target, args);
    },
  }) as RedisClient;
  const a = recoveryMonitor(t, { redis: claimFails, reapply: reapply as never });
  await a.init();
  await expect(a.check()).rejects.toThrow(/injected/);
  expect(applied.size).toBe(1);
  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  const recorded = (await lossRecords(t)).filter((r) => r.reason === 'redis_rolled_back');
  expect(recorded).toHaveLength(1);
  // Before: 0 (the retry's count).
  expect(recorded[0]!.detail).toMatchObject({ quarantinesAppliedAgain: 1 });
  await a.stop();
}, 60_000);
