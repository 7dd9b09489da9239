import { performance } from 'node:perf_hooks';
import type { RedisClient } from './scripts.ts';

/** Round trips measured per sync at most, and one short enough to stop at (its error is at most that round trip). */
const SAMPLES = 4;
const GOOD_RTT_MS = 4;
/**
 * How far the wall clock may move apart from the monotonic one since the last sync before the estimate is
 * taken to be broken (a step of the wall clock, or a suspended process) and measured again at once. The two
 * advance together within microseconds a second otherwise (NTP slews both).
 */
const STEP_MS = 1000;

/** Redis's clock at one moment, with the process's wall and monotonic clocks at that moment. */
interface Anchor {
  redis: number;
  wall: number;
  mono: number;
}

/**
 * Redis's clock as seen from this process: Redis `TIME` at the last sync,
 * plus the time elapsed here since, re-measured periodically. Deadlines,
 * expiries and key activation are decided on Redis's clock (inside the
 * deciding Lua script where there is one; here where a decision is made
 * in-process, e.g. which signing key is active, or whether a failing
 * revocation may be given up), so a process whose clock is off by a minute
 * neither ends tasks early nor keeps credentials late.
 *
 * The elapsed time is the monotonic clock's. Adding the wall clock's
 * carried a step of it straight into the estimate until the next sync, up to
 * 10 s later: a process clock an hour behind that NTP set right (or `date -s`)
 * put the estimate an hour ahead, and the worker gave up failing revocations
 * as if their credentials had expired, with the credentials still working
 * upstream (test/faults/clock-step.test.ts). The monotonic clock does not
 * step, but stands still while the machine is suspended: it is never ahead of
 * Redis's clock (a late give-up, a late prune, a key activated a moment late:
 * never an early end). The lesser of the two (what this took next) dropped
 * the estimate by a whole wall step back, an hour of extra time left on every
 * task until the resync answered. When the two disagree the clock is measured
 * again at once.
 */
export class RedisClock {
  private offsetMs = 0;
  private anchor: Anchor | undefined;
  /** The round trip of the sample the anchor came from: the anchor is behind Redis's clock by at most that. */
  private anchorRtt = 0;
  /**
   * Told when Redis's own clock stepped between two syncs (ms, negative: back), as after a failover to a host
   * whose clock is off or an NTP step on Redis's host. Every deadline and expiry decided on it moves by as much
   * (back: tasks and leases end that much later), and nothing here can tell which clock was right, so it is
   * reported for an operator (src/broker.ts). A step of this process's own clock is not one (the monotonic
   * clock is what Redis's is compared with).
   */
  onStep: ((stepMs: number) => void) | undefined;
  private resync: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly redis: RedisClient;

  constructor(redis: RedisClient) {
    this.redis = redis;
  }

  /** Milliseconds since the epoch on Redis's clock (the local clock until the first sync). */
  now(): number {
    const wall = Date.now();
    const a = this.anchor;
    if (!a) return wall + this.offsetMs;
    const wallElapsed = wall - a.wall;
    const monoElapsed = performance.now() - a.mono;
    if (Math.abs(wallElapsed - monoElapsed) > STEP_MS) this.resyncNow();
    // The monotonic elapsed time alone: never ahead of Redis's (it stands still only while the machine is
    // suspended), and unlike the lesser of the two not dropped by a wall step back (the wall clock only tells
    // when to measure again).
    return Math.round(a.redis + monoElapsed);
  }

  /** Local clock minus Redis clock, in ms (for logs and /readyz). */
  get skewMs(): number {
    return -this.offsetMs;
  }

  get isSynced(): boolean {
    return this.anchor !== undefined;
  }

  /**
   * Measures the offset: Redis's clock as of the reply, so a sample is behind by at most its round trip (never
   * ahead), and one whose reply sat unread (the process descheduled, a GC pause) is behind by that wait.
   * The sample with the shortest round trip of a few is kept (as NTP does), stopping at one of a few ms.
   */
  async sync(samples = SAMPLES): Promise<void> {
    let best: { rtt: number; anchor: Anchor } | undefined;
    for (let i = 0; i < samples; i++) {
      const m0 = performance.now();
      const [s, us] = await this.redis.time();
      const m1 = performance.now();
      const w1 = Date.now();
      const redisMs = Number(s) * 1000 + Math.floor(Number(us) / 1000);
      // Anchored at the reply, not the middle of the round trip: Redis read its clock no later than that, so the
      // estimate is behind by at most the round trip, never ahead (a TIME that reached Redis late and was answered
      // at once put the middle's estimate half the round trip ahead: test/redis/clock-sync.test.ts).
      const sample = { rtt: m1 - m0, anchor: { redis: redisMs, wall: w1, mono: m1 } };
      if (!best || sample.rtt < best.rtt) best = sample;
      if (best.rtt <= GOOD_RTT_MS) break;
    }
    if (!best) return;
    this.noticeStep(best.anchor, best.rtt);
    this.anchor = best.anchor;
    this.anchorRtt = best.rtt;
    this.offsetMs = Math.round(best.anchor.redis - best.anchor.wall);
  }

  /**
   * Compares how far Redis's clock went since the last sync with how far this process's clocks did. Only a
   * difference from both is Redis's step: one from the wall clock alone is a step of the wall clock, one from the
   * monotonic clock alone is this machine's suspension (the monotonic clock stands still meanwhile).
   */
  private noticeStep(now: Anchor, rtt: number): void {
    const last = this.anchor;
    if (!last) return;
    const byMono = now.redis - (last.redis + (now.mono - last.mono));
    const byWall = now.redis - (last.redis + (now.wall - last.wall));
    const step = Math.abs(byMono) < Math.abs(byWall) ? byMono : byWall;
    // Each anchor is behind by at most its round trip: a slow pair of syncs is no step.
    if (Math.abs(step) > Math.max(STEP_MS, rtt + this.anchorRtt)) this.onStep?.(Math.round(step));
  }

  /** One sync at a time, started by now() when the wall and monotonic clocks disagree (failures keep the anchor). */
  private resyncNow(): void {
    if (this.resync) return;
    this.resync = this.sync()
      .catch(() => {})
      .finally(() => {
        this.resync = undefined;
      });
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
