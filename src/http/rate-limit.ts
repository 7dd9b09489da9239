import { makeRoom } from './bounded-map.ts';
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Request, RequestHandler, Response } from 'express';
import type { Cluster, Redis } from 'ioredis';
import ipaddr from 'ipaddr.js';
import { Counter } from 'prom-client';
import type { RateLimitConfig } from '../config/schema.ts';
import { BrokerError } from '../errors.ts';
import { writeNow } from '../redis/coalesce.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import { type Charge, RateWindow } from './rate-window.ts';
import { oauthDescription } from './oauth-text.ts';

/** A 429 that knows when to come back (`Retry-After`). */
export class RateLimited extends BrokerError {
  constructor(detail: string, retryAfterSeconds: number) {
    super('rate_limited', detail, { retryAfterSeconds });
  }
}

/** Which budget a request spends. */
export type BudgetName = 'identity' | 'introspect' | 'unauthenticated';

/**
 * How long the reserve (burst − perSecond) takes to come back. Ten times the
 * time a token bucket would take to refill it, so that a caller running flat
 * out gets at most 1.1 × perSecond, while a caller that is quiet for a while
 * can burst again.
 */
function reserveSeconds(perSecond: number, burst: number): number {
  return Math.max(1, Math.ceil((10 * (burst - perSecond)) / perSecond));
}

/** One request waiting for its budget's answer: seconds to wait when refused, else undefined. */
interface Waiter {
  /** What it costs (1 for most requests; more for expensive reads: src/http/read-cost.ts). */
  points: number;
  resolve: (wait: number | undefined) => void;
  reject: (err: unknown) => void;
}

/**
 * One budget (`perSecond` sustained, `burst` at once) as two fixed windows in Redis, shared by every instance
 * (src/http/rate-window.ts): `perSecond` per one-second window, and when that is spent a reserve of
 * `burst − perSecond` (what rate-limiter-flexible's BurstyRateLimiter composes, which the broker used before).
 * Both windows block the key in memory once spent (a second at most: another instance may give points back), so
 * a caller over its budget costs at most one Redis round trip a second per instance. Every operation touches one key, so an ioredis Cluster works as well as a single node. If
 * Redis fails each window falls back to the same budget per instance instead of failing the request.
 *
 * Requests of one key that arrive in the same turn of the event loop spend
 * their points in one call: under load one identity's concurrent requests
 * cost one script call instead of one each. The call is made from a
 * setImmediate, which usually runs after src/redis/coalesce.ts has written
 * the turn's other Redis commands, so it is written at once (`writeNow`)
 * rather than corked for another loop iteration. Of n requests spent at once
 * the first ones that fit in the window are let through and the rest are
 * refused (the same number as one call each, since each window's count comes
 * back with the answer), so a batch never gets more than the budget and no
 * less, save that one call cannot straddle a window's end as n calls might.
 * A request may cost several points (an expensive read); the batch spends
 * their sum, and requests are let through in order as long as their points fit
 * in what was admitted: one that does not fit is refused, and cheaper ones
 * behind it may still fit. A refused request spends nothing: a window counts
 * only the points that fit (rate-limit-charge.lua), and what fit but went
 * unused (a request refused for its cost) is given back ({@link Budget.refund})
 * before the answers go out, in the window that counted it only. Between the
 * two calls another instance may see the window fuller than it is, never
 * emptier; a charge refused meanwhile counts nothing, so nothing of it stays.
 */
class Budget {
  private readonly perSecond: RateWindow;
  private readonly reserve: RateWindow | undefined;
  /** The most one request may cost: the whole budget (perSecond plus the reserve), so that it can ever fit. */
  readonly maxCost: number;
  private readonly pending = new Map<string, Waiter[]>();
  private readonly redis: Redis | Cluster;

  constructor(redis: Redis | Cluster, keyPrefix: string, b: { perSecond: number; burst: number }) {
    this.redis = redis;
    this.perSecond = new RateWindow(redis, `${keyPrefix}:s`, b.perSecond, 1);
    const reservePoints = Math.max(0, b.burst - b.perSecond);
    this.reserve =
      reservePoints > 0 ? new RateWindow(redis, `${keyPrefix}:r`, reservePoints, reserveSeconds(b.perSecond, b.burst)) : undefined;
    this.maxCost = b.perSecond + reservePoints;
  }

