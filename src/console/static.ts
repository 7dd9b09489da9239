import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import express, { type RequestHandler, type Response, Router } from 'express';

/** Where `npm run build:console` writes the console (Vite, from console/). */
export const CONSOLE_DIST = fileURLToPath(new URL('../../console/dist/', import.meta.url));

/**
 * Everything the console loads comes from the broker itself: no inline script
 * or style, no third-party origin, no framing, and Trusted Types so that no
 * string can ever become markup through a DOM sink.
 */
export const CONSOLE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "font-src 'self'",
  "connect-src 'self'",
  "manifest-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
  "require-trusted-types-for 'script'",
  "trusted-types 'none'",
].join('; ');

/** Security headers on every /console response (pages, assets and API alike). */
export function securityHeaders(opts: { https: boolean }): RequestHandler {
  return (_req, res, next) => {
    res.setHeader('Content-Security-Policy', CONSOLE_CSP);
    res.setHeader('X-Content-Type-Options', 'nosniff');
    res.setHeader('X-Frame-Options', 'DENY');
    // same-origin, not no-referrer: with no-referrer a same-origin POST would carry `Origin: null`.
    res.setHeader('Referrer-Policy', 'same-origin');
    res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
    res.setHeader('Cross-Origin-Resource-Policy', 'same-origin');
    if (opts.https) res.setHeader('Strict-Transport-Security', 'max-age=31536000');
    next();
  };
}

/**
 * Serves the built console: hashed assets cached for good, and the page
 * itself for every other path below /console/ so that deep links work on
 * reload (the page's router reads the path). The page holds no data: it
 * fetches everything from /console/api with the session cookie.
 */
export function staticConsole(dist = CONSOLE_DIST): Router {
  const index = `${dist}index.html`;
  if (!existsSync(index)) {
    throw new Error(`the console is configured but not built (${index} is missing): run \`npm run build:console\``);
  }
  const r = Router();
  const sendIndex = (res: Response) => {
    res.setHeader('Cache-Control', 'no-cache');
    res.sendFile(index);
  };
  // Non-strict routing matches /console/ here too: only the bare path redirects.
  r.get('/console', (req, res, next) => (req.path === '/console' ? res.redirect(301, '/console/') : next()));
  r.use(
    '/console/assets',
    express.static(`${dist}assets`, { index: false, immutable: true, maxAge: '365d', fallthrough: true, redirect: false }),
  );
  // Unhashed files at the root of dist (favicon): revalidated.
  r.use('/console', express.static(dist, { index: false, maxAge: 0, redirect: false }));
  // Case-insensitive like the /console/api and /console/assets mounts: /console/API/... is no page either.
  r.get(/^\/console\/(?!api\/|assets\/).*/i, (_req, res) => sendIndex(res));
  return r;
}
