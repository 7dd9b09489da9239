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
 * A rollback recovery moves each chain that clashes with the export onto the export's end and takes the records
 * Redis wrote on the rolled-back history off the chain (repairChains), to append them again behind the export's
 * end. An attempt that failed between the two (Redis failing mid-way, the instance killed) lost those records:
 * the next attempt found the chain repaired and nothing to append again, and its `broker.data_loss` records
 * said nothing of the repair. The repair now keeps what it took off (and what it found) in the same step, and a
 * later attempt, of this instance or another, appends each of those records once.
 */
const own = brokerOnOwnRedis('rollback-repair-retry', { broker: { dataLossCheckMs: 600_000 } });

test('a rollback recovery that failed after taking clashing records off a chain appends each of them again exactly once at its next attempt', async () => {
  const isClashing = await rollBackWithClash(own, 'rb-repair');
  const lossesBefore = (await lossRecords(own.t)).length;
  let failing = true;
  const attempts = { n: 0 };
  const a = recoveryMonitor(own.t, { audit: failingReappend(own.t.broker.deps.audit, isClashing, () => failing, attempts) });
  await a.init();
  expect(a.ready).toBe(false);
  await expect(a.check()).rejects.toThrow(/injected/);
  expect(attempts.n).toBe(1);
  // Taken off the chain, not yet appended again.
  expect((await records(own.t)).filter(isClashing)).toHaveLength(0);

  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  // A later check appends nothing twice.
  await a.check();
  const after = await records(own.t);
  // Before: the clashing record lost (the second attempt found the chain repaired and nothing to append again).
  expect(after.filter(isClashing)).toHaveLength(1);
  const losses = after.filter((r) => r.action === 'broker.data_loss').slice(lossesBefore);
  expect(losses.map((r) => r.chain)).toEqual(['ops']);
  expect(losses[0]!.detail).toMatchObject({ kind: 'rollback', rechained: 1 });
  await expectRollbackRecovered(own.t);
  await a.stop();
}, 60_000);

test('when the instance that took clashing records off a chain dies before appending them again, another appends each once, and records the rollback once', async () => {
  const isClashing = await rollBackWithClash(own, 'rb-repair-2');
  const lossesBefore = (await lossRecords(own.t)).length;
  let failing = true;
  const attempts = { n: 0 };
  const a = recoveryMonitor(own.t, { audit: failingReappend(own.t.broker.deps.audit, isClashing, () => failing, attempts) });
  await a.init();
  await expect(a.check()).rejects.toThrow(/injected/);
  expect((await records(own.t)).filter(isClashing)).toHaveLength(0);

  // An instance started now (A is taken for dead): Redis's chains look repaired, but the repair is kept.
  const b = recoveryMonitor(own.t);
  await b.init();
  expect(b.ready).toBe(false);
  await b.check();
  expect(b.ready).toBe(true);
  let after = await records(own.t);
  expect(after.filter(isClashing)).toHaveLength(1);
  const losses = after.filter((r) => r.action === 'broker.data_loss').slice(lossesBefore);
  expect(losses.map((r) => r.chain)).toEqual(['ops']);
  expect(losses[0]!.detail).toMatchObject({ kind: 'rollback', rechained: 1 });

  // A was only slow: its next attempt appends and records nothing twice.
  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  after = await records(own.t);
  expect(after.filter(isClashing)).toHaveLength(1);
  expect(after.filter((r) => r.action === 'broker.data_loss').slice(lossesBefore)).toHaveLength(1);
  await expectRollbackRecovered(own.t);
  await a.stop();
  await b.stop();
}, 60_000);
