import { AGENT, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';

/** 401s: RFC 6750 section 3.1 challenges and a fixed, non-secret reason in the problem. */

let t: TestBroker;
/** Tokens of a trust entry with `singleUse: true`. */
const once = new TestIssuer('once.local');
beforeAll(async () => {
  const issuer = new TestIssuer();
  t = await startTestBroker('auth-errors', {
    issuer,
    config: {
      trust: [
        { name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: issuer.bundle().keys } },
        {
          name: 'once',
          kind: 'spiffe',
          trustDomain: 'once.local',
          audiences: ['jit-broker'],
          jwks: { keys: once.bundle().keys },
          singleUse: true,
        },
      ],
    },
  });
});
afterAll(async () => {
  await t.close();
});

const now = () => Math.floor(Date.now() / 1000);

test('no credentials: WWW-Authenticate: Bearer without an error attribute', async () => {
  const r = await call(t.url, 'GET', '/v1/tasks/t-1', {});
  expect(r.status).toBe(401);
  expect(r.body).toMatchObject({ code: 'identity_missing', reason: 'missing', status: 401 });
  expect(r.headers.get('www-authenticate')).toBe('Bearer');
});

test('another authentication scheme counts as no credentials', async () => {
  const r = await call(t.url, 'GET', '/v1/tasks/t-1', { authorization: 'Basic dXNlcjpwYXNz' });
  expect(r.status).toBe(401);
  expect(r.headers.get('www-authenticate')).toBe('Bearer');
});

test.each([
  ['garbage', () => 'garbage', 'identity_invalid', 'malformed'],
  ['expired', () => t.issuer.svid(AGENT, { claims: { exp: now() - 600, iat: now() - 900 } }), 'identity_expired', 'expired'],
  ['wrong audience', () => t.issuer.svid(AGENT, { aud: ['other'] }), 'identity_invalid', 'audience'],
  [
    'unknown key',
    () => t.issuer.signRaw({ alg: 'ES256', kid: 'nope', typ: 'JWT' }, { sub: 'spiffe://dev.local/a', aud: 'jit-broker', exp: now() + 60 }),
    'identity_invalid',
    'unknown_key',
  ],
  ['lifetime', () => t.issuer.svid(AGENT, { claims: { iat: undefined, exp: now() + 10 * 365 * 86_400 } }), 'identity_invalid', 'lifetime'],
  ['not yet valid', () => t.issuer.svid(AGENT, { claims: { nbf: now() + 3600 } }), 'identity_invalid', 'not_yet_valid'],
])('bad token (%s): error="invalid_token" and a stable code and reason', async (_n, make, code, reason) => {
  const r = await call(t.url, 'GET', '/v1/tasks/t-1', { authorization: `Bearer ${make()}` });
  expect(r.status).toBe(401);
  expect(r.body).toMatchObject({ code, reason, status: 401 });
  expect(r.headers.get('www-authenticate')).toBe('Bearer error="invalid_token"');
  // Nothing about keys, trust entries or token contents comes back.
  expect(r.body.detail).not.toMatch(/kid|dev\.local|trust/i);
});

test('replayed token of a singleUse trust entry: identity_replayed', async () => {
  const token = once.svid(AGENT, { jti: true });
  expect((await call(t.url, 'GET', '/v1/tasks/t-1', { authorization: `Bearer ${token}` })).status).toBe(404);
  const r = await call(t.url, 'GET', '/v1/tasks/t-1', { authorization: `Bearer ${token}` });
  expect(r.body).toMatchObject({ code: 'identity_replayed', reason: 'replayed' });
});

test('introspection: no credentials vs a bad token', async () => {
  const intro = (headers: Record<string, string>) =>
    fetch(`${t.url}/v1/introspect`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
      body: new URLSearchParams({ token: 'x' }),
    });
  const none = await intro({});
  expect(none.status).toBe(401);
  expect(none.headers.get('www-authenticate')).toBe('Bearer');
  const bad = await intro({ authorization: 'Bearer a.b.c' });
  expect(bad.status).toBe(401);
  expect(bad.headers.get('www-authenticate')).toBe('Bearer error="invalid_token"');
});
