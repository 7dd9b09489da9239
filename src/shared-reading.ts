/**
 * A reading of something costly (Redis-backed gauges, a readiness probe) that anyone may ask for at any
 * rate: unauthenticated routes (/metrics, /readyz) must not turn a flood of requests into a flood of
 * Redis commands. A reading is taken at most once per `everyMs` (counted from when the last one ended, so
 * a slow reading does not make them back to back), and callers that ask while one is under way share it
 * (single flight). A reading that fails keeps the last value (undefined before the first success) and
 * counts as taken: a Redis that is down is not asked again by every caller.
 */
export class SharedReading<T> {
  private readonly everyMs: number;
  private readonly read: () => Promise<T>;
  private last: { value: T | undefined; at: number } | undefined;
  private pending: Promise<{ value: T | undefined; at: number }> | undefined;
  /** Readings taken so far (tests, and the bound's documentation). */
  taken = 0;

  constructor(everyMs: number, read: () => Promise<T>) {
    this.everyMs = everyMs;
    this.read = read;
  }

  /** The current value and when it was read (performance.now() ms): the last one if fresh, else a new one. */
  async get(): Promise<{ value: T | undefined; at: number }> {
    if (this.pending) return this.pending;
    if (this.last && performance.now() - this.last.at < this.everyMs) return this.last;
    this.taken += 1;
    const before = this.last?.value;
    const pending = this.read().then(
      (value) => ({ value, at: performance.now() }),
      () => ({ value: before, at: performance.now() }),
    );
    this.pending = pending;
    try {
      this.last = await pending;
      return this.last;
    } finally {
      this.pending = undefined;
    }
  }
}
