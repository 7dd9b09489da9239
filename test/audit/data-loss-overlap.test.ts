import { ADMIN, auditRecords, call } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';

/**
 * Two data-loss checks of one instance overlapping (the periodic one and one started by a caller, or a slow
 * one and the next tick) each saw the empty Redis and each ran a recovery: the loss was counted and logged
 * twice, and a look that began before the wipe and ended after the other's recovery took the new dataset for
 * a rollback and wrote a second `broker.data_loss` record (`redis_rolled_back`) for the same loss.
 */
// The periodic check is driven by hand, so the two overlapping checks are the test's.
const own = brokerOnOwnRedis('loss-overlap', { broker: { dataLossCheckMs: 600_000 } });

async function wipe(): Promise<void> {
  const admin = own.redis.client();
  await admin.connect();
  expect(await admin.call('FLUSHALL')).toBe('OK');
  admin.disconnect();
}

async function losses() {
  const b = own.t;
  await b.broker.deps.audit.flush();
  const records = await auditRecords(b.broker.deps.redis, b.broker.deps.keys);
  const metrics = await (await fetch(`${b.url}/metrics`)).text();
  return {
    records: records.filter((r) => r.action === 'broker.data_loss' && r.chain === 'ops').map((r) => r.reason),
    lost: Number(/jit_redis_data_loss_total\{kind="lost"\} (\d+)/.exec(metrics)?.[1] ?? 0),
    rolledBack: Number(/jit_redis_data_loss_total\{kind="rolled_back"\} (\d+)/.exec(metrics)?.[1] ?? 0),
  };
}

test('two checks that both see one wipe: one recovery, counted once, one broker.data_loss record', async () => {
  const b = own.t;
  expect((await call(b.url, 'GET', '/v1/admin/quarantine', b.as(ADMIN))).status).toBe(200);
  await b.broker.deps.audit.flush();
  await wipe();
  await Promise.all([b.broker.recovery.check(), b.broker.recovery.check()]);
  expect(b.broker.recovery.ready).toBe(true);
  expect(await losses()).toEqual({ records: ['redis_data_lost'], lost: 1, rolledBack: 0 });
}, 60_000);

test('a check under way when Redis is wiped and one after it: the loss is not also taken for a rollback', async () => {
  const b = own.t;
  const before = await losses();
  await call(b.url, 'GET', '/v1/admin/quarantine', b.as(ADMIN));
  await b.broker.deps.audit.flush();
  const first = b.broker.recovery.check();
  await wipe();
  const second = b.broker.recovery.check();
  await Promise.all([first, second]);
  await b.broker.recovery.check();
  expect(b.broker.recovery.ready).toBe(true);
  const after = await losses();
  // The wipe took the earlier records: only the new dataset's are here.
  expect(after).toEqual({ records: ['redis_data_lost'], lost: before.lost + 1, rolledBack: 0 });
}, 60_000);
