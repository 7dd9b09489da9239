import { expect } from '@jest/globals';
import { silentLogger } from '../../src/logger.ts';
import { isPresent } from '../../src/ops/bucket-marks.ts';
import type { DataLossMonitor } from '../../src/ops/recovery.ts';
import type { RedisClient } from '../../src/redis/scripts.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';
import { exportAuditNow, recoveryMonitor, wipe } from '../helpers/recovery-harness.ts';

/**
 * On a single node the data-loss check reads the epoch marker (with the signing keys, the flag that the buckets'
 * markers were written) and then the buckets' markers (one MGET), in one pipeline but not atomically: another
 * client's FLUSHALL may run between them. The check then saw the epoch held and every marker gone, and took a
 * whole data loss for the loss of every bucket: kind="bucket_lost" counted and logged (a Cluster master lost,
 * says the runbook) for what was a `lost`, before its recovery, under the lock, found the epoch gone.
 *
 * Made deterministic by running the wipe inside the check, right before its MGET is sent (once the commands sent
 * before it were answered: a PING behind them on the same connection).
 */
const own = brokerOnOwnRedis('bucketwipe', { broker: { dataLossCheckMs: 3_600_000 } });
const monitors: DataLossMonitor[] = [];
afterAll(async () => {
  for (const m of monitors) await m.stop();
});

async function lossCount(kind: string): Promise<number> {
  const text = await (await fetch(`${own.t.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`jit_redis_data_loss_total{kind="${kind}"}`));
  return line ? Number(line.split(' ')[1]) : 0;
}

/**
 * The broker's client, with Redis wiped (once, when `armed`) right before an MGET of the markers is sent: the
 * `nth` one from the arming (1: the check's, 2: a bucket recovery's, under its lock).
 */
function wipedBeforeMget(nth = 1): { redis: RedisClient; arm(): void; fired(): boolean } {
  const redis = own.t.broker.deps.redis;
  let armed = false;
  let fired = false;
  let count = 0;
  const proxy = new Proxy(redis, {
    get(target, p) {
      const v = Reflect.get(target, p, target);
      if (typeof v !== 'function') return v;
      if (p !== 'mget') return v.bind(target);
      return async (...args: unknown[]) => {
        if (armed && ++count === nth) {
          armed = false;
          fired = true;
          // Sent behind the check's GET, HLEN, EXISTS and HGET: answered once they were run.
          await target.ping();
          await wipe(own.redis);
        }
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  return {
    redis: proxy,
    arm: () => {
      armed = true;
    },
    fired: () => fired,
  };
}

test('a wipe between the check’s epoch read and its markers’ MGET is a data loss, not the loss of every bucket', async () => {
  const { t } = own;
  await exportAuditNow(t);
  const hook = wipedBeforeMget();
  const m = recoveryMonitor(t, { redis: hook.redis, logger: silentLogger });
  monitors.push(m);
  await m.init();
  expect(m.ready).toBe(true);
  const [lostBefore, bucketBefore] = [await lossCount('lost'), await lossCount('bucket_lost')];

  hook.arm();
  await m.check().catch(() => {});
  expect(hook.fired()).toBe(true);
  // Recovered at once or at the next check, as a whole loss.
  if (!m.ready) await m.check().catch(() => {});
  expect(m.ready).toBe(true);
  expect(await lossCount('bucket_lost')).toBe(bucketBefore);
  expect(await lossCount('lost')).toBe(lostBefore + 1);
  // The new dataset has every bucket's marker (none left `recovering:`).
  const { keys, redis } = t.broker.deps;
  for (let b = 0; b < keys.buckets; b++) expect(isPresent(await redis.get(keys.bucketMarker(b)))).toBe(true);
}, 60_000);

/** Deletes every key of `bucket` in one command: what the loss of its Cluster master leaves of it. */
async function loseBucket(bucket: number): Promise<void> {
  const admin = own.redis.client();
  await admin.connect();
  try {
    const pattern = `${own.t.broker.deps.keys.base(bucket).replace(/[*?[\]\\]/g, '\\$&')}*`;
    const found: string[] = [];
    let cursor = '0';
    do {
      const [next, batch] = await admin.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      found.push(...batch);
      cursor = next;
    } while (cursor !== '0');
    expect(found).toContain(own.t.broker.deps.keys.bucketMarker(bucket));
    await admin.del(...found);
  } finally {
    admin.disconnect();
  }
}

test('a wipe between a bucket recovery’s epoch read and its markers’ MGET: not ready on the wiped Redis, recovered as a whole loss', async () => {
  const { t } = own;
  const { keys, redis } = t.broker.deps;
  await exportAuditNow(t);
  const hook = wipedBeforeMget(2);
  const m = recoveryMonitor(t, { redis: hook.redis, logger: silentLogger });
  monitors.push(m);
  await m.init();
  expect(m.ready).toBe(true);
  const lostBefore = await lossCount('lost');

  await loseBucket(3);
  hook.arm();
  await m.check().catch(() => {});
  expect(hook.fired()).toBe(true);
  // Before: the recovery saw every marker gone under an epoch read before the wipe, set them `recovering:`,
  // continued every chain on the empty Redis, wrote the markers back over its own, and answered ready on a
  // Redis without signing keys or epoch marker (until the next check).
  const [epoch, signing] = await Promise.all([redis.get(keys.epoch()), redis.hlen(keys.signingKeys())]);
  expect({ ready: m.ready, epoch, signing }).toEqual({ ready: false, epoch: null, signing: 0 });
  await m.check().catch(() => {});
  if (!m.ready) await m.check().catch(() => {});
  expect(m.ready).toBe(true);
  expect(await lossCount('lost')).toBe(lostBefore + 1);
  for (let b = 0; b < keys.buckets; b++) expect(isPresent(await redis.get(keys.bucketMarker(b)))).toBe(true);
}, 60_000);
