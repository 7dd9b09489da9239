import express, { type Express, type RequestHandler, Router } from 'express';
import type { Deps } from '../deps.ts';
import { notFound } from '../errors.ts';
import { clip } from '../identity/log-safe.ts';
import { UNMATCHED_ROUTE } from '../metrics.ts';
import type { Services } from './services.ts';
import { jsonBody, requireIdentity } from './middleware.ts';
import { problemHandler, sendProblem } from './problem.ts';
import { credentialRoutes } from './routes/credentials.ts';
import { oauthRoutes } from './routes/oauth.ts';
import { adminRoutes, opsRoutes } from './routes/ops.ts';
import { listRoutes } from './routes/lists.ts';
import { readSlots } from './read-slots.ts';
import { chargeReads } from './read-cost.ts';
import { openApiRoutes } from './routes/openapi.ts';
import { taskRoutes } from './routes/tasks.ts';
import { wellKnownRoutes } from './routes/wellknown.ts';

/** Builds the Express app. Routes are grouped by who calls them. */
export function createApp(
  deps: Deps,
  services: Services,
  opts: {
    isShuttingDown: () => boolean;
    isRecovered: () => boolean;
    policyInSync?: () => boolean;
    /** What the Redis lacks that the broker needs (src/redis/requirements.ts); empty when it suits. */
    redisProblems?: () => Promise<string[]>;
    extraRouters?: (express.Router | RequestHandler)[];
  },
): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  // Only the rate limiter reads the client address (req.ip); behind a proxy the operator says which hops to believe.
  app.set('trust proxy', deps.config.server.rateLimit.trustProxy);
  app.use((req, res, next) => {
    const start = process.hrtime.bigint();
    res.on('finish', () => {
      deps.metrics.observeHttp((req.route?.path as string | undefined) ?? UNMATCHED_ROUTE, res.statusCode, start);
    });
    // Express would answer OPTIONS itself (200, the path's methods); the broker has no OPTIONS route and answers no CORS preflight.
    if (req.method === 'OPTIONS') noRoute(req, res, next);
    else next();
  });
  app.use(
    firstOf(
      under(['/healthz', '/readyz', '/metrics'], opsRoutes(deps, opts)),
      under(['/.well-known/'], wellKnownRoutes(deps)),
      under(['/openapi.json'], openApiRoutes(deps.config.server.publicUrl)),
    ),
  );
  // Addresses over their authentication-failure budget are refused here, before any token is looked at.
  if (deps.limits) app.use('/v1', deps.limits.gate());
  app.use(under(['/v1/token', '/v1/introspect'], oauthRoutes(deps, services)));
  for (const r of opts.extraRouters ?? []) app.use(r);
  app.use(v1Routes(deps, services, requireIdentity(deps)));
  app.use(noRoute);
  app.use(problemHandler(deps.logger));
  return app;
}

/** 404 `route_not_found`: what any method and path the API does not have answers. */
const noRoute: RequestHandler = (req, res) =>
  sendProblem(res, notFound('route_not_found', `No route ${clip(req.method, 16)} ${clip(req.path, 200)}.`));

/**
 * The authenticated /v1 API. `authenticate` sets the caller's identity: the
 * workload JWT on /v1 itself, the console session on /console/api (mounted
 * there by src/console), so both go through the very same handlers.
 */
export function v1Routes(deps: Deps, services: Services, authenticate: RequestHandler): Router {
  const r = Router();
  r.use(under(['/v1/admin/'], adminRoutes(deps, services, authenticate)));
  // Everything else under /v1 is JSON and needs an identity (and its rate limit), checked before the body is even parsed.
  r.use('/v1', series(authenticate, ...jsonBody(deps.config.server.bodyLimitBytes)));
  // Expensive reads spend more of the caller's rate limit (src/http/read-cost.ts), then wait for a read slot.
  r.use(['/v1/tasks', '/v1/approvals', '/v1/audit'], chargeReads(deps), readSlots(deps));
  r.use(
    firstOf(
      under(['/v1/tasks', '/v1/approvals', '/v1/audit'], listRoutes(services)),
      under(['/v1/tasks'], taskRoutes(services)),
      under(['/v1/credentials', '/v1/leases/', '/v1/approvals/'], credentialRoutes(services)),
    ),
  );
  return r;
}

