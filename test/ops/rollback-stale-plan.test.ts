import type { RedisClient } from '../../src/redis/scripts.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';
import { interceptAppends, lossRecords, type Rec, records, recoveryMonitor, rollBackWithClash } from '../helpers/recovery-harness.ts';

/**
 * A rollback recovery drops the repairs it kept (Keys.rollbackRepair) once recorded, then the records stored
 * with its claim (Keys.rollbackPlans). An instance that died between the two left the claim's records stored,
 * all written. An instance that later found a repair kept by another rollback's recovery (one that died before
 * it claimed) took every recovery with stored records for the claimant of that repair: its claim went to the
 * old recovery, whose records were all written, and the second rollback was recorded nowhere.
 */
const own = brokerOnOwnRedis('rollback-stale-plan', { broker: { dataLossCheckMs: 600_000 } });

type Fn = (...a: unknown[]) => unknown;

async function rollbackRecords(): Promise<Rec[]> {
  return (await lossRecords(own.t)).filter((r) => r.reason === 'redis_rolled_back');
}

test("a repair kept by a recovery that died before it claimed is recorded, not taken for an earlier recovery's left-over records", async () => {
  const { deps } = own.t.broker;
  // The first rollback: its recovery records it, drops its kept repair, and dies before it drops its stored records.
  await rollBackWithClash(own, 'stale-1');
  const diesBeforePlansDropped = new Proxy(deps.redis, {
    get(target, prop) {
      const v = Reflect.get(target, prop) as unknown;
      if (typeof v !== 'function') return v;
      if (prop !== 'hdel') return v.bind(target);
      return (key: string, ...fields: string[]) =>
        key === deps.keys.rollbackPlans() ? Promise.reject(new Error('died (injected)')) : (v as Fn).apply(target, [key, ...fields]);
    },
  }) as RedisClient;
  const a = recoveryMonitor(own.t, { redis: diesBeforePlansDropped });
  await a.init();
  await expect(a.check()).rejects.toThrow(/injected/);
  await a.stop();
  expect(await rollbackRecords()).toHaveLength(1);
  expect(await deps.redis.exists(deps.keys.rollbackRepair('ops'))).toBe(0);
  expect(await deps.redis.hlen(deps.keys.rollbackPlans())).toBe(1);

  // The second rollback: a recovery repairs ops (kept) and dies before it appends the clashing record again.
  const isClashing = await rollBackWithClash(own, 'stale-2');
  const diesBeforeReappend = interceptAppends(
    deps.audit,
    async ({ record }, append) => {
      if (isClashing(record)) throw new Error('died (injected)');
      return append();
    },
    ['appendOnce'],
  );
  const b = recoveryMonitor(own.t, { audit: diesBeforeReappend });
  await b.init();
  await expect(b.check()).rejects.toThrow(/injected/);
  await b.stop();
  expect(await deps.redis.exists(deps.keys.rollbackRepair('ops'))).toBe(1);

  // An instance that starts now finds the kept repair and recovers.
  const x = recoveryMonitor(own.t);
  await x.init();
  expect(x.ready).toBe(false);
  await x.check();
  expect(x.ready).toBe(true);
  expect((await records(own.t)).filter(isClashing)).toHaveLength(1);
  // Before: still one (the claim went to the first recovery, whose records were all written).
  const recorded = await rollbackRecords();
  expect(recorded).toHaveLength(2);
  expect(recorded[1]!.detail).toMatchObject({ kind: 'rollback', rechained: 1 });
  expect(await deps.redis.exists(deps.keys.rollbackRepair('ops'))).toBe(0);
  await x.stop();
}, 60_000);
