import type { RequestHandler } from 'express';
import { tooManyRequests } from '../errors.ts';
import type { Metrics } from '../metrics.ts';
import { identityOf } from './middleware.ts';

/**
 * A token bucket per caller identity, per instance: a runaway agent loop gets
 * 429 instead of starving everyone else. With N instances the effective limit
 * is up to N times this. Runs after identity verification, so an attacker
 * cannot spend another identity's budget.
 */
export function rateLimit(opts: { perSecond: number; burst: number }, metrics: Metrics): RequestHandler {
  const buckets = new Map<string, { tokens: number; at: number }>();
  return (_req, res, next) => {
    if (opts.perSecond <= 0) return next();
    const id = identityOf(res).id;
    const now = performance.now();
    const b = buckets.get(id) ?? { tokens: opts.burst, at: now };
    b.tokens = Math.min(opts.burst, b.tokens + ((now - b.at) / 1000) * opts.perSecond);
    b.at = now;
    if (buckets.size > 50_000) buckets.clear(); // bounded memory; a reset only grants a fresh burst
    buckets.set(id, b);
    if (b.tokens < 1) {
      metrics.denied.inc({ code: 'rate_limited' });
      res.setHeader('Retry-After', String(Math.ceil((1 - b.tokens) / opts.perSecond)));
      throw tooManyRequests('rate_limited', 'Too many requests for this identity; slow down.');
    }
    b.tokens -= 1;
    next();
  };
}
