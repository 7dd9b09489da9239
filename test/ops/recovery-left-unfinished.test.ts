import { AuditLog } from '../../src/audit/audit-log.ts';
import { silentLogger } from '../../src/logger.ts';
import { waitFor } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';
import {
  expectRollbackRecovered,
  failingReappend,
  lossRecords,
  records,
  recoveryMonitor,
  rollBackWithClash,
} from '../helpers/recovery-harness.ts';

/**
 * A recovery keeps its unfinished work in Redis (a rollback repair's records taken off a chain, a loss's or a
 * rollback's records to write) so that whoever gets there finishes it. Only an instance starting up looked for
 * it: when the recovering instance died (or its attempt failed and it was closed), an instance already running,
 * which had not noticed the rollback itself, left it for the next restart. Its periodic data-loss check now
 * notices the work kept (one EXISTS) and finishes it under the recovery lock.
 */
const own = brokerOnOwnRedis('recovery-left-unfinished', { broker: { dataLossCheckMs: 600_000 } });

test('a running instance finishes a rollback recovery whose instance failed after taking records off a chain and was closed, without restarting', async () => {
  // B runs from before the snapshot, with its own audit log; it writes nothing meanwhile, so it has no sign of the
  // rollback of its own.
  const { deps } = own.t.broker;
  const b = recoveryMonitor(own.t, {
    audit: new AuditLog({ redis: deps.redis, keys: deps.keys, logger: silentLogger, taskIndexMs: 60_000 }),
  });
  await b.init();
  expect(b.ready).toBe(true);
  const isClashing = await rollBackWithClash(own, 'left-1');
  const lossesBefore = (await lossRecords(own.t)).length;
  const attempts = { n: 0 };
  const a = recoveryMonitor(own.t, { audit: failingReappend(own.t.broker.deps.audit, isClashing, () => true, attempts) });
  await a.init();
  expect(a.ready).toBe(false);
  await expect(a.check()).rejects.toThrow(/injected/);
  expect(attempts.n).toBe(1);
  // A is closed (taken for dead): the records it took off the chain are kept, not yet appended again.
  await a.stop();
  expect((await records(own.t)).filter(isClashing)).toHaveLength(0);

  b.start(200);
  // Before: nobody appended it again until an instance started (B's checks saw nothing of its own).
  const after = await waitFor(
    async () => {
      const now = await records(own.t);
      return now.filter(isClashing).length > 0 && now;
    },
    5_000,
    100,
  );
  await waitFor(async () => b.ready, 5_000, 50);
  expect(after.filter(isClashing)).toHaveLength(1);
  const losses = (await lossRecords(own.t)).slice(lossesBefore);
  expect(losses.map((r) => r.chain)).toEqual(['ops']);
  expect(losses[0]!.detail).toMatchObject({ kind: 'rollback', rechained: 1 });
  // Nothing is left over: the flag the check looks at goes too, and later checks write nothing more.
  await waitFor(async () => (await deps.redis.exists(deps.keys.recoveryUnfinished())) === 0, 5_000, 50);
  await new Promise((r) => setTimeout(r, 600));
  const later = await records(own.t);
  expect(later.filter(isClashing)).toHaveLength(1);
  expect(later.filter((r) => r.action === 'broker.data_loss').slice(lossesBefore)).toHaveLength(1);
  await expectRollbackRecovered(own.t);
  await b.stop();
}, 60_000);
