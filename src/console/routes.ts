import { type Request, type RequestHandler, type Response, Router } from 'express';
import { denial } from '../authz.ts';
import type { Deps } from '../deps.ts';
import { forbidden, unauthenticated } from '../errors.ts';
import { v1Routes } from '../http/app.ts';
import { clip } from '../identity/log-safe.ts';
import { admitIdentity } from '../http/middleware.ts';
import type { Services } from '../http/services.ts';
import { type ConsoleConfig, consoleTrust } from './config.ts';
import { ConsoleCookies } from './cookies.ts';
import { MetricsHistory } from './metrics-history.ts';
import { ConsoleOidcClient } from './oidc.ts';
import { decodePendingLogin, encodePendingLogin } from './pending-login.ts';
import { type ConsoleSession, ConsoleSessionStore } from './sessions.ts';
import { securityHeaders, staticConsole } from './static.ts';

/**
 * The header every state-changing console call carries. A cross-site form
 * cannot set a header, and a cross-site script cannot without a CORS
 * preflight, which the broker never answers; so a request with it came from
 * the console's own page (SameSite=Strict already keeps the cookie home).
 */
export const CSRF_HEADER = 'x-jit-console';
const SAFE = new Set(['GET', 'HEAD']);

/** Why a sign-in failed, as the page shows it (the cause goes to the log). */
type SignInError = 'provider_unavailable' | 'provider_error' | 'state_unknown' | 'browser_mismatch' | 'token_invalid';

/** The console as mounted by the composition root: its router and what to stop on shutdown. */
export interface ConsoleApp {
  router: Router;
  close(): void;
}

/**
 * The web console (contract section 10): sign-in as a backend-for-frontend
 * (the broker exchanges the code and keeps the session; no token reaches the
 * page), the built page with a strict CSP, and /console/api, which is the
 * very same /v1 routers with the session as the caller's identity.
 */
