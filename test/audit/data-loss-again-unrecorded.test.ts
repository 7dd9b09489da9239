import { isDeepStrictEqual } from 'node:util';
import { AGENT, openAgentTask } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';
import {
  type AppendCall,
  expectAuditVerified,
  exportAuditNow,
  failingAfterFirstLoss,
  lossRecords,
  quarantine,
  type Rec,
  recoveryMonitor,
  wipe,
} from '../helpers/recovery-harness.ts';

/**
 * A data-loss recovery stores its `broker.data_loss` records with the epoch marker (loss-mark.lua) and writes
 * them from there. When Redis loses its data again before they are all written, the stored records go with it:
 * the next recovery recorded only the second loss, which knew nothing of what the first had lost (the instance's
 * known heads were reset by the first recovery), so the audit trail said "none known" for a chain whose records
 * the first recovery knew were lost. The instance that stored them keeps those it has not seen written and writes
 * them once Redis lost them (each once, under the lost marker's identity).
 */
const own = brokerOnOwnRedis('loss-again', { broker: { dataLossCheckMs: 600_000 } });

test('records of a data loss that Redis lost again before they were written are written after the next recovery, once', async () => {
  const { redis, t } = own;
  const { deps } = t.broker;
  await openAgentTask(t, 'loss-again', [{ role: 'demo-api' }]);
  await deps.audit.flush();
  await exportAuditNow(t);
  // Records after the export (in ops and in the task's bucket): what this instance knows the loss took.
  // (the quarantine ends the task: a record in its bucket too).
  await quarantine(t, AGENT.slice('/agent/'.length));
  await deps.audit.flush();
  await wipe(redis);

  // The first recovery: the marker and its records are stored, one record lands, the rest fail.
  let failing = true;
  const tried: AppendCall[] = [];
  const a = recoveryMonitor(t, { audit: failingAfterFirstLoss(deps.audit, () => failing, { tried }) });
  await expect(a.init()).rejects.toThrow(/injected/);
  const bucket = String(deps.keys.bucketOfTask('loss-again'));
  expect(new Set(tried.map((x) => x.chain))).toEqual(new Set(['ops', bucket]));
  // What the first recovery knew was lost (the bucket's record after the export).
  expect((tried.find((x) => x.chain === bucket)!.record.detail as Rec).lostFromSeq).toBeDefined();
  const unwritten = tried.slice(1).map((x) => ({ chain: x.chain, detail: x.record.detail ?? {} }));
  expect(unwritten).toHaveLength(1);

  // Redis loses its data again before anyone wrote the rest: the stored records go with it.
  await deps.audit.flush();
  await wipe(redis);
  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  // A later check writes nothing twice.
  await a.check();
  const losses = await lossRecords(t);
  // The second loss: one in ops and one in the bucket; and the first loss's record that was never written.
  // Before: only the second loss's, and what the first knew lost in that chain was recorded nowhere.
  const first = losses.filter((r) => String(r.chain) === unwritten[0]!.chain && isDeepStrictEqual(r.detail, unwritten[0]!.detail));
  expect(first).toHaveLength(1);
  expect(losses.map((r) => String(r.chain)).sort()).toEqual(['ops', bucket, unwritten[0]!.chain].sort());
  await expectAuditVerified(t);
  expect(await deps.redis.exists(deps.keys.lossRecords())).toBe(0);
  await a.stop();
}, 60_000);
