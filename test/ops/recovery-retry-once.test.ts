import { quarantine, recoveryMonitor } from '../helpers/recovery-harness.ts';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * One data loss is counted (`jit_redis_data_loss_total{kind="lost"}`) and logged once, however many attempts its
 * recovery takes. A recovery attempt that failed part-way (here: restoring the quarantines; in CI a Sentinel
 * failover's refused or timed-out commands) was retried at the next check, which counted the same loss again:
 * test/topologies/sentinel-bucket-marks.test.ts saw `lost` rise by 2 for one failover to an empty replica.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('recovery-retry-once', { broker: { dataLossCheckMs: 600_000 } });
}, 60_000);
afterAll(async () => {
  await t?.close();
});

const lost = async () => (await t.broker.deps.metrics.dataLoss.get()).values.find((v) => v.labels.kind === 'lost')?.value ?? 0;

test('a data loss whose first recovery attempt failed is counted once, and recovered at the next attempt', async () => {
  const { deps } = t.broker;
  // Something in the export, so that an empty Redis reads as a data loss.
  await quarantine(t, 'retry-once-q');
  let failures = 1;
  const m = recoveryMonitor(t, {
    restoreQuarantines: async (entries) => {
      if (failures-- > 0) throw new Error('export disk stalled');
      await deps.quarantine.restore(entries);
    },
  });
  await m.init();
  expect(m.ready).toBe(true);
  const before = await lost();
  await deps.redis.del(deps.keys.epoch());
  await expect(m.check()).rejects.toThrow('export disk stalled');
  expect(m.ready).toBe(false);
  await m.check();
  expect(m.ready).toBe(true);
  // Before: 2 (one per attempt).
  expect((await lost()) - before).toBe(1);
  // A second loss, later, is a loss of its own.
  await deps.redis.del(deps.keys.epoch());
  await m.check();
  expect((await lost()) - before).toBe(2);
});