export function createConsole(deps: Deps, services: Services, opts: { dist?: string; metricsIntervalMs?: number } = {}): ConsoleApp {
  const cfg = deps.config.console as ConsoleConfig;
  const publicUrl = deps.config.server.publicUrl;
  const trust = consoleTrust(deps.config.trust, cfg)!;
  const now = () => deps.clock.now();
  const store = new ConsoleSessionStore({ redis: deps.redis, keys: deps.keys, now });
  const cookies = new ConsoleCookies(publicUrl);
  const oidc = new ConsoleOidcClient(cfg, publicUrl, { now });
  const history = new MetricsHistory(deps.metrics, { intervalMs: opts.metricsIntervalMs });
  const { admins, approvers } = deps.patterns;
  const log = deps.logger.child({ component: 'console' });

  const r = Router();
  r.use('/console', securityHeaders({ https: publicUrl.startsWith('https:') }));

  const failSignIn = (res: Response, code: SignInError) => res.redirect(303, `/console/?signin_error=${code}`);

  // Anyone may start or finish a sign-in, and each costs the broker work (and the provider a request), so
  // every one spends the client address's unauthenticated budget; an address over it is refused before
  // anything else, as on /v1. (/console/api calls spend the signed-in person's budget instead: signedIn.)
  if (deps.limits) {
    const limits = deps.limits;
    r.use(['/console/login', '/console/callback'], limits.gate());
    // The console's API as /v1: an address over that budget is refused before any session is looked up, and a
    // call answered 401 (no live session: a made-up or ended cookie, each one a Redis read) spends it, as a
    // token that fails does on /v1. The signed-in person's own calls spend their identity's budget (signedIn).
    // (Not /console/api/session: "who is signed in" is always an answer, the page asks it before it knows.)
    r.use(['/console/api/v1', '/console/api/metrics'], limits.gate());
    r.use(['/console/login', '/console/callback'], async (req, _res, next) => {
      const over = await limits.unauthenticatedCall(req);
      if (over) throw over;
      next();
    });
  }

  /** Ends a session a new sign-in replaces, audited as its sign-out. */
  const endReplaced = async (handle: string) => {
    const ended = await store.end(handle);
    if (ended)
      await deps.audit.append({
        action: 'console.signout',
        actor: ended.identity.id,
        decision: 'ok',
        detail: { reason: 'signed_in_again' },
      });
  };

  r.get('/console/login', async (req, res) => {
    // Signing in again ends the session this browser holds (a shared browser, or a person who suspects theirs):
    // otherwise the old cookie's session lived on in Redis until it expired. SameSite=Strict keeps the cookie from
    // other sites, not from a sibling host of the same site, whose <img src=".../console/login"> must not sign the
    // person out (Sign out itself asks a same-origin call: fromConsolePage). See `replacesHeld`.
    const held = store.handle(cookies.read(req, cookies.session));
    const when = held === undefined ? 'never' : replacesHeld(req);
    if (held !== undefined && when === 'now') {
      await endReplaced(held);
      res.clearCookie(cookies.session, { ...cookies.sessionOptions(0), maxAge: undefined });
    }
    let start: Awaited<ReturnType<ConsoleOidcClient['start']>>;
    try {
      start = await oidc.start({ prompt: req.query.prompt === 'login' ? 'login' : undefined });
    } catch (err) {
      log.warn({ err: (err as Error).message, issuer: cfg.issuer }, 'console sign-in: provider discovery failed');
      return failSignIn(res, 'provider_unavailable');
    }
    const ttlMs = cfg.loginTimeoutSeconds * 1000;
    // The whole sign-in waits in the person's browser (HttpOnly), nothing in Redis: a code is only redeemable
    // by the browser that started the sign-in (PKCE), so nobody can sign a victim into an attacker's session.
    const pending = {
      state: start.state,
      nonce: start.nonce,
      codeVerifier: start.codeVerifier,
      returnTo: safeReturnTo(req.query.return),
      ...(held !== undefined && when === 'completed' ? { ends: held } : {}),
    };
    res.cookie(cookies.login, encodePendingLogin(pending), cookies.loginOptions(ttlMs));
    res.setHeader('Cache-Control', 'no-store');
    res.redirect(303, start.url.href);
  });

  r.get('/console/callback', async (req, res) => {
    res.setHeader('Cache-Control', 'no-store');
    res.clearCookie(cookies.login, { ...cookies.loginOptions(0), maxAge: undefined });
    if (typeof req.query.error === 'string') {
      log.info({ error: req.query.error }, 'console sign-in: the provider answered with an error');
      return failSignIn(res, 'provider_error');
    }
    // No sign-in cookie: it expired (console.loginTimeoutSeconds), was used by an earlier callback, or never was here.
    const pending = decodePendingLogin(cookies.read(req, cookies.login));
    if (!pending) return failSignIn(res, 'state_unknown');
    // This browser is waiting for another sign-in than the one this link finishes.
    if (req.query.state !== pending.state) return failSignIn(res, 'browser_mismatch');
    let idToken: string;
    try {
      const query = req.originalUrl.slice(req.originalUrl.indexOf('?'));
      idToken = await oidc.finish(new URL(`${publicUrl}/console/callback${query}`), pending);
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'console sign-in: code exchange failed');
      return failSignIn(res, 'provider_error');
    }
    let session: ConsoleSession;
    try {
      // The broker's own OIDC trust checks the signature, issuer, audience and lifetime, as for any caller.
      const identity = await deps.verifier.verify(idToken, 'console-sign-in');
      if (identity.kind !== 'oidc' || identity.trust !== trust.name)
        throw new Error(`verified by trust ${identity.trust}, not ${trust.name}`);
      const at = now();
      const expiresAt = Math.min(identity.exp * 1000, at + cfg.sessionMaxAgeSeconds * 1000);
      session = { identity: { ...identity, exp: Math.floor(expiresAt / 1000) }, createdAt: at, expiresAt };
    } catch (err) {
      log.warn({ err: (err as Error).message, code: (err as { code?: string }).code }, 'console sign-in: ID token refused');
      return failSignIn(res, 'token_invalid');
    }
    const cookie = await store.create(session);
    res.cookie(cookies.session, cookie, cookies.sessionOptions(session.expiresAt - now()));
    await deps.audit.append({ action: 'console.signin', actor: session.identity.id, decision: 'allow', detail: { trust: trust.name } });
    if (pending.ends !== undefined) await endReplaced(pending.ends);
    log.info({ who: session.identity.id }, 'console sign-in');
    res.redirect(303, safeReturnTo(pending.returnTo));
  });

  // Every /console/api call: a live session, never cached, the anti-CSRF header on anything that changes state,
  // and (`admit`) the quarantine and the person's rate limit, as for a workload on /v1.
  const withSession =
    (opts: { admit: boolean }): RequestHandler =>
    async (req, res, next) => {
      res.setHeader('Cache-Control', 'no-store');
      const session = await store.get(cookies.read(req, cookies.session));
      if (!SAFE.has(req.method) && !fromConsolePage(req)) {
        const err = forbidden('console_csrf', `State-changing console calls must come from the console page (header ${CSRF_HEADER}: 1).`);
        // Someone made a signed-in person's browser send this: a denial of that person, audited like any other.
        // Without a session nothing was at stake (and no actor is known): counted in metrics only.
        // It spends the address's unauthenticated budget as a 401 does (the session lookup was a Redis read).
        if (!session) {
          deps.metrics.denied.inc({ code: err.code });
          const over = await deps.limits?.authFailed(req, res);
          throw over ?? err;
        }
        throw await denial(deps, session.identity, err, {
          action: 'access.deny',
          detail: { method: clip(req.method, 16), path: clip(`${req.baseUrl}${req.path}`, 200) },
        });
      }
      if (!session) throw unauthenticated('console_signed_out', 'Sign in to the console (the session is missing or has expired).');
      // A quarantined person is stopped here exactly as a quarantined workload is on /v1.
      if (opts.admit) await admitIdentity(deps, session.identity);
      res.locals.identity = session.identity;
      res.locals.consoleSession = session;
      next();
    };
  const signedIn = withSession({ admit: true });

  // Who is signed in. Anonymous is an answer here, not an error: the page asks before it knows.
  r.get('/console/api/session', async (req, res) => {
    res.setHeader('Cache-Control', 'no-store');
    const s = await store.get(cookies.read(req, cookies.session));
    if (!s) {
      res.json({ signedIn: false });
      return;
    }
    const c = s.identity.claims;
    res.json({
      signedIn: true,
      identity: s.identity.id,
      issuer: c.iss,
      subject: c.sub,
      name: c.name ?? c.preferred_username ?? c.email ?? c.sub,
      admin: admins.matches(s.identity.id),
      approver: approvers.matches(s.identity.id),
      expiresAt: new Date(s.expiresAt).toISOString(),
    });
  });

  // Signing out is never refused for being quarantined or over the rate limit: refused, the session would live on
  // (and come back when the quarantine is lifted) while the page said "signed out". The anti-CSRF header still holds.
  r.delete('/console/api/session', withSession({ admit: false }), async (req, res) => {
    await store.delete(cookies.read(req, cookies.session));
    res.clearCookie(cookies.session, { ...cookies.sessionOptions(0), maxAge: undefined });
    const who = (res.locals.consoleSession as ConsoleSession).identity.id;
    await deps.audit.append({ action: 'console.signout', actor: who, decision: 'ok' });
    res.status(204).end();
  });

  r.get('/console/api/metrics', signedIn, (_req, res) => {
    res.json({ intervalSeconds: history.intervalMs / 1000, points: history.points() });
  });

  // The console's data calls are the broker's own /v1 handlers: same checks, same answers, same audit.
  r.use('/console/api', v1Routes(deps, services, signedIn));
  r.use(staticConsole(opts.dist));

  history.start();
  return { router: r, close: () => history.stop() };
}

