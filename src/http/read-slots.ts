import type { RequestHandler } from 'express';
import { Counter } from 'prom-client';
import type { Deps } from '../deps.ts';
import { identityOf } from './middleware.ts';
import { RateLimited } from './rate-limit.ts';

/** How long the slot of a read whose caller hung up stays taken if its route never answers. */
const ABANDONED_MS = 60_000;

/**
 * How many reads of lists, tasks, evidence and the audit log one caller identity may have running at once
 * in this process (`server.rateLimit.concurrentReads`). A page may read 500 records: forty at once from one
 * agent (well inside its request rate) queued 20,000 commands on the shared Redis connection, and the stall
 * guard took that for Redis stalling, answering 503 to everyone. Over the bound: 429 `rate_limited`,
 * `Retry-After: 1`, counted in `jit_rate_limited_total{budget="reads"}` like the other budgets, and an
 * audited denial (`access.deny`, `detail.budget: reads`; a flood folds into one record per minute).
 */
export function readSlots(deps: Pick<Deps, 'config' | 'metrics' | 'audit' | 'logger'>): RequestHandler {
  const max = deps.config.server.rateLimit.concurrentReads;
  const { metrics } = deps;
  const busy = new Map<string, number>();
  const limited =
    (metrics.registry.getSingleMetric('jit_rate_limited_total') as Counter<'budget'> | undefined) ??
    new Counter({
      name: 'jit_rate_limited_total',
      help: 'Requests refused with 429 by a rate limit, by budget',
      labelNames: ['budget'],
      registers: [metrics.registry],
    });
  return async (req, res, next) => {
    // HEAD too: Express runs a GET route for HEAD, every Redis read included (only the body is not sent).
    if (max <= 0 || (req.method !== 'GET' && req.method !== 'HEAD')) return next();
    const id = identityOf(res).id;
    const n = busy.get(id) ?? 0;
    if (n >= max) {
      limited.inc({ budget: 'reads' });
      metrics.denied.inc({ code: 'rate_limited' });
      const err = new RateLimited(
        `At most ${max} list, task and audit reads of one caller run at once (server.rateLimit.concurrentReads).`,
        1,
      );
      // Every denial is a record (contract section 7), as the per-identity rate limit's 429s are. A record that
      // cannot be written (Redis failing) does not turn the 429 into another answer.
      await deps.audit
        .denial({ action: 'access.deny', actor: id, decision: 'deny', reason: err.code, detail: { budget: 'reads' } })
        .catch((e: unknown) => deps.logger.warn({ err: (e as Error).message }, 'could not audit a concurrent-reads denial'));
      return next(err);
    }
    busy.set(id, n + 1);
    let freed = false;
    let answered = false;
    let done = false;
    let lapse: NodeJS.Timeout | undefined;
    const free = () => {
      if (freed) return;
      freed = true;
      clearTimeout(lapse);
      const left = (busy.get(id) ?? 1) - 1;
      if (left <= 0) busy.delete(id);
      else busy.set(id, left);
    };
    // The slot is the read's and its answer's, not the connection's: it is freed once the route has answered
    // (every route and the problem handler end the response when their reads are done) AND the answer has
    // gone out or its caller has gone. Freed on close alone, a caller that hung up at once had its read go on
    // in the broker while the slot served its next request: sent one after another, any number of reads ran
    // at once. Freed on the answer alone, a caller that never reads its answers would have the broker buffer
    // any number of pages of up to 2 MB.
    const end = res.end;
    res.end = function (this: typeof res, ...args: unknown[]) {
      answered = true;
      if (done) free();
      return (end as (...a: unknown[]) => typeof res).apply(this, args);
    } as typeof res.end;
    const gone = () => {
      done = true;
      if (answered) free();
      // Only a safety net, should a route never end a response its caller abandoned: no read runs this long
      // (each Redis command times out in redis.commandTimeoutMs), and a lost slot would refuse this caller for good.
      else if (!freed) lapse ??= setTimeout(free, ABANDONED_MS).unref();
    };
    res.on('finish', gone);
    res.on('close', gone);
    next();
  };
}
