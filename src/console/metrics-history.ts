import type { Metrics } from '../metrics.ts';

/** One reading of the broker's own counters (cumulative since the process started). */
interface Sample {
  at: number;
  issued: number;
  revoked: number;
  failed: number;
  /** Revocation lag histogram: cumulative count per bucket bound, summed over every label. */
  lagBuckets: Map<number, number>;
}

/** One point of the console's charts: rates and lag over the interval that ends at `t`. */
export interface MetricsPoint {
  t: string;
  issuedPerMinute: number;
  revokedPerMinute: number;
  revokeFailedPerMinute: number;
  /** Revocation lag quantiles (seconds) of the revocations ended in this interval; null when there were none. */
  lagP50: number | null;
  lagP95: number | null;
}

/**
 * Samples this process's prom-client metrics every `intervalMs` and keeps
 * the last `size` readings, so the console can draw rates and revocation lag
 * from the moment a page opens instead of starting from nothing. Per
 * instance, like /metrics itself: Prometheus is where instances are summed.
 */
export class MetricsHistory {
  private readonly metrics: Metrics;
  private readonly samples: Sample[] = [];
  private readonly size: number;
  readonly intervalMs: number;
  private timer: NodeJS.Timeout | undefined;

  constructor(metrics: Metrics, opts: { intervalMs?: number; size?: number } = {}) {
    this.metrics = metrics;
    this.intervalMs = opts.intervalMs ?? 5000;
    this.size = opts.size ?? 121;
  }

  start(): void {
    void this.sample();
    this.timer = setInterval(() => void this.sample(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private async sample(): Promise<void> {
    const [issued, revocations, lag] = await Promise.all([
      this.metrics.issued.get(),
      this.metrics.revocations.get(),
      this.metrics.revocationLag.get(),
    ]);
    let revoked = 0;
    let failed = 0;
    for (const v of revocations.values) {
      if (v.labels.result === 'failed') failed += v.value;
      else revoked += v.value;
    }
    const lagBuckets = new Map<number, number>();
    for (const v of lag.values) {
      if (v.metricName !== 'jit_revocation_lag_seconds_bucket') continue;
      const bound = (v.labels as { le?: string | number }).le;
      const le = bound === '+Inf' ? Number.POSITIVE_INFINITY : Number(bound);
      lagBuckets.set(le, (lagBuckets.get(le) ?? 0) + v.value);
    }
    this.samples.push({ at: Date.now(), issued: issued.values.reduce((n, v) => n + v.value, 0), revoked, failed, lagBuckets });
    if (this.samples.length > this.size) this.samples.shift();
  }

  /** The chart points, oldest first: one per interval between two samples. */
  points(): MetricsPoint[] {
    const out: MetricsPoint[] = [];
    for (let i = 1; i < this.samples.length; i++) {
      const a = this.samples[i - 1]!;
      const b = this.samples[i]!;
      const perMinute = 60_000 / Math.max(1, b.at - a.at);
      const deltas = [...b.lagBuckets].map(([le, n]) => [le, n - (a.lagBuckets.get(le) ?? 0)] as [number, number]);
      out.push({
        t: new Date(b.at).toISOString(),
        issuedPerMinute: round((b.issued - a.issued) * perMinute),
        revokedPerMinute: round((b.revoked - a.revoked) * perMinute),
        revokeFailedPerMinute: round((b.failed - a.failed) * perMinute),
        lagP50: quantile(deltas, 0.5),
        lagP95: quantile(deltas, 0.95),
      });
    }
    return out;
  }
}

const round = (n: number) => Math.round(n * 100) / 100;

/**
 * A quantile from cumulative histogram buckets, interpolated linearly inside
 * the bucket that holds it (what PromQL's histogram_quantile does). Values in
 * the +Inf bucket are reported as the highest finite bound.
 */
export function quantile(buckets: [number, number][], q: number): number | null {
  const sorted = [...buckets].sort((x, y) => x[0] - y[0]);
  const total = sorted.at(-1)?.[1] ?? 0;
  if (total <= 0) return null;
  const rank = q * total;
  let prevBound = 0;
  let prevCount = 0;
  for (const [le, count] of sorted) {
    if (count >= rank) {
      if (!Number.isFinite(le)) return prevBound;
      const inBucket = count - prevCount;
      const frac = inBucket > 0 ? (rank - prevCount) / inBucket : 1;
      return round3(prevBound + (le - prevBound) * frac);
    }
    prevBound = le;
    prevCount = count;
  }
  return prevBound;
}

const round3 = (n: number) => Math.round(n * 1000) / 1000;