/**
 * Whether a state-changing call came from the console's own page: it carries
 * the console header, and the browser (when it says) calls it same-origin.
 */
function fromConsolePage(req: Request): boolean {
  const site = req.headers['sec-fetch-site'];
  return req.headers[CSRF_HEADER] === '1' && (site === undefined || site === 'same-origin');
}

/**
 * When a sign-in ends the session the browser holds. `now`: the browser says it came from the console's own page or
 * was typed in (`same-origin`, `none`). `completed`: it says nothing (a browser without Sec-Fetch-Site, a script),
 * so it may be a sibling host's <img>, which cannot complete a sign-in: the session ends once this one does.
 * `never`: it came from another site or origin.
 */
function replacesHeld(req: Request): 'now' | 'completed' | 'never' {
  const site = req.headers['sec-fetch-site'];
  if (site === undefined) return 'completed';
  return site === 'same-origin' || site === 'none' ? 'now' : 'never';
}

/** Only a path inside the console: never another origin (`//evil`, `/\evil`) nor anything outside /console/. */
export function safeReturnTo(value: unknown): string {
  if (typeof value !== 'string' || value.length > 2048) return '/console/';
  if (!/^\/console\/[^\\]*$/.test(value) || value.startsWith('//') || /[\r\n]/.test(value)) return '/console/';
  return value;
}
