import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { type RedisClient, script } from './scripts.ts';

const release = script('lock-release');
const extend = script('lock-extend');
const fencedWrite = script('lock-fenced-write');

/** A held lock: extend it while work goes on; release it when done (only if still ours). */
export interface HeldLock {
  extend(ttlMs: number): Promise<boolean>;
  /** Whether the lock is still ours (it can lapse under a slow upstream call). */
  held(): Promise<boolean>;
  /**
   * Sets (value given; for `ttlMs` when given) or deletes `key`, in the lock's slot, only while the lock
   * is ours, in one step; false when it lapsed (nothing written).
   */
  write(key: string, value?: string, ttlMs?: number): Promise<boolean>;
  release(): Promise<void>;
}

/**
 * One Redis lock for the whole broker (SET NX PX with a random token). The
 * release and extension are token-checked in Lua, so an instance whose lock
 * lapsed can never delete or extend the lock another instance now holds.
 * Returns undefined when the lock stays taken for `waitMs` (0: try once).
 */
export async function acquireLock(
  redis: RedisClient,
  key: string,
  opts: { ttlMs: number; waitMs?: number },
): Promise<HeldLock | undefined> {
  const token = randomBytes(12).toString('hex');
  const deadline = Date.now() + (opts.waitMs ?? 0);
  while (!(await redis.set(key, token, 'PX', opts.ttlMs, 'NX'))) {
    if (Date.now() >= deadline) return undefined;
    await sleep(20 + Math.random() * 40);
  }
  return {
    extend: async (ttlMs) => (await extend.run(redis, [key], [token, ttlMs])) === 1,
    held: async () => (await redis.get(key)) === token,
    write: async (target, value, ttlMs) => {
      const args =
        value === undefined ? [token, 'del'] : [token, 'set', value, ...(ttlMs === undefined ? [] : [Math.max(1, Math.ceil(ttlMs))])];
      return (await fencedWrite.run(redis, [key, target], args)) === 1;
    },
    release: async () => {
      await release.run(redis, [key], [token]);
    },
  };
}

/** Runs `fn` holding the lock; undefined without running it when the lock stays busy. */
export async function withLock<T>(
  redis: RedisClient,
  key: string,
  opts: { ttlMs: number; waitMs?: number },
  fn: (lock: HeldLock) => Promise<T>,
): Promise<{ value: T } | undefined> {
  const lock = await acquireLock(redis, key, opts);
  if (!lock) return undefined;
  try {
    return { value: await fn(lock) };
  } finally {
    await lock.release();
  }
}
