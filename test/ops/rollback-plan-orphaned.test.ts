import { auditRecords, openAgentTask } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';
import { failingAfterFirstLoss, lossRecords, recoveryMonitor, rollBack, snapshot } from '../helpers/recovery-harness.ts';

/**
 * A rollback recovery stores its `broker.data_loss` records with its claim (rollback-claim.lua) and writes them
 * from there. When it died part-way through them, the rest were written only by an instance that claimed the
 * same rollback, or one that started and found a repair it kept. A rollback the export did not reach (nothing
 * repaired, nothing kept), noticed by this one instance alone, left them stored and unwritten for good.
 */
// No worker: no export runs, so the export stays behind what Redis lost (nothing to repair, nothing kept).
const own = brokerOnOwnRedis('rollback-plan-orphaned', { broker: { dataLossCheckMs: 600_000, worker: false } });

test('the records a rollback recovery stored with its claim and died before writing are written by an instance that starts, once', async () => {
  const { redis, t } = own;
  const { deps } = t.broker;
  let failing = true;
  const flaky = failingAfterFirstLoss(deps.audit, () => failing, { methods: ['appendOnce'] });
  const a = recoveryMonitor(t, { audit: flaky });
  await a.init();
  expect(a.ready).toBe(true);
  // Redis goes back to a snapshot taken before a task (a bucket chain) this instance opened.
  await snapshot(redis);
  await openAgentTask(t, 'rb-orphaned', [{ role: 'demo-api' }]);
  await deps.audit.flush();
  await rollBack(redis);
  const lossesBefore = (await auditRecords(deps.redis, deps.keys)).filter((r) => r.action === 'broker.data_loss').length;

  // The instance notices, claims, writes one record and dies.
  await expect(a.check()).rejects.toThrow(/injected/);
  await a.stop();
  expect(await deps.redis.hlen(deps.keys.rollbackPlans())).toBe(1);
  for (const c of deps.keys.auditChains()) expect(await deps.redis.exists(deps.keys.rollbackRepair(c))).toBe(0);
  const written = async () => (await lossRecords(t)).slice(lossesBefore);
  expect(await written()).toHaveLength(1);

  // It starts again (a new process): the rest are written, each once.
  failing = false;
  const b = recoveryMonitor(t);
  await b.init();
  expect(b.ready).toBe(true);
  await b.check();
  const bucket = String(deps.keys.bucketOfTask('rb-orphaned'));
  // Before: still the one (the others stayed stored, written by nobody).
  expect((await written()).map((r) => String(r.chain)).sort()).toEqual(['ops', bucket].sort());
  expect(await deps.redis.hlen(deps.keys.rollbackPlans())).toBe(0);
  await b.stop();
}, 60_000);
