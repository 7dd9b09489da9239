import type { RedisClient } from './scripts.ts';

/** Round trips measured per sync at most, and one short enough to stop at (its error is at most half of it). */
const SAMPLES = 4;
const GOOD_RTT_MS = 4;
/** Redis's clock moving this much more or less than this process's monotonic clock between two syncs is a step. */
const STEP_MS = 1000;

interface Sample {
  rtt: number;
  offset: number;
  /** Redis's TIME, and this process's monotonic clock halfway through the round trip. */
  redisMs: number;
  mono: number;
}

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
  private last: Sample | undefined;
  /**
   * Told when Redis's own clock stepped between two syncs (ms, negative: back), as after a failover to a host
   * whose clock is off or an NTP step on Redis's host. Every deadline and expiry decided on it moves by as much
   * (back: tasks and leases end that much later), and nothing here can tell which clock was right, so it is
   * reported for an operator (src/broker.ts). A step of this process's own clock is not one: the offset follows it.
   */
  onStep: ((stepMs: number) => void) | undefined;
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

  /**
   * Measures the offset: half the round trip is assumed on each side, so a sample is off by at most half its
   * round trip, and one whose reply sat unread (the process descheduled, a GC pause) is off by half that wait.
   * The sample with the shortest round trip of a few is kept (as NTP does), stopping at one of a few ms.
   */
  async sync(samples = SAMPLES): Promise<void> {
    let best: Sample | undefined;
    for (let i = 0; i < samples; i++) {
      const t0 = Date.now();
      const m0 = performance.now();
      const [s, us] = await this.redis.time();
      const m1 = performance.now();
      const t1 = Date.now();
      const redisMs = Number(s) * 1000 + Math.floor(Number(us) / 1000);
      const sample = { rtt: m1 - m0, offset: redisMs - Math.round((t0 + t1) / 2), redisMs, mono: (m0 + m1) / 2 };
      if (!best || sample.rtt < best.rtt) best = sample;
      if (best.rtt <= GOOD_RTT_MS) break;
    }
    if (!best) return;
    this.noticeStep(best);
    this.offsetMs = best.offset;
    this.synced = true;
  }

  /** Compares how far Redis's clock went since the last sync with how far the monotonic clock did. */
  private noticeStep(now: Sample): void {
    const last = this.last;
    this.last = now;
    if (!last) return;
    const step = now.redisMs - (last.redisMs + (now.mono - last.mono));
    // Each estimate is off by at most half its round trip: a slow pair of syncs is no step.
    if (Math.abs(step) > Math.max(STEP_MS, now.rtt + last.rtt)) this.onStep?.(Math.round(step));
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
