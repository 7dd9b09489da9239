import { validateConfig } from '../../src/config/load.ts';
import { quantile } from '../../src/console/metrics-history.ts';
import { safeReturnTo } from '../../src/console/routes.ts';
import { encodePendingLogin } from '../../src/console/pending-login.ts';
import { ConsoleSessionStore } from '../../src/console/sessions.ts';
import { ConfigError } from '../../src/errors.ts';
import { Keys } from '../../src/redis/keys.ts';
import { ADMIN, AGENT, ORCH, call, startTestBroker, type TestBroker, testConfig } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { CLIENT_ID } from './stack.ts';

// The console's server side without a browser: config rules, headers, the session
// as an identity on the /v1 handlers, and the anti-CSRF header. The browser tests
// (*.e2e.test.ts) sign in for real; here a session is put in the store directly.

const IDP = 'http://127.0.0.1:9'; // nothing listens there: discovery is lazy, and sign-in must fail cleanly
const agentId = `spiffe://dev.local${AGENT}`;
const issuer = new TestIssuer();
// The same provider also issues workload tokens (audience jit-broker): those stay bearer identities.
const oidcTrust = {
  name: 'people',
  kind: 'oidc',
  issuer: IDP,
  audiences: [CLIENT_ID, 'jit-broker'],
  jwks: { keys: [issuer.jwks().keys[0]] },
};
const devTrust = { name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: issuer.bundle().keys } };

