import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';

/** Deletes the lock only if we still hold it (a lapsed lock may belong to someone else by now). */
const RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/**
 * Runs `fn` holding a Redis lock (SET NX PX with a random token). Returns
 * undefined without running `fn` when the lock stays busy for `waitMs`.
 * `fn` gets `held()`, which says whether the lock is still ours: a lock can
 * lapse under a slow upstream call, and then someone else may be writing too.
 */
export async function withRedisLock<T>(
  redis: Redis,
  key: string,
  opts: { ttlMs: number; waitMs: number },
  fn: (held: () => Promise<boolean>) => Promise<T>,
): Promise<{ value: T } | undefined> {
  const token = randomBytes(12).toString('hex');
  const deadline = Date.now() + opts.waitMs;
  while (!(await redis.set(key, token, 'PX', opts.ttlMs, 'NX'))) {
    if (Date.now() >= deadline) return undefined;
    await sleep(20 + Math.random() * 40);
  }
  try {
    return { value: await fn(async () => (await redis.get(key)) === token) };
  } finally {
    await redis.eval(RELEASE, 1, key, token);
  }
}
