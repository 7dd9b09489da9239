/**
 * A reading of something costly (Redis-backed gauges, a readiness probe) that anyone may ask for at any
 * rate: unauthenticated routes (/metrics, /readyz) must not turn a flood of requests into a flood of
 * Redis commands. A reading is taken at most once per `everyMs` (counted from when the last one ended, so
 * a slow reading does not make them back to back), and callers that ask while one is under way share it
 * (single flight). A reading that fails keeps the last value (undefined before the first success) and
 * counts as taken: a Redis that is down is not asked again by every caller.
 *
 * `at` is when the value was read, not when a reading was last tried: a failed reading leaves it where
 * it was, so an age counted on from it (src/metrics.ts) keeps growing while readings fail. Stamped with
 * the failure's time, each failed reading set such an age back by an interval, and an alert on it (an
 * outbox nobody appends while Redis fails) never fired.
 */
export class SharedReading<T> {
  private readonly everyMs: number;
  private readonly read: () => Promise<T>;
  /** The last value read, and when (performance.now() ms); undefined before the first success. */
  private last: { value: T | undefined; at: number } | undefined;
  /** When the last reading, good or failed, ended: what `everyMs` counts from. */
  private triedAt: number | undefined;
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
    if (this.triedAt !== undefined && performance.now() - this.triedAt < this.everyMs) return this.current();
    this.taken += 1;
    const pending = this.read().then(
      (value) => {
        this.last = { value, at: performance.now() };
        return this.last;
      },
      () => this.current(),
    );
    this.pending = pending;
    try {
      return await pending;
    } finally {
      this.triedAt = performance.now();
      this.pending = undefined;
    }
  }

  /** The last value read, or none (dated now: nothing to count an age from). */
  private current(): { value: T | undefined; at: number } {
    return this.last ?? { value: undefined, at: performance.now() };
  }
}