function configError(overrides: Record<string, unknown>): ConfigError {
  try {
    testConfig(issuer, 'unused', overrides);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('config was accepted');
}

describe('config', () => {
  test.each([
    ['no oidc trust entry for the issuer', { trust: [devTrust], console: { issuer: IDP, clientId: CLIENT_ID } }, 'console.issuer'],
    [
      'the trust entry does not accept the client id',
      { trust: [devTrust, { ...oidcTrust, audiences: ['other'] }], console: { issuer: IDP, clientId: CLIENT_ID } },
      'console.clientId',
    ],
    [
      'plain http publicUrl off loopback',
      {
        server: { port: 0, publicUrl: 'http://broker.example' },
        trust: [devTrust, oidcTrust],
        console: { issuer: IDP, clientId: CLIENT_ID },
      },
      'server.publicUrl',
    ],
    [
      'plain http issuer off loopback',
      {
        trust: [devTrust, { ...oidcTrust, issuer: 'http://idp.example' }],
        console: { issuer: 'http://idp.example', clientId: CLIENT_ID },
      },
      'console.issuer',
    ],
    ['an unknown key', { trust: [devTrust, oidcTrust], console: { issuer: IDP, clientId: CLIENT_ID, devLogin: true } }, 'console.devLogin'],
  ])('startup fails when %s', (_name, overrides, path) => {
    const err = configError(overrides);
    expect(err.path).toBe(path);
    expect(err.message).toContain(path);
  });

  test('a valid console section loads, with defaults', () => {
    const c = testConfig(issuer, 'unused', { trust: [devTrust, oidcTrust], console: { issuer: IDP, clientId: CLIENT_ID } });
    expect(c.console).toEqual({
      issuer: IDP,
      clientId: CLIENT_ID,
      scopes: ['openid'],
      sessionMaxAgeSeconds: 28_800,
      loginTimeoutSeconds: 600,
    });
    expect(validateConfig).toBeDefined();
  });
});

test.each([
  ['/console/tasks/t-1', '/console/tasks/t-1'],
  ['/console/agents/spiffe%3A%2F%2Fdev.local%2Fagent%2Fa', '/console/agents/spiffe%3A%2F%2Fdev.local%2Fagent%2Fa'],
  ['//evil.example/console/', '/console/'],
  ['/console/\\evil', '/console/'],
  ['https://evil.example/console/tasks', '/console/'],
  ['/v1/tasks', '/console/'],
  ['/console/x\r\nSet-Cookie: a=b', '/console/'],
  [undefined, '/console/'],
  [['/console/a', '/console/b'], '/console/'],
])('sign-in returns only to a console path: %p → %p', (input, expected) => {
  expect(safeReturnTo(input)).toBe(expected);
});

test.each([
  // bucket bounds with cumulative counts
  [
    [
      [0.1, 0],
      [0.5, 10],
      [1, 10],
      [Number.POSITIVE_INFINITY, 10],
    ],
    0.5,
    0.3,
  ],
  [
    [
      [0.1, 5],
      [0.5, 10],
      [Number.POSITIVE_INFINITY, 10],
    ],
    0.95,
    0.46,
  ],
  [
    [
      [0.1, 0],
      [Number.POSITIVE_INFINITY, 4],
    ],
    0.5,
    0.1,
  ],
  [
    [
      [0.1, 0],
      [Number.POSITIVE_INFINITY, 0],
    ],
    0.5,
    null,
  ],
] as [[number, number][], number, number | null][])('revocation lag quantile %#', (buckets, q, expected) => {
  expect(quantile(buckets, q)).toBe(expected);
});

describe('a broker with the console', () => {
  let t: TestBroker;
  let store: ConsoleSessionStore;
  const cookieName = () => `jit-console-${new URL(t.url).port}`;

  beforeAll(async () => {
    const port = await (await import('./stack.ts')).freePort();
    t = await startTestBroker('console-server', {
      issuer,
      config: {
        server: { port, publicUrl: `http://127.0.0.1:${port}` },
        trust: [devTrust, oidcTrust],
        admins: ['spiffe://dev.local/ops/*', `${IDP}#admin`],
        approvers: ['spiffe://dev.local/ops/*', `${IDP}#admin`],
        console: { issuer: IDP, clientId: CLIENT_ID },
      },
    });
    store = new ConsoleSessionStore({ redis: t.broker.deps.redis, keys: new Keys(t.prefix) });
  });
  afterAll(async () => {
    await t.close();
  });

  async function session(sub: string, ttlMs = 60_000): Promise<string> {
    const expiresAt = Date.now() + ttlMs;
    return store.create({
      identity: { id: `${IDP}#${sub}`, trust: 'people', kind: 'oidc', claims: { iss: IDP, sub }, exp: Math.floor(expiresAt / 1000) },
      createdAt: Date.now(),
      expiresAt,
    });
  }
  const asPerson = (cookie: string, extra: Record<string, string> = {}) => ({ cookie: `${cookieName()}=${cookie}`, ...extra });

  test('pages: any console path serves the page with a strict CSP; assets that do not exist are 404, not the page', async () => {
    for (const path of ['/console/', '/console/tasks', '/console/tasks/t~sub.1', '/console/agents/spiffe%3A%2F%2Fdev.local%2Fagent%2Fx']) {
      const res = await fetch(`${t.url}${path}`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/html/);
      const csp = res.headers.get('content-security-policy')!;
      expect(csp).toContain("script-src 'self'");
      expect(csp).toContain("style-src 'self'");
      expect(csp).toContain("default-src 'none'");
      expect(csp).toContain("frame-ancestors 'none'");
      expect(csp).not.toMatch(/unsafe-inline|unsafe-eval|https?:/);
      const html = await res.text();
      expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/); // no inline script
      expect(html).not.toMatch(/<style|style=/); // no inline style
      expect(html).not.toMatch(/https?:\/\//); // nothing from another origin
    }
    expect((await fetch(`${t.url}/console/assets/nope.js`)).status).toBe(404);
    const bare = await fetch(`${t.url}/console`, { redirect: 'manual' });
    expect(bare.status).toBe(301);
    expect(bare.headers.get('location')).toBe('/console/');
  });

  test('who is signed in: nobody, then the session as an identity with its roles', async () => {
    expect(await (await fetch(`${t.url}/console/api/session`)).json()).toEqual({ signedIn: false });
    const cookie = await session('admin');
    const res = await call(t.url, 'GET', '/console/api/session', asPerson(cookie));
    expect(res.status).toBe(200);
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(res.body).toMatchObject({ signedIn: true, identity: `${IDP}#admin`, admin: true, approver: true, subject: 'admin' });
  });

  test('the /v1 handlers answer for the session: same shapes, same access rules', async () => {
    await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
      taskId: 't-console-1',
      agent: agentId,
      tenant: 'acme',
      purpose: 'read',
      ttlSeconds: 600,
      grants: [{ role: 'demo-api' }],
    });
    const viaBearer = await call(t.url, 'GET', '/v1/tasks/t-console-1', t.as(ADMIN));
    const viaConsole = await call(t.url, 'GET', '/console/api/v1/tasks/t-console-1', asPerson(await session('admin')));
    expect(viaConsole.status).toBe(200);
    expect(viaConsole.body).toEqual(viaBearer.body);
    const nobody = await call(t.url, 'GET', '/console/api/v1/tasks/t-console-1', asPerson(await session('mallory')));
    expect(nobody.status).toBe(403);
    expect(nobody.body.code).toBe('not_task_party');
    const none = await call(t.url, 'GET', '/console/api/v1/tasks/t-console-1', {});
    expect(none.status).toBe(401);
    expect(none.body.code).toBe('console_signed_out');
    // A workload token is not a session: /console/api takes only the cookie.
    expect((await call(t.url, 'GET', '/console/api/v1/tasks/t-console-1', t.as(ADMIN))).status).toBe(401);
  });

  test('a quarantined person is refused on /console/api exactly as a quarantined workload on /v1', async () => {
    const cookie = await session('quarantined');
    expect((await call(t.url, 'GET', '/console/api/v1/tasks/t-console-1', asPerson(cookie))).body.code).toBe('not_task_party');
    const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: `${IDP}#quarantined`, reason: 'lost laptop' });
    expect(q.status).toBe(201);
    const refused = await call(t.url, 'GET', '/console/api/v1/tasks/t-console-1', asPerson(cookie));
    expect(refused.status).toBe(403);
    expect(refused.body.code).toBe('identity_quarantined');
  });

  test('state-changing calls need the console header and a same-origin fetch; reads do not', async () => {
    await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
      taskId: 't-console-csrf',
      agent: agentId,
      tenant: 'acme',
      purpose: 'deploy',
      ttlSeconds: 600,
      grants: [{ role: 'prod-deploy' }],
    });
    const { body: pending } = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-console-csrf', role: 'prod-deploy' });
    const cookie = await session('admin');
    const path = `/console/api/v1/approvals/${pending.approvalId}`;
    const noHeader = await call(t.url, 'POST', path, asPerson(cookie), { decision: 'approve' });
    expect(noHeader.status).toBe(403);
    expect(noHeader.body.code).toBe('console_csrf');
    // What a cross-site form sends: a simple content type, no custom header.
    const form = await fetch(`${t.url}${path}`, {
      method: 'POST',
      headers: { ...asPerson(cookie), 'content-type': 'application/x-www-form-urlencoded' },
      body: 'decision=approve',
    });
    expect(form.status).toBe(403);
    const crossSite = await call(t.url, 'POST', path, asPerson(cookie, { 'x-jit-console': '1', 'sec-fetch-site': 'cross-site' }), {
      decision: 'approve',
    });
    expect(crossSite.status).toBe(403);
    expect((await call(t.url, 'GET', `/v1/approvals/${pending.approvalId}`, t.as(ADMIN))).body.status).toBe('pending');
    const ok = await call(t.url, 'POST', path, asPerson(cookie, { 'x-jit-console': '1', 'sec-fetch-site': 'same-origin' }), {
      decision: 'approve',
      reason: 'change 7',
    });
    expect(ok.status).toBe(200);
    expect(ok.body).toMatchObject({ status: 'approved', decidedBy: `${IDP}#admin`, reason: 'change 7' });
  });

  test('a session ends at its expiry even if Redis still held it; signing out deletes it', async () => {
    const short = await session('admin', 300);
    expect((await call(t.url, 'GET', '/console/api/v1/tasks/t-console-1', asPerson(short))).status).toBe(200);
    await new Promise((r) => setTimeout(r, 400));
    expect((await call(t.url, 'GET', '/console/api/v1/tasks/t-console-1', asPerson(short))).status).toBe(401);

    const cookie = await session('admin');
    const out = await fetch(`${t.url}/console/api/session`, { method: 'DELETE', headers: asPerson(cookie, { 'x-jit-console': '1' }) });
    expect(out.status).toBe(204);
    expect(out.headers.get('set-cookie')).toMatch(new RegExp(`^${cookieName()}=;.*Expires=Thu, 01 Jan 1970`));
    expect((await call(t.url, 'GET', '/console/api/v1/tasks/t-console-1', asPerson(cookie))).status).toBe(401);
  });

  test('signing in again ends the session the browser held: it no longer answers, whatever becomes of the new sign-in', async () => {
    // Found from outside: a second sign-in replaced the cookie in the browser but left the old session live in Redis
    // until it expired, for whoever had copied that cookie (a shared browser, a person who suspected theirs).
    // (Started from the console's page, as the browser says; one that says nothing: test/console/signin-again.test.ts.)
    const cookie = await session('admin');
    const login = await fetch(`${t.url}/console/login`, {
      headers: asPerson(cookie, { 'sec-fetch-site': 'same-origin' }),
      redirect: 'manual',
    });
    expect([303, 502, 503]).toContain(login.status);
    expect(login.headers.get('set-cookie')).toMatch(new RegExp(`(^|, )${cookieName()}=;.*Expires=Thu, 01 Jan 1970`));
    expect((await call(t.url, 'GET', '/console/api/session', asPerson(cookie))).body).toEqual({ signedIn: false });
    // Without a session cookie, a sign-in starts as before and ends nothing.
    const fresh = await fetch(`${t.url}/console/login`, { redirect: 'manual' });
    expect(fresh.headers.get('set-cookie') ?? '').not.toMatch(new RegExp(`(^|, )${cookieName()}=`));
  });

  test('a sign-in started from another origin of the same site ends nothing: no logout by a sibling host', async () => {
    // Found in review: the session cookie is SameSite=Strict, which a sibling host (wiki.example.com beside
    // broker.example.com) is not kept from: its <img src=".../console/login"> carried the cookie and signed the
    // person out, past the same-origin check Sign out itself has (fromConsolePage).
    const cookie = await session('admin');
    for (const site of ['same-site', 'cross-site']) {
      const login = await fetch(`${t.url}/console/login`, { headers: asPerson(cookie, { 'sec-fetch-site': site }), redirect: 'manual' });
      expect([303, 502, 503]).toContain(login.status);
      expect(login.headers.get('set-cookie') ?? '').not.toMatch(new RegExp(`(^|, )${cookieName()}=`));
      expect((await call(t.url, 'GET', '/console/api/session', asPerson(cookie))).body).toMatchObject({ signedIn: true });
    }
    // From the console's own page, or typed in (the browser says `none`): the old session ends.
    const login = await fetch(`${t.url}/console/login`, { headers: asPerson(cookie, { 'sec-fetch-site': 'none' }), redirect: 'manual' });
    expect(login.headers.get('set-cookie')).toMatch(new RegExp(`(^|, )${cookieName()}=;.*Expires=Thu, 01 Jan 1970`));
    expect((await call(t.url, 'GET', '/console/api/session', asPerson(cookie))).body).toEqual({ signedIn: false });
  });

  test('a quarantined person can still sign out: the session ends instead of waiting for the quarantine to be lifted', async () => {
    // Found from outside: Sign out answered 403 identity_quarantined, the page said "signed out" all the same, and
    // the session lived on in Redis and in the browser: back the moment the quarantine was lifted, for whoever
    // sat at that browser next.
    const cookie = await session('left-the-team');
    const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: `${IDP}#left-the-team`, reason: 'left' });
    expect(q.status).toBe(201);
    const out = await fetch(`${t.url}/console/api/session`, { method: 'DELETE', headers: asPerson(cookie, { 'x-jit-console': '1' }) });
    expect(out.status).toBe(204);
    expect(out.headers.get('set-cookie')).toMatch(new RegExp(`^${cookieName()}=;.*Expires=Thu, 01 Jan 1970`));
    expect((await call(t.url, 'DELETE', `/v1/admin/quarantine/${encodeURIComponent(`${IDP}#left-the-team`)}`, t.as(ADMIN))).status).toBe(
      200,
    );
    expect((await call(t.url, 'GET', '/console/api/session', asPerson(cookie))).body).toEqual({ signedIn: false });
    // Still no sign-out from another site: the anti-CSRF header is needed as before.
    const other = await session('admin');
    expect((await fetch(`${t.url}/console/api/session`, { method: 'DELETE', headers: asPerson(other) })).status).toBe(403);
    expect((await call(t.url, 'GET', '/console/api/session', asPerson(other))).body.signedIn).toBe(true);
  });

  test("a person's ID token (audience: the console's client) is not a bearer identity on /v1; it still verifies for sign-in", async () => {
    // Found from outside: accepted as a bearer, it skipped the console's session bounds, sign-out and anti-CSRF header.
    const now = Math.floor(Date.now() / 1000);
    const token = (claims: Record<string, unknown>) =>
      issuer.signRaw({ alg: 'ES256', kid: issuer.kid }, { iss: IDP, sub: 'admin', exp: now + 300, iat: now, ...claims });
    const idToken = token({ aud: CLIENT_ID });
    const bearer = async (tok: string) => (await call(t.url, 'GET', '/v1/admin/quarantine', { authorization: `Bearer ${tok}` })).status;
    for (let i = 0; i < 2; i++) expect(await bearer(idToken)).toBe(401);
    // The client id among other audiences, or as the authorized party, is the console's too (found in review).
    expect(await bearer(token({ aud: [CLIENT_ID, 'jit-broker'] }))).toBe(401);
    expect(await bearer(token({ aud: 'jit-broker', azp: CLIENT_ID }))).toBe(401);
    // A token of the same provider for the broker is a bearer identity as before.
    expect(await bearer(token({ aud: 'jit-broker' }))).toBe(200);
    // What the console's callback does with the same token (after sign-in, it is not cached as a bearer either).
    expect((await t.broker.deps.verifier.verify(idToken, 'console-sign-in')).id).toBe(`${IDP}#admin`);
    expect((await call(t.url, 'GET', '/v1/admin/quarantine', { authorization: `Bearer ${idToken}` })).status).toBe(401);
  });

  test('sign-in fails with a clear page, never a 500: provider down, unknown state, missing browser cookie', async () => {
    const login = await fetch(`${t.url}/console/login?return=/console/tasks`, { redirect: 'manual' });
    expect(login.status).toBe(303);
    expect(login.headers.get('location')).toBe('/console/?signin_error=provider_unavailable');
    // No sign-in cookie: expired, used by an earlier callback, or started elsewhere.
    const unknown = await fetch(`${t.url}/console/callback?code=x&state=nope`, { redirect: 'manual' });
    expect(unknown.headers.get('location')).toBe('/console/?signin_error=state_unknown');
    const garbled = await fetch(`${t.url}/console/callback?code=x&state=nope`, {
      redirect: 'manual',
      headers: { cookie: `jit-console-login-${new URL(t.url).port}=not-a-pending-login` },
    });
    expect(garbled.headers.get('location')).toBe('/console/?signin_error=state_unknown');
    // This browser waits for another sign-in than the one the link finishes.
    const pending = encodePendingLogin({
      state: 'a'.repeat(43),
      nonce: 'n'.repeat(43),
      codeVerifier: 'v'.repeat(43),
      returnTo: '/console/tasks',
    });
    const otherState = await fetch(`${t.url}/console/callback?code=x&state=${'b'.repeat(43)}`, {
      redirect: 'manual',
      headers: { cookie: `jit-console-login-${new URL(t.url).port}=${pending}` },
    });
    expect(otherState.headers.get('location')).toBe('/console/?signin_error=browser_mismatch');
    const denied = await fetch(`${t.url}/console/callback?error=access_denied&state=s`, { redirect: 'manual' });
    expect(denied.headers.get('location')).toBe('/console/?signin_error=provider_error');
  });
});
