import { randomBytes } from 'node:crypto';
import { call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { CLIENT_ID, freePort } from '../console/stack.ts';

/**
 * Red team: /console/api calls without a live session were not limited at all. On /v1 a caller whose
 * token fails spends its address's unauthenticated budget (server.rateLimit.unauthenticated), and an
 * address over it is refused before anything is looked up; on the console's API a made-up session cookie
 * cost the broker a Redis read per call, answered 401 as often as it was sent (on the code this was
 * written against, 100 such calls in a row were 100 401s). Now a signed-out call spends the address's
 * budget as a failed authentication does, and an address over it is refused first (429).
 */
const issuer = new TestIssuer();
const IDP = 'https://people.example';
/** A broker with the console, whose unauthenticated budget (per address, in Redis) is its own. */
async function consoleBroker(name: string): Promise<TestBroker> {
  const port = await freePort();
  return startTestBroker(name, {
    issuer,
    config: {
      server: {
        port,
        publicUrl: `http://127.0.0.1:${port}`,
        rateLimit: { unauthenticated: { perSecond: 5, burst: 10 } },
      },
      trust: [
        { name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: issuer.bundle().keys } },
        { name: 'people', kind: 'oidc', issuer: IDP, audiences: [CLIENT_ID], jwks: { keys: [issuer.jwks().keys[0]] } },
      ],
      console: { issuer: IDP, clientId: CLIENT_ID },
    },
  });
}

// Each test its own broker: the first leaves this address over its budget.
let t: TestBroker;
afterEach(async () => {
  await t?.close();
});

test('made-up console sessions spend the address budget and meet a 429, as bad tokens on /v1 do', async () => {
  t = await consoleBroker('rt-console-signed-out');
  const statuses: number[] = [];
  let retryAfter: string | null = null;
  for (let i = 0; i < 60; i++) {
    // A well-formed session cookie nobody signed in for: each one would be looked up in Redis.
    const cookie = `jit-console-${new URL(t.url).port}=${randomBytes(32).toString('base64url')}`;
    const r = await call(t.url, 'GET', '/console/api/v1/tasks', { cookie });
    statuses.push(r.status);
    if (r.status === 429) retryAfter ??= r.headers.get('retry-after');
  }
  expect(statuses[0]).toBe(401);
  expect(statuses).toContain(429);
  expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);
  // The page's own "who is signed in" question stays an answer, even from an address over its budget.
  const who = await call(t.url, 'GET', '/console/api/session', {});
  expect({ status: who.status, body: who.body }).toEqual({ status: 200, body: { signedIn: false } });
});

test('made-up sessions on state-changing calls without the console header (403 console_csrf) spend it too', async () => {
  t = await consoleBroker('rt-console-csrf-signed-out');
  const statuses: number[] = [];
  for (let i = 0; i < 60; i++) {
    const cookie = `jit-console-${new URL(t.url).port}=${randomBytes(32).toString('base64url')}`;
    const r = await call(t.url, 'POST', '/console/api/v1/tasks', { cookie }, {});
    statuses.push(r.status);
  }
  expect(statuses).toContain(429);
  expect(statuses.filter((s) => s !== 429 && s !== 403)).toEqual([]);
});