  /** Spends one request of `points` (at most {@link maxCost}); the seconds to wait when the budget is spent, else undefined. */
  spend(key: string, points = 1): Promise<number | undefined> {
    return new Promise((resolve, reject) => {
      let batch = this.pending.get(key);
      if (!batch) {
        batch = [];
        this.pending.set(key, batch);
        setImmediate(() => void this.flush(key));
      }
      batch.push({ points: Math.min(Math.max(1, Math.floor(points)), this.maxCost), resolve, reject });
    });
  }

  private async flush(key: string): Promise<void> {
    const batch = this.pending.get(key)!;
    this.pending.delete(key);
    try {
      const total = batch.reduce((n, w) => n + w.points, 0);
      const taking = this.take(key, total); // its first call is on the socket (corked) when this returns
      writeNow(this.redis);
      const took = await taking;
      const wait = Math.max(1, Math.ceil(took.waitMs / 1000));
      // In arrival order, each that still fits in what the batch was admitted; one that does not (an expensive
      // read over what is left) is refused without taking the rest from the cheaper requests behind it: the
      // admitted ones never sum to more than `admitted`.
      let spent = 0;
      const answers = batch.map((w) => {
        const fits = spent + w.points <= took.admitted;
        if (fits) spent += w.points;
        return fits ? undefined : wait;
      });
      // A refused request spends nothing: when it left admitted points unused, what it counted is given back first.
      if (spent < took.admitted) await this.refund(key, took, spent);
      for (const [i, w] of batch.entries()) w.resolve(answers[i]);
    } catch (err) {
      for (const w of batch) w.reject(err);
    }
  }

  /**
   * Spends `n` points: how many fit (per-second window first, then the reserve), when to come back for the
   * rest, and what each window counted and where (to give back what was refused).
   */
  private async take(key: string, n: number): Promise<Taken> {
    const first = await this.perSecond.charge(key, n);
    let admitted = first.admitted;
    let waitMs = first.msBeforeNext;
    let reserve: Charge | undefined;
    if (admitted < n && this.reserve) {
      reserve = await this.reserve.charge(key, n - admitted);
      admitted += reserve.admitted;
      waitMs = Math.min(waitMs, reserve.msBeforeNext);
    }
    return { admitted, waitMs, first, reserve };
  }

  /**
   * Gives back what a batch counted but did not spend (`spent` of what it was admitted, per-second window
   * first, as {@link take} admits): a refused expensive read must not drain the points it was refused for, nor
   * the points that did fit but that it could not use. A window counts only what fit (what it admitted), so that
   * is all there is to give back. Each window gives back in the window that counted
   * (a Redis window by its name, or this instance's insurance window), never in a later one. Failing to refund
   * (Redis lost meanwhile) only leaves the over-count, and never fails the request.
   */
  private async refund(key: string, took: Taken, spent: number): Promise<void> {
    const keptFirst = Math.min(spent, took.first.admitted);
    const back = async (window: RateWindow, c: Charge, kept: number) => {
      // A window counted only what it admitted: with all of that kept there is nothing to give back.
      if (c.counted <= kept) return;
      await window.refund(key, c, c.counted - kept);
    };
    await Promise.all([
      back(this.perSecond, took.first, keptFirst),
      took.reserve && this.reserve ? back(this.reserve, took.reserve, spent - keptFirst) : undefined,
    ]);
  }
}

/** What one {@link Budget.take} admitted, and what each window counted and where. */
interface Taken {
  admitted: number;
  waitMs: number;
  first: Charge;
  reserve?: Charge;
}

/** Redis keys stay short and printable whatever the identity string holds. */
function keyFor(identity: string): string {
  return identity.length <= 200 && /^[\x21-\x7e]+$/.test(identity)
    ? identity
    : `sha256:${createHash('sha256').update(identity).digest('base64url')}`;
}

