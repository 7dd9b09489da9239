import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import { ConsoleSessionStore } from '../../src/console/sessions.ts';
import { Keys } from '../../src/redis/keys.ts';
import { REDIS_URL, auditRecords, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { CLIENT_ID, freePort } from '../console/stack.ts';

/**
 * Red team: the console's sign-in endpoints and its API, from the network and
 * from a signed-in person. On the code it was written against, every
 * /console/login stored a pending sign-in in Redis for 10 minutes with no
 * limit, console API calls spent no rate limit, and a CSRF refusal left no
 * audit record.
 */
const issuer = new TestIssuer();
let idp: Server;
let IDP: string;
let t: TestBroker;
let redis: Redis;

beforeAll(async () => {
  // Just enough of an OpenID provider for discovery: /console/login never gets further.
  idp = createServer((req, res) => {
    if (req.url === '/.well-known/openid-configuration') {
      res.setHeader('content-type', 'application/json');
      res.end(
        JSON.stringify({
          issuer: IDP,
          authorization_endpoint: `${IDP}/auth`,
          token_endpoint: `${IDP}/token`,
          jwks_uri: `${IDP}/jwks`,
          response_types_supported: ['code'],
          subject_types_supported: ['public'],
          id_token_signing_alg_values_supported: ['ES256'],
          code_challenge_methods_supported: ['S256'],
        }),
      );
    } else {
      res.statusCode = 404;
      res.end();
    }
  });
  await new Promise<void>((r) => idp.listen(0, '127.0.0.1', r));
  IDP = `http://127.0.0.1:${(idp.address() as AddressInfo).port}`;
  const port = await freePort();
  t = await startTestBroker('rt-console', {
    issuer,
    config: {
      server: {
        port,
        publicUrl: `http://127.0.0.1:${port}`,
        rateLimit: { perSecond: 5, burst: 5, unauthenticated: { perSecond: 5, burst: 10 } },
      },
      trust: [
        { name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: issuer.bundle().keys } },
        { name: 'people', kind: 'oidc', issuer: IDP, audiences: [CLIENT_ID], jwks: { keys: [issuer.jwks().keys[0]] } },
      ],
      console: { issuer: IDP, clientId: CLIENT_ID },
    },
  });
  redis = new Redis(REDIS_URL);
});
afterAll(async () => {
  redis.disconnect();
  await t.close();
  await new Promise((r) => idp.close(r));
});

test("a signed-in person's console API calls spend the identity's rate limit, as every authenticated route does", async () => {
  const store = new ConsoleSessionStore({ redis: t.broker.deps.redis, keys: new Keys(t.prefix) });
  const expiresAt = Date.now() + 60_000;
  const cookie = await store.create({
    identity: {
      id: `${IDP}#mallory`,
      trust: 'people',
      kind: 'oidc',
      claims: { iss: IDP, sub: 'mallory' },
      exp: Math.floor(expiresAt / 1000),
    },
    createdAt: Date.now(),
    expiresAt,
  });
  const headers = { cookie: `jit-console-${new URL(t.url).port}=${cookie}` };
  const statuses: number[] = [];
  for (let i = 0; i < 40; i++) statuses.push((await call(t.url, 'GET', '/console/api/v1/approvals', headers)).status);
  expect(statuses[0]).toBe(200);
  // perSecond 5, burst 5: 40 calls in well under a few seconds must meet a 429.
  expect(statuses).toContain(429);
});

test('a cross-site (CSRF) attempt on a signed-in person is an audit record, like every other denial', async () => {
  const store = new ConsoleSessionStore({ redis: t.broker.deps.redis, keys: new Keys(t.prefix) });
  const expiresAt = Date.now() + 60_000;
  const cookie = await store.create({
    identity: {
      id: `${IDP}#victim`,
      trust: 'people',
      kind: 'oidc',
      claims: { iss: IDP, sub: 'victim' },
      exp: Math.floor(expiresAt / 1000),
    },
    createdAt: Date.now(),
    expiresAt,
  });
  // What a cross-site form posts with the victim's cookie (were it sent): no console header.
  const res = await fetch(`${t.url}/console/api/v1/admin/quarantine`, {
    method: 'POST',
    headers: { cookie: `jit-console-${new URL(t.url).port}=${cookie}`, 'content-type': 'text/plain' },
    body: '{"agent":"spiffe://dev.local/agent/x","reason":"csrf"}',
  });
  expect(res.status).toBe(403);
  await t.broker.deps.audit.flush();
  const records = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter((r) => r.reason === 'console_csrf');
  expect(records.length).toBeGreaterThan(0);
  expect(records[0]).toMatchObject({ actor: `${IDP}#victim`, action: 'access.deny', decision: 'deny' });
});

// Last: it leaves this test's address over its unauthenticated budget, which /console/api honours too.
test('an unauthenticated flood of /console/login is limited per address, not one Redis key per request for 10 minutes', async () => {
  const statuses: number[] = [];
  let retryAfter: string | null = null;
  for (let i = 0; i < 200; i++) {
    const res = await fetch(`${t.url}/console/login`, { redirect: 'manual' });
    statuses.push(res.status);
    if (res.status === 429) retryAfter ??= res.headers.get('retry-after');
    await res.arrayBuffer();
  }
  expect(statuses[0]).toBe(303); // sign-in itself works
  expect(statuses).toContain(429); // the address's unauthenticated budget
  expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);
  const pending = (await redis.keys(`${t.prefix}:console:login:*`)).length;
  // server.rateLimit.unauthenticated is 5/s, burst 10 here: a few dozen at most, not 200 keys living ~600 s each.
  expect(pending).toBeLessThan(50);
});
