import { performance } from 'node:perf_hooks';

/**
 * How much faster than AWS's this process's monotonic clock may run (and so how much a bound taken a while ago
 * grows per millisecond since): NTP slews a clock by at most 500 ppm.
 */
const RATE_BOUND = 500e-6;

/**
 * A bound from above on AWS's clock, learned from the `Date` header of its answers. IAM judges
 * `aws:TokenIssueTime` on AWS's clock, so a cut-off meant as "issued before this moment of ours" must be put on
 * AWS's clock: taken from the broker's (Redis's), a Redis clock behind AWS's by a few seconds let the sessions an
 * agent made in those seconds before a kill switch (role chaining carries its SourceIdentity) through the cut-off,
 * and one ahead denied sessions issued just after it.
 *
 * An answer's `Date` is AWS's time, to the second, when it wrote the answer, which was after this process sent
 * the request: AWS's time at a later monotonic instant `m` is at most `Date + 1 s + (m - sent)` (plus the rate
 * bound). Only an upper bound is kept: a cut-off a little late denies a session a little young, never lets one
 * through. The tightest bound (a fast round trip, a recent answer) wins.
 *
 * The time since an answer is the greater of the monotonic and the wall clock's: the monotonic clock stands
 * still while the machine is suspended (a VM paused, a host asleep), and with it alone a sample from before a
 * suspend of D seconds stayed D seconds below AWS's time, and as the tightest won over every fresh answer for
 * D / 500 ppm (a minute's suspend: 33 h), moving every agent cut-off early by up to clockSkewSeconds. The wall
 * clock moves on across a suspend; a step of it forward only loosens the old sample (a fresh answer wins), one
 * back is not taken (the monotonic time counts).
 */
export class AwsClock {
  private best: Sample | undefined;

  /** Takes one answer's `Date` header; `sentMono` is performance.now() when its request was sent. */
  observe(date: unknown, sentMono: number): void {
    const at = typeof date === 'string' ? Date.parse(date) : Number.NaN;
    if (!Number.isFinite(at)) return;
    const now = instant();
    // The wall clock when the request was sent, as far as the monotonic one says.
    const sample = { base: at + 1000, mono: sentMono, wall: now.wall - (now.mono - sentMono) };
    if (this.best === undefined || upper(sample, now) < upper(this.best, now)) this.best = sample;
  }

  /** AWS's time now, at most (epoch ms); undefined before any answer carried a `Date`. */
  upperNow(): number | undefined {
    return this.best === undefined ? undefined : upper(this.best, instant());
  }
}

interface Sample {
  /** The answer's `Date` plus its second (epoch ms). */
  base: number;
  /** performance.now() and Date.now() when the request was sent. */
  mono: number;
  wall: number;
}

const instant = () => ({ mono: performance.now(), wall: Date.now() });

function upper(s: Sample, now: { mono: number; wall: number }): number {
  const elapsed = Math.max(0, now.mono - s.mono, now.wall - s.wall);
  return s.base + elapsed * (1 + RATE_BOUND);
}
