import type { RequestHandler } from 'express';
import { Counter } from 'prom-client';
import type { Metrics } from '../metrics.ts';
import { identityOf } from './middleware.ts';
import { RateLimited } from './rate-limit.ts';

/**
 * How many reads of lists, tasks, evidence and the audit log one caller identity may have running at once
 * in this process (`server.rateLimit.concurrentReads`). A page may read 500 records: forty at once from one
 * agent (well inside its request rate) queued 20,000 commands on the shared Redis connection, and the stall
 * guard took that for Redis stalling, answering 503 to everyone. Over the bound: 429 `rate_limited`,
 * `Retry-After: 1`, counted in `jit_rate_limited_total{budget="reads"}` like the other budgets.
 */
export function readSlots(max: number, metrics: Metrics): RequestHandler {
  const busy = new Map<string, number>();
  const limited =
    (metrics.registry.getSingleMetric('jit_rate_limited_total') as Counter<'budget'> | undefined) ??
    new Counter({
      name: 'jit_rate_limited_total',
      help: 'Requests refused with 429 by a rate limit, by budget',
      labelNames: ['budget'],
      registers: [metrics.registry],
    });
  return (req, res, next) => {
    if (max <= 0 || req.method !== 'GET') return next();
    const id = identityOf(res).id;
    const n = busy.get(id) ?? 0;
    if (n >= max) {
      limited.inc({ budget: 'reads' });
      metrics.denied.inc({ code: 'rate_limited' });
      return next(
        new RateLimited(`At most ${max} list, task and audit reads of one caller run at once (server.rateLimit.concurrentReads).`, 1),
      );
    }
    busy.set(id, n + 1);
    let freed = false;
    const free = () => {
      if (freed) return;
      freed = true;
      const left = (busy.get(id) ?? 1) - 1;
      if (left <= 0) busy.delete(id);
      else busy.set(id, left);
    };
    res.on('finish', free);
    res.on('close', free);
    next();
  };
}
