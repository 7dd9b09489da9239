import { performance } from 'node:perf_hooks';
import type { Cluster, Redis } from 'ioredis';
import { script } from '../redis/scripts.ts';
import { makeRoom } from './bounded-map.ts';

/** At most this many keys are remembered per window and instance, as blocked or as insurance counts. */
const MAX_KEYS = 100_000;
/**
 * The longest a key stays blocked in memory before Redis is asked again: a window read full may have room a moment
 * later (another instance gives back what a refused expensive read was charged), and a block for the rest of a long
 * window (the reserve's, up to minutes) would refuse the caller points it has. One round trip a second per instance
 * for a caller over its budget.
 */
const MAX_BLOCK_MS = 1000;

const CHARGE = script('rate-limit-charge');
const REFUND = script('rate-limit-refund');

/** One insurance window of one key in this process: counted here while Redis did not answer. */
interface LocalWindow {
  count: number;
  /** performance.now() at which it ends. */
  endsAt: number;
}

/**
 * Where a charge was counted, so that its refund goes there and nowhere else: the Redis window that ends at
 * `redisEnd` (Redis's clock, ms: the window's name, rate-limit-charge.lua), this process's insurance window, or
 * nowhere (refused from the in-memory block without asking anyone).
 */
type CountedIn = { redisEnd: number } | { local: LocalWindow } | undefined;

/** What one window answered to `n` points spent at once. */
export interface Charge {
  /** Points counted: those of the `n` that fit, and only those (a refused point is never counted). */
  counted: number;
  /** How many of the `n` fit (the same as `counted`). */
  admitted: number;
  /** Milliseconds before the window ends (or the in-memory block lifts). */
  msBeforeNext: number;
  where: CountedIn;
}

/**
 * One fixed window of `points` per `seconds`, counted in Redis and shared by every instance (the broker's own
 * scripts: rate-limit-charge.lua, rate-limit-refund.lua). Done here rather than with rate-limiter-flexible, which
 * the broker used before, for three things its public API does not give:
 * - a charge names the window that counted it (its end on Redis's clock), so a refund gives back in that window
 *   only, however late it arrives (the library's answer carries only the TTL, which cannot tell a window from
 *   the next one once the counted one has ended);
 * - a charge counted by the insurance window (Redis failed) is refunded there, never in a Redis window that did
 *   not count it (the library's fallback is invisible to its caller);
 * - the in-memory block of a key is lifted when a refund leaves room (the library keeps it in a private field).
 *
 * Once a window reports itself full the key is blocked in memory (for a second at most, {@link MAX_BLOCK_MS}), so a
 * caller over its budget costs at most one Redis round trip a second per instance. If Redis fails, this instance counts the same budget on its own (the
 * insurance window) rather than failing the request.
 */
export class RateWindow {
  /** Blocked keys: until when (then Redis is asked again), and when their window ends (what a refusal says). */
  private readonly blocked = new Map<string, { until: number; ends: number }>();
  private readonly local = new Map<string, LocalWindow>();

  private readonly redis: Redis | Cluster;
  private readonly keyPrefix: string;
  /** Points per window. */
  readonly points: number;
  /** The window's length. */
  readonly seconds: number;

  constructor(redis: Redis | Cluster, keyPrefix: string, points: number, seconds: number) {
    this.redis = redis;
    this.keyPrefix = keyPrefix;
    this.points = points;
    this.seconds = seconds;
  }

  /** The Redis key of `key`'s window (`<keyPrefix>:<key>`, as rate-limiter-flexible named it). */
  keyOf(key: string): string {
    return `${this.keyPrefix}:${key}`;
  }

  /**
   * Spends `n` points of `key`'s window. The Redis call is on the socket when this returns (synchronously), so a
   * caller may flush it at once (src/redis/coalesce.ts `writeNow`). Never rejects: a Redis failure is counted in
   * the insurance window.
   */
  charge(key: string, n: number): Promise<Charge> {
    const rlKey = this.keyOf(key);
    const b = this.blocked.get(rlKey);
    if (b !== undefined) {
      const now = performance.now();
      if (b.until > now) return Promise.resolve({ counted: 0, admitted: 0, msBeforeNext: Math.ceil(b.ends - now), where: undefined });
      this.blocked.delete(rlKey);
    }
    return CHARGE.run(this.redis, [rlKey], [n, this.seconds, this.points]).then(
      (reply) => {
        const [count, ttl, end, fit] = (reply as number[]).map(Number) as [number, number, number, number];
        if (count >= this.points) this.block(rlKey, ttl);
        return { counted: fit, admitted: fit, msBeforeNext: ttl, where: { redisEnd: end } };
      },
      () => {
        const w = this.localWindow(rlKey);
        const fit = Math.min(n, Math.max(0, this.points - w.count));
        w.count += fit;
        const ms = Math.max(1, Math.ceil(w.endsAt - performance.now()));
        return { counted: fit, admitted: fit, msBeforeNext: ms, where: { local: w } };
      },
    );
  }

  /**
   * Gives back `points` of what `c` counted, in the window that counted them only: nothing when that window has
   * ended meanwhile. A window that has room again is no longer blocked in memory. Never rejects: failing to give
   * back (Redis lost meanwhile) only leaves the over-count until the window ends.
   */
  async refund(key: string, c: Charge, points: number): Promise<void> {
    const rlKey = this.keyOf(key);
    if (!c.where || points <= 0) return;
    if ('local' in c.where) {
      const w = c.where.local;
      if (this.local.get(rlKey) !== w || w.endsAt <= performance.now()) return;
      w.count -= Math.min(points, w.count);
      return;
    }
    const after = await REFUND.run(this.redis, [rlKey], [points, c.where.redisEnd]).catch(() => null);
    if (typeof after === 'number' && after < this.points) this.blocked.delete(rlKey);
  }

  private block(rlKey: string, ms: number): void {
    const now = performance.now();
    // Deleted first, so that a key blocked again moves to the end: entries stay in the order they end.
    this.blocked.delete(rlKey);
    makeRoom(this.blocked, MAX_KEYS, (b) => b.until <= now);
    this.blocked.set(rlKey, { until: now + Math.min(ms, MAX_BLOCK_MS), ends: now + ms });
  }

  /** `rlKey`'s current insurance window, a new one when it has none or it has ended. */
  private localWindow(rlKey: string): LocalWindow {
    const now = performance.now();
    const w = this.local.get(rlKey);
    if (w && w.endsAt > now) return w;
    if (w) this.local.delete(rlKey);
    makeRoom(this.local, MAX_KEYS, (x) => x.endsAt <= now);
    const fresh = { count: 0, endsAt: now + this.seconds * 1000 };
    this.local.set(rlKey, fresh);
    return fresh;
  }
}
