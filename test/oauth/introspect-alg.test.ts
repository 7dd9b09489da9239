import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Introspection picks the verification from the key, never from the token's header. Found from
 * outside: with `providers.jwt.alg: EdDSA`, a token whose header claimed ES256 over the broker's
 * Ed25519 kid made node:crypto throw ("invalid digest") and the caller got a 500.
 */
describe.each(['EdDSA', 'ES256'] as const)('a broker signing with %s', (alg) => {
  let t: TestBroker;
  let kid: string;
  beforeAll(async () => {
    t = await startTestBroker(`introspect-alg-${alg}`, {
      config: {
        providers: { jwt: { alg } },
        roles: { 'tickets-api': { provider: 'jwt', audience: 'https://tickets.internal', maxTtlSeconds: 300 } },
      },
    });
    const jwks = (await (await fetch(`${t.url}/.well-known/jwks.json`)).json()) as { keys: { kid: string }[] };
    kid = jwks.keys[0]!.kid;
  });
  afterAll(async () => {
    await t?.close();
  });

  const introspect = async (token: string) => {
    const res = await fetch(`${t.url}/v1/introspect`, {
      method: 'POST',
      headers: { ...t.as('/resource/tickets'), 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }),
    });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');

  test.each(['ES256', 'EdDSA', 'RS256', 'none'])('a token claiming %s over its key is inactive, never a 500', async (claimed) => {
    for (const sigBytes of [64, 0, 72, 1]) {
      const token = `${b64({ typ: 'at+jwt', alg: claimed, kid })}.${b64({})}.${Buffer.alloc(sigBytes, 1).toString('base64url')}`;
      expect(await introspect(token)).toEqual({ status: 200, body: { active: false } });
    }
  });

  test('its own tokens introspect active', async () => {
    const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
      taskId: `ia-${alg}`,
      agent: `spiffe://dev.local${AGENT}`,
      tenant: 'acme',
      purpose: 'p',
      ttlSeconds: 600,
      grants: [{ role: 'tickets-api' }],
    });
    expect(open.status).toBe(201);
    const c = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: `ia-${alg}`, role: 'tickets-api' });
    expect(c.status).toBe(201);
    expect(JSON.parse(Buffer.from(c.body.credentials.access_token.split('.')[0], 'base64url').toString()).alg).toBe(alg);
    expect((await introspect(c.body.credentials.access_token)).body.active).toBe(true);
  });
});
