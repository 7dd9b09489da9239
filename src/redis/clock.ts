import type { RedisClient } from './scripts.ts';

/**
 * Redis's clock as seen from this process: the offset between Redis `TIME`
 * and the local clock, re-measured periodically. Deadlines, expiries and key
 * activation are decided on Redis's clock (inside the deciding Lua script
 * where there is one; here where a decision is made in-process, e.g. which
 * signing key is active), so a process whose clock is off by a minute neither
 * ends tasks early nor keeps credentials late.
 */
export class RedisClock {
  private offsetMs = 0;
  private synced = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly redis: RedisClient;

  constructor(redis: RedisClient) {
    this.redis = redis;
  }

  /** Milliseconds since the epoch on Redis's clock (the local clock until the first sync). */
  now(): number {
    return Date.now() + this.offsetMs;
  }

  /** Local clock minus Redis clock, in ms (for logs and /readyz). */
  get skewMs(): number {
    return -this.offsetMs;
  }

  get isSynced(): boolean {
    return this.synced;
  }

  /** Measures the offset once: half the round trip is assumed on each side. */
  async sync(): Promise<void> {
    const t0 = Date.now();
    const [s, us] = await this.redis.time();
    const t1 = Date.now();
    const redisMs = Number(s) * 1000 + Math.floor(Number(us) / 1000);
    this.offsetMs = redisMs - Math.round((t0 + t1) / 2);
    this.synced = true;
  }

  /** Syncs now and every `intervalMs` (failures keep the last offset). */
  async start(intervalMs = 10_000): Promise<void> {
    await this.sync();
    this.timer = setInterval(() => void this.sync().catch(() => {}), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
