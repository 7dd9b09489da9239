import { createRemoteJWKSet, jwtVerify } from 'jose';
import { validateConfig } from '../../src/config/load.ts';
import {
  ADMIN,
  AGENT,
  ORCH,
  auditRecords,
  call,
  startTestBroker,
  testRawConfig,
  uniquePrefix,
  type TestBroker,
} from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';

/**
 * Contract section 4: a key rotation never breaks a resource server that
 * caches the JWKS as jose does (refetch on an unknown kid at most once per
 * cooldown). The new key is published `publishLeadSeconds` before it signs,
 * longer than the cooldown; the JWKS max-age is at most 60 s. The times are
 * scaled down here (jose's cooldown 1 s instead of 30 s, the lead 2 s instead
 * of 90 s); with no lead the same resource server fails, which shows the test
 * can tell.
 */
const brokers: TestBroker[] = [];
afterAll(async () => {
  for (const b of brokers) await b.close();
});

/** Verifies a fresh token every 50 ms for `ms` after a rotation; returns how many failed. */
async function failuresAcrossRotation(publishLeadSeconds: number, ms: number): Promise<{ ok: number; failed: number }> {
  const t = await startTestBroker('rotation-rs', {
    config: { providers: { jwt: { alg: 'ES256', retireGraceSeconds: 5, publishLeadSeconds } } },
  });
  brokers.push(t);
  await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-rs',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  const jwks = createRemoteJWKSet(new URL(`${t.url}/.well-known/jwks.json`), { cooldownDuration: 1000, cacheMaxAge: 60_000 });
  const verifyOne = async () => {
    const c = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-rs', role: 'demo-api', ttlSeconds: 60 });
    await jwtVerify(c.body.credentials.access_token, jwks, {
      issuer: t.config.server.publicUrl,
      audience: 'https://demo.internal',
      typ: 'at+jwt',
    });
  };
  await verifyOne(); // the resource server has fetched and cached the key set
  const r = await call(t.url, 'POST', '/v1/admin/rotate', t.as(ADMIN), { target: 'signing-key' });
  expect(r.status).toBe(202);
  let ok = 0;
  let failed = 0;
  for (const end = Date.now() + ms; Date.now() < end; ) {
    await verifyOne().then(
      () => ok++,
      () => failed++,
    );
    await new Promise((res) => setTimeout(res, 50));
  }
  return { ok, failed };
}

test('with the publish lead, a jose resource server accepts every token through a rotation', async () => {
  const { ok, failed } = await failuresAcrossRotation(2, 3500);
  expect(failed).toBe(0);
  expect(ok).toBeGreaterThan(20);
}, 30_000);

test('control: without a lead the same resource server rejects the new key until its cooldown ends', async () => {
  const { failed } = await failuresAcrossRotation(0, 600);
  expect(failed).toBeGreaterThan(0);
}, 30_000);

test('the defaults: 90 s lead, and a JWKS cacheable for at most 60 s', async () => {
  const c = validateConfig(testRawConfig(new TestIssuer(), uniquePrefix('x'), { providers: undefined }), {}, 'x.yaml');
  expect(c.providers.jwt.publishLeadSeconds).toBe(90);
  const t = brokers[0]!;
  const res = await fetch(`${t.url}/.well-known/jwks.json`);
  const maxAge = Number(/max-age=(\d+)/.exec(res.headers.get('cache-control') ?? '')?.[1]);
  expect(maxAge).toBeLessThanOrEqual(60);
});

test('an immediate rotation (a compromised key) signs with the new key at once and drops the old one, audited', async () => {
  const t = brokers[0]!;
  const before = (await (await fetch(`${t.url}/.well-known/jwks.json`)).json()) as { keys: { kid: string }[] };
  const r = await call(t.url, 'POST', '/v1/admin/rotate', t.as(ADMIN), { target: 'signing-key', immediate: true });
  expect(r.status).toBe(202);
  const after = (await (await fetch(`${t.url}/.well-known/jwks.json`)).json()) as { keys: { kid: string }[] };
  expect(after.keys.map((k) => k.kid)).toEqual([r.body.kid]);
  for (const k of before.keys) expect(after.keys.map((x) => x.kid)).not.toContain(k.kid);
  const c = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-rs', role: 'demo-api' });
  const header = JSON.parse(Buffer.from(c.body.credentials.access_token.split('.')[0], 'base64url').toString());
  expect(header.kid).toBe(r.body.kid);
  const audit = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter((x) => x.action === 'rotate');
  expect(audit.at(-1)).toMatchObject({ actor: `spiffe://dev.local${ADMIN}`, decision: 'ok', detail: { immediate: true } });
});