/**
 * The client an authentication failure is charged to: the address Express
 * derives (`server.rateLimit.trustProxy` decides whether X-Forwarded-For is
 * believed), IPv4-mapped IPv6 as IPv4, and IPv6 per /64, since one host
 * usually holds a whole /64 and would otherwise get 2^64 budgets.
 */
export function clientKey(address: string | undefined): string {
  if (!address) return 'unknown';
  let a: ipaddr.IPv4 | ipaddr.IPv6;
  try {
    a = ipaddr.process(address);
  } catch {
    return keyFor(address);
  }
  if (a.kind() === 'ipv4') return a.toString();
  const parts = (a as ipaddr.IPv6).parts.slice(0, 4);
  return `${new ipaddr.IPv6([...parts, 0, 0, 0, 0]).toRFC5952String()}/64`;
}

/** At most this many client addresses are remembered as blocked per instance. */
const MAX_BLOCKED = 100_000;

/**
 * Rate limits at the broker's edge (contract sections 2 and 3):
 * - every authenticated route spends the caller identity's budget once its
 *   token is verified (`/v1/token`, `/v1/admin/*` and the AWS container
 *   endpoint included); `/v1/introspect` spends its own;
 * - authentication failures spend the client address's budget, and an address
 *   over it is refused by {@link RateLimits.gate} before any signature is
 *   checked. The count is shared in Redis; the refusal itself is decided from
 *   an in-memory block list that the shared count feeds, so it costs nothing.
 * Keys live under `<redis.prefix>:rl:`.
 */
export class RateLimits {
  private readonly budgets: Partial<Record<BudgetName, Budget>> = {};
  /**
   * Blocked client addresses, each until a performance.now() time: a block lasts the budget's wait, a duration
   * in this process. Dated with Date.now(), a wall clock stepped back an hour kept an address refused for that
   * hour more, and one stepped forward let blocked addresses through to the signature check at once
   * (test/http/rate-limit-clock-step.test.ts).
   */
  private readonly blocked = new Map<string, number>();
  private readonly limited: Counter<'budget'>;
  private readonly metrics: Metrics;
  private readonly logger: Logger;

  constructor(opts: { redis: Redis | Cluster; prefix: string; config: RateLimitConfig; metrics: Metrics; logger: Logger }) {
    const { config } = opts;
    const set = (name: BudgetName, short: string, b: { perSecond: number; burst: number }) => {
      if (b.perSecond > 0) this.budgets[name] = new Budget(opts.redis, `${opts.prefix}:rl:${short}`, b);
    };
    set('identity', 'id', config);
    set('introspect', 'introspect', config.introspect);
    set('unauthenticated', 'unauth', config.unauthenticated);
    this.metrics = opts.metrics;
    this.logger = opts.logger;
    this.limited =
      (opts.metrics.registry.getSingleMetric('jit_rate_limited_total') as Counter<'budget'> | undefined) ??
      new Counter({
        name: 'jit_rate_limited_total',
        help: 'Requests refused with 429 by a rate limit, by budget',
        labelNames: ['budget'],
        registers: [opts.metrics.registry],
      });
  }

  /**
   * Spends one request of a verified identity's budget, `points` of it (more than 1 for expensive reads, at
   * most the whole budget); throws {@link RateLimited} when it is spent.
   */
  async spendIdentity(identity: string, budget: 'identity' | 'introspect' = 'identity', points = 1): Promise<void> {
    const b = this.budgets[budget];
    if (!b) return;
    const wait = await b.spend(keyFor(identity), points);
    if (wait !== undefined) throw this.refuse(budget, wait, 'Too many requests for this identity; slow down.');
  }

  /** The most one request may spend of a budget (its `burst`: the per-second window and the reserve); undefined when it is off. */
  maxCost(budget: 'identity' | 'introspect'): number | undefined {
    return this.budgets[budget]?.maxCost;
  }

  /**
   * Charges an authentication failure to the request's client address. Returns
   * the 429 to answer instead of the 401 when this failure went over the
   * budget (the address is then blocked in memory until the window ends).
   */
  async authFailed(req: Request, res: Response): Promise<RateLimited | undefined> {
    res.locals.authFailureCounted = true;
    return this.spendAddress(req, 'failed authentications');
  }

