import { jest } from '@jest/globals';
import { Redis } from 'ioredis';
import { Keys } from '../../src/redis/keys.ts';
import { acquireLock, keepLock } from '../../src/redis/lock.ts';
import { dropPrefix, REDIS_URL, uniquePrefix, waitFor } from '../helpers/broker.ts';

/**
 * src/redis/lock.ts keepLock: a holder cut off from Redis must notice its lock lapse after one TTL, whatever
 * the wall clock does meanwhile. It counted the TTL with Date.now(): the process's clock stepped back an hour
 * (NTP setting a fast clock right) made the elapsed time negative, so the holder went on as the lock's owner
 * while another instance took the lapsed lock: two holders of one lock.
 */
const HOUR = 3_600_000;
let redis: Redis;
const prefix = uniquePrefix('lock-clock');
const keys = new Keys(prefix, 4);
beforeAll(() => {
  redis = new Redis(REDIS_URL);
});
afterAll(async () => {
  jest.restoreAllMocks();
  await dropPrefix(prefix);
  await redis.quit();
});

test.each([
  ['back', -HOUR],
  ['forward', HOUR],
])('a holder cut off from Redis gives its lock up once it lapsed, the wall clock stepped %s an hour', async (_, stepMs) => {
  const key = keys.lock(`cut-off-${stepMs}`);
  // No offline queue: once cut off, every extension fails at once (as after commandTimeoutMs).
  const holder = new Redis(REDIS_URL, { maxRetriesPerRequest: 0, enableOfflineQueue: false, lazyConnect: true });
  await holder.connect();
  const lock = await acquireLock(holder, key, { ttlMs: 1500, onTakeover: () => {} });
  expect(lock).toBeDefined();
  const keep = keepLock(lock!, 'test');
  try {
    // Still ours after several extensions.
    await new Promise((r) => setTimeout(r, 1000));
    expect(keep.signal.aborted).toBe(false);
    expect(await redis.pttl(key)).toBeGreaterThan(0);
    // Cut off: every extension fails from now on, and the key lapses in Redis. Then the wall clock steps.
    holder.disconnect();
    const realNow = Date.now.bind(Date);
    jest.spyOn(Date, 'now').mockImplementation(() => realNow() + stepMs);
    const other = await acquireLock(redis, key, { ttlMs: 1500, waitMs: 10_000, onTakeover: () => {} });
    expect(other).toBeDefined();
    // Another instance holds the lock now: the cut-off holder must have been told (or be told at its next tick).
    await waitFor(async () => keep.signal.aborted, 5000);
    expect(String((keep.signal.reason as Error).message)).toContain('not extended for its TTL');
    await other!.release();
  } finally {
    jest.restoreAllMocks();
    keep.stop();
    holder.disconnect();
  }
});

/**
 * Two holders of one lock: the cut-off holder must be told before another instance can take the lock, not at
 * its next tick after that. It counted the TTL from when keepLock was called (the rotation writes its audit
 * intent between taking the lock and keeping it) and looked only at each tick (a third of the TTL apart), so
 * another instance held the lapsed lock while the first went on writing for up to a third of the TTL more.
 */
test.each([
  ['kept from a while after it was taken', 600],
  ['kept from when it was taken, extended a few times', 0],
])('a holder cut off from Redis is told before another instance can take its lock (%s)', async (_, gapMs) => {
  const key = keys.lock(`told-first-${gapMs}`);
  const holder = new Redis(REDIS_URL, { maxRetriesPerRequest: 0, enableOfflineQueue: false, lazyConnect: true });
  await holder.connect();
  const lock = await acquireLock(holder, key, { ttlMs: 1500, onTakeover: () => {} });
  expect(lock).toBeDefined();
  await new Promise((r) => setTimeout(r, gapMs));
  const keep = keepLock(lock!, 'test');
  try {
    if (gapMs === 0) {
      await new Promise((r) => setTimeout(r, 1200));
      expect(keep.signal.aborted).toBe(false);
    }
    holder.disconnect();
    const other = await acquireLock(redis, key, { ttlMs: 1500, waitMs: 10_000, onTakeover: () => {} });
    expect(other).toBeDefined();
    expect(keep.signal.aborted).toBe(true);
    expect(String((keep.signal.reason as Error).message)).toContain('not extended for its TTL');
    await other!.release();
  } finally {
    keep.stop();
    holder.disconnect();
  }
});
