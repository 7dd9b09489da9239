import { auditRecords, openAgentTask } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';
import {
  type AppendCall,
  expectAuditVerified,
  exportAuditNow,
  failingAfterFirstLoss,
  lossRecords,
  quarantine,
  recoveryMonitor,
  wipe,
} from '../helpers/recovery-harness.ts';

/**
 * A data-loss recovery sets the epoch marker (SET NX: one recovery records the loss) and then writes one
 * `broker.data_loss` record in `ops` and in each chain it continued from the export. An attempt that set the
 * marker and failed part-way through the records (Redis failing mid-way, the instance killed) left the rest
 * unwritten for good: the next attempt, and every other instance, found the marker and wrote nothing. The
 * records are now stored with the marker in the same step and written from there, each once, by whichever
 * attempt or instance gets through.
 */
const own = brokerOnOwnRedis('loss-record-retry', { broker: { dataLossCheckMs: 600_000 } });

test('a data-loss recovery that failed after the marker and part of its records: each record is written exactly once, by its next attempt or another instance', async () => {
  const { redis, t } = own;
  const { deps } = t.broker;
  // Records in two chains (the task's bucket and ops), exported; then Redis loses everything.
  await openAgentTask(t, 'loss-retry', [{ role: 'demo-api' }]);
  await quarantine(t, 'loss-retry');
  await exportAuditNow(t);
  await deps.audit.flush();
  await wipe(redis);

  // The first attempt: the first broker.data_loss record lands, the next fails (Redis failing mid-way).
  const tried: AppendCall[] = [];
  let failing = true;
  const a = recoveryMonitor(t, { audit: failingAfterFirstLoss(deps.audit, () => failing, { tried }) });
  await expect(a.init()).rejects.toThrow(/injected/);
  expect(a.ready).toBe(false);
  const bucket = deps.keys.bucketOfTask('loss-retry');
  expect(new Set(tried.map((c) => c.chain))).toEqual(new Set(['ops', String(bucket)]));
  expect(await deps.redis.get(deps.keys.epoch())).not.toBeNull();

  const losses = async () => (await lossRecords(t)).map((r) => String(r.chain));
  expect(await losses()).toHaveLength(1);

  // Another instance starting now (it never saw the data) writes the rest.
  const b = recoveryMonitor(t);
  await b.init();
  expect(b.ready).toBe(true);
  // Before: only the record the first attempt wrote (the marker was set, so nobody wrote the others).
  expect((await losses()).sort()).toEqual(['ops', String(bucket)].sort());

  // The first instance's next attempt writes none of them again.
  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  expect((await losses()).sort()).toEqual(['ops', String(bucket)].sort());
  await expectAuditVerified(t);
  // Nothing kept once written.
  expect(await deps.redis.exists(deps.keys.lossRecords())).toBe(0);
  await a.stop();
  await b.stop();
}, 60_000);

test('a data-loss recovery whose attempt failed after the marker writes the rest at its own next attempt, once', async () => {
  const { redis, t } = own;
  const { deps } = t.broker;
  await openAgentTask(t, 'loss-retry-2', [{ role: 'demo-api' }]);
  await deps.audit.flush();
  await exportAuditNow(t);
  const lossesBefore = (await auditRecords(deps.redis, deps.keys)).filter((r) => r.action === 'broker.data_loss').length;
  expect(lossesBefore).toBeGreaterThan(0);
  await wipe(redis);

  let failing = true;
  const a = recoveryMonitor(t, { audit: failingAfterFirstLoss(deps.audit, () => failing) });
  await expect(a.init()).rejects.toThrow(/injected/);
  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  await a.check();
  // Only this loss's records are in Redis now (the earlier ones went with the wipe): one in ops, one in the bucket.
  const bucket = deps.keys.bucketOfTask('loss-retry-2');
  const losses = (await lossRecords(t)).map((r) => String(r.chain));
  expect(losses.sort()).toEqual([...new Set(['ops', String(bucket), String(deps.keys.bucketOfTask('loss-retry'))])].sort());
  await expectAuditVerified(t);
  await a.stop();
}, 60_000);