  /**
   * Spends one request of the client address's unauthenticated budget for a
   * route anyone may call without a token and that costs the broker work (the
   * console's sign-in: a provider round trip, PKCE). Returns the 429 to answer
   * when it is spent; the address is then refused by {@link gate} until the
   * window ends, like one that failed authentication too often.
   */
  async unauthenticatedCall(req: Request): Promise<RateLimited | undefined> {
    return this.spendAddress(req, 'sign-in requests');
  }

  private async spendAddress(req: Request, what: string): Promise<RateLimited | undefined> {
    const b = this.budgets.unauthenticated;
    if (!b) return undefined;
    const client = clientKey(req.ip ?? req.socket.remoteAddress);
    let wait: number | undefined;
    try {
      wait = await b.spend(client);
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, `counting ${what} failed`);
      return undefined;
    }
    if (wait === undefined) return undefined;
    this.block(client, wait);
    return this.refuse('unauthenticated', wait, `Too many ${what} from this address; slow down.`);
  }

  /**
   * Express middleware for every route that checks a token: an address over its
   * authentication-failure budget is refused here, before the token is even
   * read. Answers in the OAuth shape on the OAuth endpoints. Also charges 401s
   * that a route answered itself without going through {@link authFailed}.
   */
  gate(): RequestHandler {
    return (req, res, next) => {
      if (this.budgets.unauthenticated) {
        // Nothing blocked (the usual case): no need to work out the client address (req.ip, ipaddr) per request.
        const client = this.blocked.size > 0 ? clientKey(req.ip ?? req.socket.remoteAddress) : undefined;
        const until = client === undefined ? undefined : this.blocked.get(client);
        if (client !== undefined && until !== undefined) {
          const ms = until - performance.now();
          if (ms > 0) {
            const err = this.refuse(
              'unauthenticated',
              Math.ceil(ms / 1000),
              'Too many unauthenticated requests from this address; slow down.',
            );
            return isOAuthPath(req) ? sendSlowDown(res, err) : next(err);
          }
          this.blocked.delete(client);
        }
        res.on('finish', () => {
          if (res.statusCode === 401 && !res.locals.authFailureCounted) void this.authFailed(req, res);
        });
      }
      next();
    };
  }

  private refuse(budget: BudgetName, seconds: number, detail: string): RateLimited {
    this.limited.inc({ budget });
    this.metrics.denied.inc({ code: 'rate_limited' });
    return new RateLimited(detail, seconds);
  }

  private block(client: string, seconds: number): void {
    const now = performance.now();
    // Forgetting a block only costs one more signature check for that address.
    this.blocked.delete(client);
    makeRoom(this.blocked, MAX_BLOCKED, (until) => until <= now);
    this.blocked.set(client, now + seconds * 1000);
  }
}

/**
 * `POST /v1/token` and `POST /v1/introspect` answer RFC 6749 errors, not problems; any other method there has no
 * route and answers problems like every other unknown route. Paths match as Express routes them: case-insensitively,
 * with at most one trailing slash (`/v1/token//` is no route).
 */
export function isOAuthPath(req: Request): boolean {
  if (req.method !== 'POST') return false;
  const p = `${req.baseUrl}${req.path}`.toLowerCase().replace(/\/$/, '');
  return p === '/v1/token' || p === '/v1/introspect';
}

/**
 * Seconds a 429 tells the caller to wait: the limiter's own figure, or 1 s for
 * other limits (a task's lease ceiling) that carry none; the contract wants
 * Retry-After on every 429.
 */
export function retryAfterOf(err: BrokerError): number {
  const s = err.retryAfterSeconds;
  return typeof s === 'number' && Number.isFinite(s) && s >= 1 ? Math.ceil(s) : 1;
}

/** The OAuth-shaped 429: `{ "error": "slow_down" }` (the RFC 8628 code, as the contract asks), with Retry-After. */
export function sendSlowDown(res: Response, err: BrokerError): void {
  res
    .status(429)
    .set({ 'Retry-After': String(retryAfterOf(err)), 'Cache-Control': 'no-store', Pragma: 'no-cache' })
    .json({ error: 'slow_down', error_description: oauthDescription(err.message) });
}
