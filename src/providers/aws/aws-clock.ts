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
 */
export class AwsClock {
  private best: { base: number; mono: number } | undefined;

  /** Takes one answer's `Date` header; `sentMono` is performance.now() when its request was sent. */
  observe(date: unknown, sentMono: number): void {
    const at = typeof date === 'string' ? Date.parse(date) : Number.NaN;
    if (!Number.isFinite(at)) return;
    const sample = { base: at + 1000, mono: sentMono };
    const now = performance.now();
    if (this.best === undefined || upper(sample, now) < upper(this.best, now)) this.best = sample;
  }

  /** AWS's time now, at most (epoch ms); undefined before any answer carried a `Date`. */
  upperNow(): number | undefined {
    return this.best === undefined ? undefined : upper(this.best, performance.now());
  }
}

function upper(s: { base: number; mono: number }, now: number): number {
  const elapsed = Math.max(0, now - s.mono);
  return s.base + elapsed * (1 + RATE_BOUND);
}
