import type { Redis } from 'ioredis';
import { RateLimits } from '../../src/http/rate-limit.ts';
import { silentLogger } from '../../src/logger.ts';
import { Metrics } from '../../src/metrics.ts';

/**
 * Rate limits as the rate-limit tests (test/http/rate-limit-*) build them, without a broker: the identity budget
 * of `perSecond`/`burst` alone, the others off (introspection and unauthenticated at 0 per second, no cap on
 * concurrent reads, no proxy trusted), so the counts a test reads in Redis are that budget's only.
 */
export function identityLimits(redis: Redis, prefix: string, perSecond: number, burst: number): RateLimits {
  return new RateLimits({
    redis,
    prefix,
    config: {
      perSecond,
      burst,
      introspect: { perSecond: 0, burst: 1 },
      unauthenticated: { perSecond: 0, burst: 1 },
      concurrentReads: 0,
      trustProxy: false,
    },
    metrics: new Metrics(),
    logger: silentLogger,
  });
}

/** Spends `points` of `who`'s identity budget: 'ok', or the refusal's code (so a batch's outcomes compare as one array). */
export function spendOutcome(l: RateLimits, who: string, points = 1): Promise<string> {
  return l.spendIdentity(who, 'identity', points).then(
    () => 'ok',
    (err: { code: string }) => err.code,
  );
}
