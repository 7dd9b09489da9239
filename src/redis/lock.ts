import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AuditEvent } from '../audit/record.ts';
import type { Logger } from '../logger.ts';
import { type RedisClient, script } from './scripts.ts';

const acquire = script('lock-acquire');
const release = script('lock-release');
const extend = script('lock-extend');
const fencedWrite = script('lock-fenced-write');

/** A held lock: extend it while work goes on; release it when done (only if still ours). */
export interface HeldLock {
  /** When the acquisition that took it was sent (performance.now()): Redis set its TTL no earlier. */
  readonly acquiredAt: number;
  /** The TTL this holder sets (LockOptions.holdMs, else ttlMs): what keepLock extends it to, the most extend() sets. */
  readonly holdMs: number;
  /**
   * Sets the lock's TTL to `ttlMs` (default: the hold) while it is ours. Never more than the hold: an extension
   * longer than it would leave the lock that long to a holder killed right after, the very wait the short hold
   * is there to avoid (and beyond `ttlMs`, make it look like a key no broker set, to be taken over).
   */
  extend(ttlMs?: number): Promise<boolean>;
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
 * Part of the TTL a holder cut off from Redis gives up before the lock lapses there: Redis counts the TTL on
 * its own clock, and the work that checks the signal needs a moment to stop writing.
 */
const LAPSE_MARGIN = 0.1;

/**
 * Extends `lock` to its hold (`lock.holdMs`) every third of it while work goes on, until `stop()`. The hold is
 * the lock's own, not the caller's to choose: a keeper extending a 10-s lock to 30 s would leave it 30 s to a
 * holder killed mid-work. The signal is aborted when the lock is lost: an extension refused (another holder has
 * it), or none confirmed for a whole hold (Redis unreachable, or an extension that never answers: it may have
 * lapsed). Work that must not run beside another holder checks the signal; work that is idempotent may ignore
 * it. `what` names the work in the abort reason.
 *
 * The TTL is counted on the monotonic clock, from when the acquisition or the last confirmed extension was sent
 * (Redis set its PX no earlier): the wall clock stepped back an hour (NTP setting a fast clock right) made
 * `Date.now() - confirmed` negative, and a holder cut off from Redis never noticed its lock lapse while another
 * instance took it (test/redis/lock-clock-step.test.ts). A timer set for that moment (less LAPSE_MARGIN) tells
 * the holder, rather than the next tick: counted from keepLock's call (work done since taking the lock) and only
 * looked at every third of the TTL, the lock lapsed and another instance took it while this holder went on
 * writing for up to a third of the TTL more.
 */
export function keepLock(lock: HeldLock, what: string): { signal: AbortSignal; stop(): void } {
  const holdMs = lock.holdMs;
  const ctl = new AbortController();
  let confirmed = lock.acquiredAt;
  let deadline: NodeJS.Timeout | undefined;
  let stopped = false;
  const lost = (why: string) => ctl.abort(new Error(`${what}: lock lost (${why}); another instance may hold it`));
  const arm = () => {
    clearTimeout(deadline);
    if (ctl.signal.aborted) return;
    const at = confirmed + holdMs * (1 - LAPSE_MARGIN);
    deadline = setTimeout(() => lost('not extended for its TTL'), Math.max(0, at - performance.now()));
    deadline.unref();
  };
  arm();
  const timer = setInterval(() => {
    const sent = performance.now();
    lock.extend().then(
      (ok) => {
        // An answer after stop() (the work is done, the lock released) must not arm the deadline again.
        if (stopped) return;
        if (!ok) lost('taken');
        else if (sent > confirmed) {
          confirmed = sent;
          arm();
        }
      },
      // Not extended: the deadline timer tells once the TTL is gone.
      () => {},
    );
  }, holdMs / 3);
  timer.unref();
  return {
    signal: ctl.signal,
    stop: () => {
      stopped = true;
      clearInterval(timer);
      clearTimeout(deadline);
    },
  };
}

/** A lock key replaced because no broker could have set it (see lock-acquire.lua). */
export interface LockTakeover {
  key: string;
  /** What its PTTL was: -1 for no expiry, else longer than any holder of the lock sets. */
  pttlMs: number;
}

export interface LockOptions {
  /**
   * The lock's TTL: the longest any holder of this lock ever sets, when taking it and when extending
   * it. A key of the lock with a longer TTL, or none, is taken over.
   */
  ttlMs: number;
  /**
   * The TTL this holder sets, when shorter than `ttlMs` (which stays the takeover bound: the longest any holder,
   * of this release or the previous one, sets), and the most it extends the lock to. Kept extended while the work
   * runs (`withLock`, `keepLock`), so a holder killed mid-work (SIGKILL, a lost machine) holds the lock this long,
   * not `ttlMs`. Short, but not shorter than a Redis stall the work should ride out: the keeper extends every
   * third of it and gives the lock up when none was confirmed for nine tenths of it.
   */
  holdMs?: number;
  /** How long to wait for a lock someone holds (0 or absent: try once). */
  waitMs?: number;
  /** Aborted: the lock is not taken (any more tries given up), as when it stays busy (a shutdown). */
  signal?: AbortSignal;
  /**
   * Told of every takeover. Required, so that no lock of the broker can be taken over (or, before,
   * held forever) without a trace: pass {@link reportTakeover}.
   */
  onTakeover: (t: LockTakeover) => void;
}

/**
 * One Redis lock for the whole broker (SET NX PX with a random token). The
 * release and extension are token-checked in Lua, so an instance whose lock
 * lapsed can never delete or extend the lock another instance now holds.
 * A lock key that cannot be a broker's (no expiry, or a TTL longer than
 * `ttlMs`: written by hand or by an attacker with Redis write access, to make
 * every instance skip what the lock guards, for good) is taken over at once
 * and reported to `onTakeover`.
 * Returns undefined when the lock stays taken for `waitMs` (0: try once).
 */
export async function acquireLock(redis: RedisClient, key: string, opts: LockOptions): Promise<HeldLock | undefined> {
  const token = randomBytes(12).toString('hex');
  // Monotonic: a wall-clock step must neither give up the wait at once nor stretch it by the step.
  const deadline = performance.now() + (opts.waitMs ?? 0);
  const holdMs = Math.min(opts.holdMs ?? opts.ttlMs, opts.ttlMs);
  let acquiredAt: number;
  for (;;) {
    if (opts.signal?.aborted) return undefined;
    acquiredAt = performance.now();
    const [got, pttl] = (await acquire.run(redis, [key], [token, opts.ttlMs, holdMs])) as [number, number?];
    if (got === 2) opts.onTakeover({ key, pttlMs: Number(pttl) });
    if (got !== 0) break;
    if (performance.now() >= deadline) return undefined;
    await sleep(20 + Math.random() * 40);
  }
  return {
    acquiredAt,
    holdMs,
    extend: async (ttlMs = holdMs) => {
      if (ttlMs > holdMs) throw new RangeError(`lock ${key}: extend(${ttlMs}) beyond its hold ${holdMs}`);
      return (await extend.run(redis, [key], [token, ttlMs])) === 1;
    },
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

/**
 * Runs `fn` holding the lock; undefined without running it when the lock stays busy. The lock is kept extended
 * (`keepLock`) while `fn` runs; `fn` checks the signal (aborted once the lock is lost), or `held()`, before what
 * must not run beside another holder.
 */
export async function withLock<T>(
  redis: RedisClient,
  key: string,
  opts: LockOptions,
  fn: (lock: HeldLock, signal: AbortSignal) => Promise<T>,
): Promise<{ value: T } | undefined> {
  const lock = await acquireLock(redis, key, opts);
  if (!lock) return undefined;
  const kept = keepLock(lock, key);
  try {
    return { value: await fn(lock, kept.signal) };
  } finally {
    kept.stop();
    await lock.release();
  }
}

/**
 * The usual {@link LockOptions.onTakeover}: a warning, and an audit record (`lock.takeover` on the ops
 * chain) when `audit` is given. The record is not awaited: the lock's work goes on meanwhile, and an
 * append that waits for recovery (after a data loss) must not hold up the recovery lock's own work.
 */
export function reportTakeover(logger: Logger, audit: ((e: AuditEvent) => Promise<void>) | undefined): (t: LockTakeover) => void {
  return ({ key, pttlMs }) => {
    const reason = pttlMs === -1 ? 'lock_without_expiry' : 'lock_ttl_too_long';
    logger.warn(
      { lock: key, pttlMs, reason },
      'took over a lock key no broker could have set (no expiry, or a longer TTL than the broker sets): someone with Redis write access?',
    );
    void audit?.({ action: 'lock.takeover', actor: 'broker', decision: 'ok', reason, detail: { lock: key, pttlMs } }).catch((err) =>
      logger.error({ err: (err as Error).message, lock: key }, 'could not audit a lock takeover'),
    );
  };
}
