import { ONCE_KEEP_MS } from '../../src/audit/outbox-member.ts';
import { lossSteps } from '../../src/audit/restore.ts';
import { repairSteps } from '../../src/ops/rollback.ts';
import type { AuditChain, Keys } from '../../src/redis/keys.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';
import {
  expectAuditVerified,
  interceptAppends,
  loseThenWriteLate,
  quarantine,
  records,
  recoveryMonitor,
  timePasses,
} from '../helpers/recovery-harness.ts';

/**
 * The identities of records written once (`<base>audit-once`, audit-append.lua) expire a week after the last.
 * While a rollback repair is kept in a chain they do not (test/ops/rollback-once-kept.test.ts), but a data-loss
 * continuation kept in it (`<base>loss-continued`, loss-continue.lua) waits the same way, for its recovery's next
 * attempt or for an instance to start: a week later the ids of the records it had appended again were gone, and
 * the attempt that finished it appended them a second time. Now kept while either is, until it is dropped.
 */
const own = brokerOnOwnRedis('loss-once-kept', { broker: { dataLossCheckMs: 600_000 } });

test('the records a kept data-loss continuation appended again are not appended twice when it is finished more than a week later', async () => {
  const { redis, t } = own;
  const { deps } = t.broker;
  const late = 'late-once-kept';
  // Two ops records exported: the fresh chain written after the loss (one record) is shorter, which tells it apart.
  for (const who of ['loss-once-a', 'loss-once-b']) await quarantine(t, who);
  await loseThenWriteLate(own, late);

  // The recovery takes the late record off the fresh chain and appends it again behind the export's end, then
  // fails writing its `broker.data_loss` record (and its instance dies): the continuation stays kept.
  let failing = true;
  const audit = interceptAppends(deps.audit, async ({ record }, append) => {
    if (failing && record.action === 'broker.data_loss') throw new Error('died (injected)');
    return append();
  });
  const a = recoveryMonitor(t, { audit });
  await expect(a.init()).rejects.toThrow(/injected/);
  expect((await records(t)).filter((r) => r.actor === late)).toHaveLength(1);
  expect(await deps.redis.exists(deps.keys.lossContinued('ops'))).toBe(1);
  expect(await deps.redis.scard(deps.keys.auditOnce('ops'))).toBeGreaterThan(0);
  // Before: a week (ONCE_KEEP_MS), however long the kept continuation waits.
  expect(await deps.redis.pttl(deps.keys.auditOnce('ops'))).toBe(-1);

  // Nothing runs it for more than a week (every instance down).
  await timePasses(redis, ONCE_KEEP_MS + 60_000);

  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  // The next check finishes what the recovery kept (finishLeft): the continuation's records, each once.
  await a.check();
  // Before: 2 (the ids had expired, and the kept record was appended again a second time).
  expect((await records(t)).filter((r) => r.actor === late)).toHaveLength(1);
  expect(await deps.redis.exists(deps.keys.lossContinued('ops'))).toBe(0);
  // Dropped with the continuation: they expire again.
  expect(await deps.redis.pttl(deps.keys.auditOnce('ops'))).toBeGreaterThan(ONCE_KEEP_MS - 60_000);
  await expectAuditVerified(t);
  await a.stop();
}, 60_000);

test.each([
  ['a data-loss continuation', lossSteps, (keys: Keys, chain: AuditChain) => keys.lossContinued(chain)],
  ['a rollback repair', repairSteps, (keys: Keys, chain: AuditChain) => keys.rollbackRepair(chain)],
] as const)('while %s is kept in a chain, the ids written there do not expire; dropping it sets their week', async (_, steps, key) => {
  const { deps } = own.t.broker;
  const chain = deps.keys.auditChains().find((c) => c !== 'ops')!;
  await deps.redis.rpush(key(deps.keys, chain), JSON.stringify({ orphans: [] }));
  await deps.audit.appendOnce(chain, { action: 'access.deny', actor: 'kept-kind', decision: 'deny' }, `kept-kind:${chain}:${Date.now()}`);
  await deps.audit.flush();
  expect(await deps.redis.pttl(deps.keys.auditOnce(chain))).toBe(-1);
  await steps.drop(deps.redis, deps.keys, [chain]);
  expect(await deps.redis.exists(key(deps.keys, chain))).toBe(0);
  expect(await deps.redis.pttl(deps.keys.auditOnce(chain))).toBeGreaterThan(ONCE_KEEP_MS - 60_000);
});
