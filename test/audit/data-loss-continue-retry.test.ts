import { auditRecords, openAgentTask } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';
import {
  expectAuditVerified,
  failingReappend,
  loseThenWriteLate,
  quarantine,
  type Rec,
  records,
  recoveryMonitor,
} from '../helpers/recovery-harness.ts';

/**
 * A data-loss recovery continues each chain from the export (continueChains). A chain that started over at seq 1
 * after the loss (records written before recovery) had its stream and head deleted there, before its records
 * were appended again behind the export's end and before the epoch marker was set. An attempt that failed in
 * between lost those records; and every chain it continued looked continued to the next attempt, which left it
 * out of its `broker.data_loss` records. Each chain is now continued in one step that keeps what it did
 * (loss-continue.lua), and a later attempt, of this instance or another, takes it from there: each record
 * appended once, each chain recorded.
 */
const own = brokerOnOwnRedis('loss-continue-retry', { broker: { dataLossCheckMs: 600_000 } });

/** The buckets of the tasks opened so far: the export holds them all, so each is continued (and recorded) at every loss. */
const buckets = new Set<string>();

/** Records in ops and in the task's bucket, exported; Redis loses everything; an instance without the epoch guard writes on a fresh ops chain. */
async function loseWithLateRecord(agent: string, late: string): Promise<string[]> {
  const { t } = own;
  const { deps } = t.broker;
  await openAgentTask(t, agent, [{ role: 'demo-api' }]);
  // Two ops records: the fresh chain (one record) is shorter than the export's, which is how it is told apart.
  for (const who of [agent, `${agent}-b`]) await quarantine(t, who);
  await loseThenWriteLate(own, late);
  expect((await auditRecords(deps.redis, deps.keys)).map((r) => r.actor)).toEqual([late]);
  buckets.add(String(deps.keys.bucketOfTask(agent)));
  return ['ops', ...buckets];
}

async function expectVerified(): Promise<void> {
  const { deps } = own.t.broker;
  await expectAuditVerified(own.t);
  // Nothing kept once recorded.
  for (const chain of deps.keys.auditChains()) expect(await deps.redis.exists(`${deps.keys.auditBase(chain)}loss-continued`)).toBe(0);
  expect(await deps.redis.exists(deps.keys.lossRecords())).toBe(0);
}

function expectRecorded(after: Rec[], late: string, chains: string[]): void {
  // Before: the late record lost (taken off the chain, never appended again), and the bucket left unrecorded.
  expect(after.filter((r) => r.actor === late)).toHaveLength(1);
  const losses = after.filter((r) => r.action === 'broker.data_loss');
  expect(losses.map((r) => String(r.chain)).sort()).toEqual([...chains].sort());
  const ops = losses.find((r) => r.chain === 'ops')!;
  expect(ops.detail).toMatchObject({ rechained: 1 });
  expect((ops.detail as Rec).continuedFromSeq).toBeGreaterThan(0);
}

test('a data-loss recovery that failed after taking late records off a chain appends each once at its next attempt, and records every chain', async () => {
  const late = 'late-1';
  const chains = await loseWithLateRecord('loss-cont-1', late);
  let failing = true;
  const attempts = { n: 0 };
  const a = recoveryMonitor(own.t, {
    audit: failingReappend(
      own.t.broker.deps.audit,
      (r) => r.actor === late,
      () => failing,
      attempts,
    ),
  });
  await expect(a.init()).rejects.toThrow(/injected/);
  expect(attempts.n).toBe(1);
  expect(a.ready).toBe(false);
  // Taken off the chain, not yet appended again; the loss not yet recorded.
  expect((await records(own.t)).filter((r) => r.actor === late)).toHaveLength(0);
  expect(await own.t.broker.deps.redis.get(own.t.broker.deps.keys.epoch())).toBeNull();

  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  await a.check();
  expectRecorded(await records(own.t), late, chains);
  await expectVerified();
  await a.stop();
}, 60_000);

test('when the instance that took late records off a chain fails before appending them, another appends each once, and a later attempt of the first nothing twice', async () => {
  const late = 'late-2';
  const chains = await loseWithLateRecord('loss-cont-2', late);
  let failing = true;
  const attempts = { n: 0 };
  const a = recoveryMonitor(own.t, {
    audit: failingReappend(
      own.t.broker.deps.audit,
      (r) => r.actor === late,
      () => failing,
      attempts,
    ),
  });
  await expect(a.init()).rejects.toThrow(/injected/);
  expect((await records(own.t)).filter((r) => r.actor === late)).toHaveLength(0);

  // An instance started now (it never saw the data) recovers: the chains look continued, what was done is kept.
  const b = recoveryMonitor(own.t);
  await b.init();
  expect(b.ready).toBe(true);
  expectRecorded(await records(own.t), late, chains);

  // A was only slow: its next attempt appends and records nothing twice.
  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  expectRecorded(await records(own.t), late, chains);
  await expectVerified();
  await a.stop();
  await b.stop();
}, 60_000);
