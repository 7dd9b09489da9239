import { jest } from '@jest/globals';
import { Redis } from 'ioredis';
import { Keys } from '../../src/redis/keys.ts';
import { acquireLock, type LockTakeover, withLock } from '../../src/redis/lock.ts';
import { dropPrefix, REDIS_URL, uniquePrefix } from '../helpers/broker.ts';

/**
 * src/redis/lock.ts: a lock key no broker could have set (no expiry, or a TTL longer than its holders
 * set) is taken over and reported, never waited for: before, a `SET <lock> x` by anyone with Redis write
 * access stopped what the lock guards (the audit export and sealing, rotations, AWS revocations) for good.
 */
let redis: Redis;
const prefix = uniquePrefix('lock');
const keys = new Keys(prefix, 4);
beforeAll(() => {
  redis = new Redis(REDIS_URL);
});
afterAll(async () => {
  await dropPrefix(prefix);
  await redis.quit();
});

test('a lock key without an expiry is taken over at once (even with waitMs), reported once, and then ours', async () => {
  const key = keys.lock('no-expiry');
  await redis.set(key, 'stuck');
  const seen: LockTakeover[] = [];
  // Counted in tries, not milliseconds: every try is one EVALSHA (then an EVAL, on a cold script cache).
  const tries = jest.spyOn(redis, 'evalsha');
  let triesBeforeHeld = -1;
  const got = await withLock(redis, key, { ttlMs: 5000, waitMs: 10_000, onTakeover: (t) => seen.push(t) }, async (lock) => {
    triesBeforeHeld = tries.mock.calls.length;
    expect(await lock.held()).toBe(true);
    expect(await redis.pttl(key)).toBeGreaterThan(4000);
    return 'ran';
  });
  tries.mockRestore();
  expect(got).toEqual({ value: 'ran' });
  // Taken over by the first try: a lock that waited for the key to lapse (it never does) tried again and again.
  expect(triesBeforeHeld).toBe(1);
  expect(seen).toEqual([{ key, pttlMs: -1 }]);
  expect(await redis.exists(key)).toBe(0);
});

test('a holder within the TTL is waited for, not taken over; our own extend may not go beyond the TTL', async () => {
  const key = keys.lock('plausible');
  const seen: LockTakeover[] = [];
  const onTakeover = (t: LockTakeover) => seen.push(t);
  const first = await acquireLock(redis, key, { ttlMs: 5000, onTakeover });
  expect(first).toBeDefined();
  expect(await acquireLock(redis, key, { ttlMs: 5000, onTakeover })).toBeUndefined();
  await expect(first!.extend(60_000)).rejects.toThrow(RangeError);
  expect(await first!.extend(5000)).toBe(true);
  await first!.release();
  expect(seen).toEqual([]);
});

test('a wait for a busy lock gives up once its signal is aborted (a shutdown), without taking it', async () => {
  const key = keys.lock('aborted-wait');
  await redis.set(key, 'other', 'PX', 5000);
  const ctl = new AbortController();
  const t0 = performance.now();
  setTimeout(() => ctl.abort(), 100);
  const got = await acquireLock(redis, key, { ttlMs: 5000, waitMs: 4000, onTakeover: () => {}, signal: ctl.signal });
  expect(got).toBeUndefined();
  // One try after the abort at most (tries are 20-60 ms apart), not the 4-s wait.
  expect(performance.now() - t0).toBeLessThan(1000);
  expect(await redis.get(key)).toBe('other');
  expect(await acquireLock(redis, key, { ttlMs: 5000, onTakeover: () => {}, signal: ctl.signal })).toBeUndefined();
  await redis.del(key);
  // Aborted before the first try: not taken even when free.
  expect(await acquireLock(redis, key, { ttlMs: 5000, onTakeover: () => {}, signal: ctl.signal })).toBeUndefined();
  expect(await redis.exists(key)).toBe(0);
});
