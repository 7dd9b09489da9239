import { afterAll, expect, jest, test } from '@jest/globals';
import { Redis } from 'ioredis';
import { outboxStats } from '../../src/audit/outbox.ts';
import { Metrics } from '../../src/metrics.ts';
import { Keys } from '../../src/redis/keys.ts';

/**
 * The Redis-backed ages of /metrics are read once per `server.metricsRefreshSeconds` and counted on to the
 * scrape. Found in review: a reading that failed kept the last value but took the failure's time as the
 * value's, so each failed reading set the age back by an interval. While Redis kept failing (when records
 * pile up in the outbox, the case `jit_audit_outbox_oldest_seconds > 60` is there to catch), the gauge went
 * up and down between the last good value and one interval above it, and the alert never fired.
 */
const prefix = `metrics-ages-${process.pid}`;
const keys = new Keys(prefix, 2);
const admin = new Redis('redis://127.0.0.1:6379');
afterAll(async () => {
  const found = await admin.keys(`${prefix}:*`);
  if (found.length > 0) await admin.del(...found);
  admin.disconnect();
});

async function gauge(m: Metrics, name: string): Promise<number> {
  const line = (await m.registry.metrics()).split('\n').find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`no sample of ${name}`);
  return Number(line.split(' ')[1]);
}

test('an outbox age keeps counting from the last good reading while readings fail', async () => {
  // A record of a decision 100 s old that nobody appended.
  const now = Number((await admin.time())[0]) * 1000;
  await admin.zadd(keys.auditOutbox(keys.bucketOfTask('t-stuck')), now - 100_000, 'x');
  const redis = new Redis('redis://127.0.0.1:6379', { lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false });
  await redis.connect();
  const metrics = new Metrics({ refreshMs: 50 });
  metrics.outboxSource = () => outboxStats({ redis, keys, clock: { now: () => Date.now() } as never });
  const first = await gauge(metrics, 'jit_audit_outbox_oldest_seconds');
  expect(first).toBeGreaterThanOrEqual(99);
  // Redis stops answering this process: every reading from now on fails.
  redis.disconnect();
  const failedFrom = performance.now();
  let last = first;
  while (performance.now() - failedFrom < 600) {
    await new Promise((r) => setTimeout(r, 70));
    const age = await gauge(metrics, 'jit_audit_outbox_oldest_seconds');
    // Never set back: the record is no younger than it was.
    expect(age).toBeGreaterThanOrEqual(last);
    last = age;
  }
  // And it grew with the time that passed (before: it stayed within one interval of the first value).
  expect(last).toBeGreaterThanOrEqual(first + 0.5);
  expect(metrics.readings.outbox.taken).toBeGreaterThan(3);
});

test('records in flight at each reading do not make an outbox age that grows with the refresh interval', async () => {
  // Found in review: the age was counted on from every reading with records, and on a busy broker every
  // reading finds a few in flight (written by a script, appended a few ms later). With
  // server.metricsRefreshSeconds above the documented alert (60 s) the gauge crossed it on every interval.
  jest.useFakeTimers({ doNotFake: ['nextTick', 'setImmediate', 'queueMicrotask'] });
  try {
    const metrics = new Metrics({ refreshMs: 300_000 });
    let oldest = 0.002;
    metrics.outboxSource = async () => ({ records: 2, oldestSeconds: oldest, parked: 0 });
    expect(await gauge(metrics, 'jit_audit_outbox_oldest_seconds')).toBeCloseTo(0.002, 3);
    jest.advanceTimersByTime(120_000);
    // What the reading saw was appended long ago; nothing says anything is waiting 2 minutes.
    expect(await gauge(metrics, 'jit_audit_outbox_oldest_seconds')).toBeLessThanOrEqual(10);
    // A record recovery had not taken at the reading (past its 10 s grace) is still counted on.
    jest.advanceTimersByTime(300_000);
    oldest = 30;
    expect(await gauge(metrics, 'jit_audit_outbox_oldest_seconds')).toBeCloseTo(30, 1);
    jest.advanceTimersByTime(100_000);
    expect(await gauge(metrics, 'jit_audit_outbox_oldest_seconds')).toBeCloseTo(130, 1);
  } finally {
    jest.useRealTimers();
  }
});
