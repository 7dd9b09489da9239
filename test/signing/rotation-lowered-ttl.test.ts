import { createRemoteJWKSet, jwtVerify } from 'jose';
import { validateConfig } from '../../src/config/load.ts';
import {
  ADMIN,
  AGENT,
  ORCH,
  call,
  dropPrefix,
  startTestBroker,
  testRawConfig,
  uniquePrefix,
  type TestBroker,
  waitFor,
} from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';

/**
 * Contract section 4: a rotation never breaks a resource server, whatever the
 * jwt role TTLs were when the old key signed. The rotated-out key used to be
 * retired at activation + the rotating instance's CURRENT longest jwt TTL (at
 * least 60 s) + retireGraceSeconds: after a restart that lowered a role's
 * maxTtlSeconds, a rotation dropped the key of tokens issued before (with the
 * old, longer TTL) from the JWKS, and introspection answered inactive, long
 * before their `exp`. Real broker, real time, scaled down: 75 s tokens, then a
 * restart with 5 s, grace 2 s, no publish lead; before the fix the old key was
 * gone 62 s after the rotation, with ~13 s left on the token.
 */
const GRACE_S = 2;
const issuer = new TestIssuer();
const prefix = uniquePrefix('lowered-ttl');
const raw = testRawConfig(issuer, prefix, {
  providers: { jwt: { alg: 'ES256', retireGraceSeconds: GRACE_S, publishLeadSeconds: 0 } },
});
const withTtl = (maxTtlSeconds: number) =>
  validateConfig({ ...raw, roles: { 'demo-api': { provider: 'jwt', audience: 'https://demo.internal', maxTtlSeconds } } }, {}, 'test.yaml');

let running: TestBroker | undefined;
afterAll(async () => {
  await running?.broker.close();
  await dropPrefix(prefix);
});

const sleepUntil = (at: number) => new Promise((r) => setTimeout(r, Math.max(0, at - Date.now())));

test('a rotation after lowering a jwt TTL keeps the old key until the tokens it signed have expired', async () => {
  // 1. An instance with a 75 s TTL signs a 75 s token.
  const before = await startTestBroker('lowered-ttl', { loaded: withTtl(75), prefix, issuer });
  running = before;
  await call(before.url, 'POST', '/v1/tasks', before.as(ORCH), {
    taskId: 't-low',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  const issued = await call(before.url, 'POST', '/v1/credentials', before.as(AGENT), { taskId: 't-low', role: 'demo-api', ttlSeconds: 75 });
  expect(issued.status).toBe(201);
  const token: string = issued.body.credentials.access_token;
  const { kid: oldKid } = JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString()) as { kid: string };
  const { exp } = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { exp: number };

  // 2. Restarted with the TTL lowered to 5 s; it rotates at once.
  await before.broker.close();
  running = undefined;
  const after = await startTestBroker('lowered-ttl', { loaded: withTtl(5), prefix, issuer });
  running = after;
  const r = await call(after.url, 'POST', '/v1/admin/rotate', after.as(ADMIN), { target: 'signing-key' });
  expect(r.status).toBe(202);
  const rotatedAt = Date.now();

  const check = async () => {
    const jwks = (await (await fetch(`${after.url}/.well-known/jwks.json`)).json()) as { keys: { kid: string }[] };
    const res = await fetch(`${after.url}/v1/introspect`, {
      method: 'POST',
      headers: { ...after.as('/resource/demo'), 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }),
    });
    const verified = await jwtVerify(token, createRemoteJWKSet(new URL(`${after.url}/.well-known/jwks.json`)), {
      issuer: after.config.server.publicUrl,
      audience: 'https://demo.internal',
      typ: 'at+jwt',
    }).then(
      () => true,
      () => false,
    );
    return { published: jwks.keys.some((k) => k.kid === oldKid), active: ((await res.json()) as { active: boolean }).active, verified };
  };

  // 3. Past the old rule's retirement (activation + 60 s + grace): the 75 s token still has ~10 s left.
  await sleepUntil(rotatedAt + (60 + GRACE_S + 1) * 1000);
  expect(Date.now()).toBeLessThan(exp * 1000 - 3000);
  expect(await check()).toEqual({ published: true, active: true, verified: true });

  // 4. Just before its exp: still good; until exp + grace its key stays in the JWKS.
  await sleepUntil(exp * 1000 - 1500);
  expect(await check()).toEqual({ published: true, active: true, verified: true });
  await sleepUntil(exp * 1000 + GRACE_S * 1000 - 500);
  expect((await check()).published).toBe(true);

  // 5. And then it leaves (activation + the 75 s it could have signed + grace): by then at the latest, looked for
  // from the moment it may (not slept out to that latest moment).
  const leftBy = rotatedAt + (75 + GRACE_S + 2) * 1000;
  await waitFor(async () => !(await check()).published, Math.max(0, leftBy - Date.now()), 200).catch(() => undefined);
  expect((await check()).published).toBe(false);
}, 150_000);
