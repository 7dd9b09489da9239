import { call, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';

// An address over its authentication-failure budget is refused before routing.
// Only the OAuth endpoints themselves (POST /v1/token, POST /v1/introspect, as
// Express routes them) answer in the RFC 6749 shape; every other method and
// path answers a problem, as it does when not blocked (the document's NoSuchRoute).

let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('oas-blocked', {
    config: {
      server: {
        port: 0,
        publicUrl: 'http://127.0.0.1:8080',
        rateLimit: { unauthenticated: { perSecond: 1, burst: 1 } },
      },
    },
  });
  // Bad tokens at once: past the first, over the budget (1 a second), which blocks this address. Sent together,
  // not one after the other: on a loaded machine two sequential calls could be a second apart (a flake seen in CI).
  await Promise.all(Array.from({ length: 4 }, () => call(t.url, 'GET', '/v1/tasks', { authorization: 'Bearer not-a-jwt' })));
  // Blocked once the failures are counted (a CI run under heavy load saw the first two cases answered before).
  await waitFor(async () => (await call(t.url, 'GET', '/v1/tasks', { authorization: 'Bearer not-a-jwt' })).status === 429, 10_000, 50);
});
afterAll(async () => {
  await t?.close();
});

test.each([
  ['POST', '/v1/token', 'oauth'],
  ['POST', '/V1/Introspect/', 'oauth'],
  ['POST', '/v1/token//', 'problem'],
  ['GET', '/v1/token', 'problem'],
  ['PUT', '/v1/introspect', 'problem'],
  ['GET', '/v1/tasks', 'problem'],
])('%s %s from a blocked address: 429 as %s', async (method, path, shape) => {
  const res = await call(t.url, method, path, {});
  expect(res.status).toBe(429);
  expect(Number(res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
  if (shape === 'oauth') {
    expect(res.body).toMatchObject({ error: 'slow_down' });
  } else {
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(res.body).toMatchObject({ status: 429, code: 'rate_limited' });
  }
});
