import { quarantine, recoveryMonitor } from '../helpers/recovery-harness.ts';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * The flag that counts one data loss once across failed recovery attempts (DataLossMonitor.dataLost) is cleared once
 * the instance holds a recovered dataset, however it came to hold it. An instance whose attempt failed and which then
 * found the dataset recovered by another (its first look, or its own look at a dataset set up since) answered ready
 * with the flag still set: every later loss it saw was neither counted nor logged.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('recovery-flag-cleared', { broker: { dataLossCheckMs: 600_000 } });
}, 60_000);
afterAll(async () => {
  await t?.close();
});

const lost = async () => (await t.broker.deps.metrics.dataLoss.get()).values.find((v) => v.labels.kind === 'lost')?.value ?? 0;

test('a loss seen at the first look, whose recovery failed and was finished elsewhere, leaves the next loss counted', async () => {
  const { deps } = t.broker;
  await quarantine(t, 'flag-cleared-q');
  let failures = 1;
  // A fresh instance (no first look yet), whose recovery fails after the lock (its secrets not written back).
  const m = recoveryMonitor(t, {
    restoreSecrets: async () => {
      if (failures-- > 0) throw new Error('redis timed out');
    },
  });
  const before = await lost();
  // The signing keys are gone while the epoch marker holds: a loss, seen at this instance's first look.
  await deps.redis.del(deps.keys.signingKeys());
  await expect(m.init()).rejects.toThrow('redis timed out');
  expect((await lost()) - before).toBe(1);
  // The signing key was recreated under the lock: the next look finds a dataset set up, and takes it.
  await m.check();
  expect(m.ready).toBe(true);
  expect((await lost()) - before).toBe(1);
  // A later, separate loss: counted (before: still 1, the flag never cleared).
  await deps.redis.del(deps.keys.epoch());
  await m.check();
  expect(m.ready).toBe(true);
  expect((await lost()) - before).toBe(2);
});