/**
 * Hands a request to `router` only when its path starts with one of
 * `prefixes` (lower case; compared case-insensitively, as Express routes).
 * A router mounted without a path is entered by every request, and entering
 * one costs closures and a path match per route: across the app's routers
 * that was ~25 KB of garbage and tens of µs per issuance (docs/benchmarks.md).
 * Checked once, at start-up: a route outside the prefixes throws. The
 * router stays reachable as `.router` for whatever lists the app's routes.
 */
export function under(
  prefixes: readonly string[],
  router: Router,
): RequestHandler & { router: Router; matches: (path: string) => boolean } {
  /** `path` lower-cased. */
  const matches = (path: string) => prefixes.some((p) => path.startsWith(p));
  for (const layer of router.stack) {
    const path: unknown = layer.route?.path;
    if (typeof path === 'string' && !matches(path.toLowerCase())) {
      throw new Error(`route ${path} is outside its router's prefixes (${prefixes.join(', ')})`);
    }
  }
  const guard: RequestHandler = (req, res, next) => {
    if (matches(req.path.toLowerCase())) router(req, res, next);
    else next();
  };
  return Object.assign(guard, { router, matches });
}

type Guarded = ReturnType<typeof under>;

/**
 * Consecutive `under` guards as one middleware: the request goes to the
 * first router whose prefixes match its path; if that router passes it on
 * (no route of its own answered), the guards after it are tried, exactly as
 * separate `app.use(under(...))` calls would. Why: each middleware Express
 * steps over costs it a match object, a closure and a path parse per
 * request; an issuance stepped over 16 of them (docs/benchmarks.md). The
 * routers' routes are reachable as `.stack`, for whatever lists the app's routes.
 */
export function firstOf(...guards: Guarded[]): RequestHandler & { stack: unknown[] } {
  const handler: RequestHandler = (req, res, next) => {
    const path = req.path.toLowerCase();
    const from = (i: number): void => {
      for (; i < guards.length; i++) {
        const g = guards[i]!;
        if (!g.matches(path)) continue;
        const after = i + 1;
        // An error skips the remaining guards, as Express skips plain middleware while an error is pending.
        g.router(req, res, (err?: unknown) => (err ? next(err) : from(after)));
        return;
      }
      next();
    };
    from(0);
  };
  return Object.assign(handler, { stack: guards.flatMap((g) => g.router.stack) });
}

/**
 * Handlers run one after another as one middleware, exactly as `r.use(path,
 * a, b, c)` runs them as separate layers: each gets `next`; an error (thrown,
 * a rejected promise, or `next(err)`) skips the rest and goes to Express's
 * error handling; `next('route')` goes on to the next handler as it would to
 * the next layer, `next('router')` leaves the router. Why: Express matches the
 * mount path again for every layer, trims and restores `req.url` around each,
 * and allocates a match object and closures for it: the four `/v1` layers
 * every issuance stepped through cost ~1.3 KB of garbage (scripts/bench/alloc.ts).
 */
export function series(...handlers: RequestHandler[]): RequestHandler {
  return (req, res, next) => {
    const from = (i: number): void => {
      if (i === handlers.length) {
        next();
        return;
      }
      const after = (err?: unknown): void => {
        if (err === 'router') next(err);
        else if (err && err !== 'route') next(err);
        else from(i + 1);
      };
      try {
        const ret: unknown = handlers[i]!(req, res, after);
        if (ret instanceof Promise) ret.catch((err: unknown) => next(err || new Error('Rejected promise')));
      } catch (err) {
        next(err);
      }
    };
    from(0);
  };
}
