import { lossRecords, quarantine, recoveryMonitor } from '../helpers/recovery-harness.ts';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team (locks at a 10-s hold): recovery after a data loss records one `broker.data_loss` per loss. A
 * recovering instance stalled under the recovery lock past its hold (the lock lapsed, another instance took
 * it and recovered, writing the marker) went on, found the marker written (SET NX refused), and still
 * recorded the loss a second time.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('recovery-twice', { broker: { dataLossCheckMs: 600_000 } });
}, 60_000);
afterAll(async () => {
  await t?.close();
});

test('a recovery whose lock lapsed mid-way records no second data loss (found by red team)', async () => {
  const { deps } = t.broker;
  // Something in the export, so that an empty Redis reads as a data loss.
  await quarantine(t, 'rt3-q');
  let stalled = false;
  const b = recoveryMonitor(t);
  // A stalls past its hold after restoring the quarantines: its lock lapses and B recovers meanwhile.
  const a = recoveryMonitor(t, {
    restoreQuarantines: async (entries) => {
      await deps.quarantine.restore(entries);
      if (stalled) return;
      stalled = true;
      await deps.redis.del(deps.keys.lock('recovery'));
      await b.init();
    },
  });
  const opsLosses = async () => (await lossRecords(t)).filter((r) => r.chain === 'ops').length;
  const before = await opsLosses();
  await deps.redis.del(deps.keys.epoch());
  await a.init().catch(() => {});
  expect(stalled).toBe(true);
  // Before: 2 (B's, then A's once it went on).
  expect((await opsLosses()) - before).toBe(1);
});
