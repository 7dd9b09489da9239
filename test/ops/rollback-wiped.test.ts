import { expect, test } from '@jest/globals';
import type { RedisClient } from '../../src/redis/scripts.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';
import {
  expectAuditVerified,
  exportAuditNow,
  lossRecords,
  quarantine,
  recoveryMonitor,
  rollBack,
  snapshot,
  wipe,
} from '../helpers/recovery-harness.ts';

/**
 * Redis loses its data (a wipe, a failover to an empty replica) while a rollback recovery is under way: what the
 * rollback recovery kept in Redis to finish and record it (its repairs, its claim with its records) goes with the
 * data. The data-loss recovery that follows forgot the rollback: it was recorded nowhere, and nothing said a
 * rollback recovery had been cut short. Each instance whose rollback recovery was unfinished now writes, once the
 * loss is recorded, a `broker.data_loss` record (reason `redis_rolled_back`, `unfinished: "redis_data_lost"`)
 * saying what it saw and what it had applied again, whichever instance recovered from the loss.
 */
const own = brokerOnOwnRedis('rollback-wiped', { broker: { dataLossCheckMs: 600_000 } });

test.each([
  ['another instance recovers from the loss first', true],
  ['the same instance recovers from the loss', false],
])(
  'a data loss during a rollback recovery records that the rollback recovery was lost (%s)',
  async (_, otherFirst) => {
    const { redis, t } = own;
    const { deps } = t.broker;
    // Redis goes back to a snapshot taken before a quarantine (an ending) the export holds.
    await snapshot(redis);
    await quarantine(t, `rb-wiped-${otherFirst}`);
    await exportAuditNow(t);
    await rollBack(redis);

    // The rollback recovery applies the lost ending again; then, as it claims the rollback, Redis loses its data
    // (the claim fails: the connection to the restarted server dropped).
    let wiping = true;
    const wipedAtClaim = new Proxy(deps.redis, {
      get(target, prop) {
        const v = Reflect.get(target, prop) as unknown;
        if (typeof v !== 'function') return v;
        if (prop !== 'evalsha' && prop !== 'eval') return v.bind(target);
        return async (...args: unknown[]) => {
          if (wiping && args.includes(deps.keys.rollbackRecoveries())) {
            wiping = false;
            await wipe(redis);
            throw new Error('Connection lost (injected)');
          }
          return (v as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    }) as RedisClient;
    const a = recoveryMonitor(t, {
      redis: wipedAtClaim,
      reapply: async (records) => ({ tasks: 0, leases: 0, quarantines: records.filter((r) => r.action === 'quarantine.add').length }),
    });
    await a.init();
    await expect(a.check()).rejects.toThrow(/injected/);
    expect(wiping).toBe(false);

    // Another instance notices the data loss first and recovers from it (it knew nothing of the rollback).
    const b = otherFirst ? recoveryMonitor(t) : undefined;
    const before = (await lossRecords(t)).length;
    if (b) {
      await b.init();
      expect(b.ready).toBe(true);
      expect((await lossRecords(t)).filter((r) => r.reason === 'redis_rolled_back')).toEqual([]);
    }

    // The instance whose rollback recovery was cut short: the loss is recorded already, its rollback is not.
    await a.check();
    expect(a.ready).toBe(true);
    await a.check();
    const recorded = (await lossRecords(t)).slice(before);
    expect(recorded.filter((r) => r.reason === 'redis_data_lost' && r.chain === 'ops')).toHaveLength(1);
    const rolledBack = recorded.filter((r) => r.reason === 'redis_rolled_back');
    // Before: none (the rollback was recorded nowhere).
    expect(rolledBack).toHaveLength(1);
    expect(rolledBack[0]).toMatchObject({
      chain: 'ops',
      actor: 'broker',
      decision: 'ok',
      detail: expect.objectContaining({ kind: 'rollback', unfinished: 'redis_data_lost', seen: 'export', quarantinesAppliedAgain: 1 }),
    });
    await expectAuditVerified(t);
    await a.stop();
    await b?.stop();
  },
  60_000,
);
