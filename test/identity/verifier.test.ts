import { createHmac, generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import { IdentityVerifier } from '../../src/identity/verifier.ts';
import { BrokerError } from '../../src/errors.ts';
import { silentLogger } from '../../src/logger.ts';
import { Keys } from '../../src/redis/keys.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { dropPrefix, REDIS_URL, testConfig, uniquePrefix } from '../helpers/broker.ts';

const issuer = new TestIssuer('dev.local');
const oidcIssuer = new TestIssuer('unused');
const prefix = uniquePrefix('identity');
let redis: Redis;
let verifier: IdentityVerifier;

const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
const now = () => Math.floor(Date.now() / 1000);

beforeAll(async () => {
  redis = new Redis(REDIS_URL);
  const config = testConfig(issuer, prefix, {
    trust: [
      { name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: issuer.bundle().keys } },
      { name: 'ci', kind: 'oidc', issuer: 'https://ci.example', audiences: ['jit-broker'], jwks: { keys: oidcIssuer.jwks().keys } },
    ],
  });
  verifier = new IdentityVerifier(config, { redis, keys: new Keys(prefix), logger: silentLogger, cacheMs: 0 });
  await verifier.init();
});

afterAll(async () => {
  await dropPrefix(prefix);
  await redis.quit();
});

async function codeOf(token: string | undefined): Promise<string> {
  try {
    await verifier.verify(token);
    return 'ok';
  } catch (err) {
    if (err instanceof BrokerError) {
      expect(err.status).toBe(401);
      return err.code;
    }
    throw err;
  }
}

describe('workload identity verification', () => {
  const attacker = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const valid = () => ({ sub: 'spiffe://dev.local/agent/support', aud: ['jit-broker'], exp: now() + 300, iat: now() });
  const header = () => ({ alg: 'ES256', kid: issuer.kid, typ: 'JWT' });

  const cases: [string, () => string | undefined, string][] = [
    ['a valid JWT-SVID', () => issuer.svid('/agent/support'), 'ok'],
    ['a valid SVID with a single string aud', () => issuer.svid('/agent/support', { aud: 'jit-broker' }), 'ok'],
    ['no token', () => undefined, 'identity_missing'],
    ['not a JWT', () => 'not.a.jwt', 'identity_invalid'],
    ['alg none', () => `${b64({ alg: 'none', kid: issuer.kid })}.${b64(valid())}.`, 'identity_invalid'],
    [
      'HS256 signed with the public key as secret',
      () => {
        const input = `${b64({ alg: 'HS256', kid: issuer.kid })}.${b64(valid())}`;
        const secret = JSON.stringify(issuer.publicJwk);
        return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
      },
      'identity_invalid',
    ],
    ['unknown kid', () => issuer.signRaw({ ...header(), kid: 'nope' }, valid()), 'identity_invalid'],
    ['missing kid', () => issuer.signRaw({ alg: 'ES256' }, valid()), 'identity_invalid'],
    [
      'jku header pointing elsewhere',
      () => issuer.signRaw({ ...header(), jku: 'https://evil.example/jwks' }, valid(), attacker),
      'identity_invalid',
    ],
    ['embedded jwk header', () => issuer.signRaw({ ...header(), jwk: { kty: 'EC' } }, valid(), attacker), 'identity_invalid'],
    ['x5u header', () => issuer.signRaw({ ...header(), x5u: 'https://evil.example/cert' }, valid()), 'identity_invalid'],
    ['signed by an attacker key with the right kid', () => issuer.signRaw(header(), valid(), attacker), 'identity_invalid'],
    ['wrong trust domain', () => issuer.signRaw(header(), { ...valid(), sub: 'spiffe://evil.example/agent/support' }), 'identity_invalid'],
    [
      'malformed SPIFFE ID (dot segment)',
      () => issuer.signRaw(header(), { ...valid(), sub: 'spiffe://dev.local/agent/../ops' }),
      'identity_invalid',
    ],
    [
      'malformed SPIFFE ID (uppercase trust domain)',
      () => issuer.signRaw(header(), { ...valid(), sub: 'spiffe://DEV.local/agent' }),
      'identity_invalid',
    ],
    [
      'malformed SPIFFE ID (trailing slash)',
      () => issuer.signRaw(header(), { ...valid(), sub: 'spiffe://dev.local/agent/' }),
      'identity_invalid',
    ],
    ['expired', () => issuer.signRaw(header(), { ...valid(), exp: now() - 120 }), 'identity_expired'],
    ['expired but within the 30 s clock skew', () => issuer.signRaw(header(), { ...valid(), exp: now() - 5 }), 'ok'],
    ['nbf in the future', () => issuer.signRaw(header(), { ...valid(), nbf: now() + 600 }), 'identity_invalid'],
    ['iat in the future', () => issuer.signRaw(header(), { ...valid(), iat: now() + 600 }), 'identity_invalid'],
    [
      'missing aud',
      () => {
        const { aud: _a, ...c } = valid();
        return issuer.signRaw(header(), c);
      },
      'identity_invalid',
    ],
    ['wrong aud', () => issuer.signRaw(header(), { ...valid(), aud: ['someone-else'] }), 'identity_invalid'],
    [
      'missing exp',
      () => {
        const { exp: _e, ...c } = valid();
        return issuer.signRaw(header(), c);
      },
      'identity_invalid',
    ],
    ['typ not JWT/JOSE', () => issuer.signRaw({ ...header(), typ: 'at+jwt' }, valid()), 'identity_invalid'],
    [
      'tampered payload',
      () => {
        const [h, , s] = issuer.svid('/agent/support').split('.');
        return `${h}.${b64({ ...valid(), sub: 'spiffe://dev.local/ops/root' })}.${s}`;
      },
      'identity_invalid',
    ],
    [
      'lifetime longer than allowed',
      () => issuer.signRaw(header(), { ...valid(), iat: now() - 10, exp: now() + 2 * 86_400 }),
      'identity_invalid',
    ],
    [
      'valid OIDC token',
      () =>
        oidcIssuer.signRaw(
          { alg: 'ES256', kid: oidcIssuer.kid },
          { iss: 'https://ci.example', sub: 'repo:acme/app', aud: 'jit-broker', exp: now() + 60 },
        ),
      'ok',
    ],
    [
      'OIDC token from an unknown issuer',
      () =>
        oidcIssuer.signRaw(
          { alg: 'ES256', kid: oidcIssuer.kid },
          { iss: 'https://other.example', sub: 'x', aud: 'jit-broker', exp: now() + 60 },
        ),
      'identity_invalid',
    ],
    [
      'OIDC token signed by the SPIFFE key',
      () => issuer.signRaw({ alg: 'ES256', kid: issuer.kid }, { iss: 'https://ci.example', sub: 'x', aud: 'jit-broker', exp: now() + 60 }),
      'identity_invalid',
    ],
  ];

  test.each(cases)('%s', async (_name, make, expected) => {
    expect(await codeOf(make())).toBe(expected);
  });

  test('a token with a jti is accepted once, then rejected as a replay', async () => {
    const token = issuer.svid('/agent/support', { jti: true });
    expect(await codeOf(token)).toBe('ok');
    expect(await codeOf(token)).toBe('identity_replayed');
  });

  test('the identity carries the SPIFFE ID, trust entry and string claims', async () => {
    const id = await verifier.verify(issuer.svid('/agent/support', { claims: { tenant: 'acme', n: 5 } }));
    expect(id).toMatchObject({ id: 'spiffe://dev.local/agent/support', trust: 'dev', kind: 'spiffe' });
    expect(id.claims.tenant).toBe('acme');
    expect(id.claims.n).toBeUndefined();
  });

  test('OIDC identity string is <issuer>#<sub>', async () => {
    const id = await verifier.verify(
      oidcIssuer.signRaw(
        { alg: 'ES256', kid: oidcIssuer.kid },
        { iss: 'https://ci.example', sub: 'repo:acme/app', aud: 'jit-broker', exp: now() + 60 },
      ),
    );
    expect(id.id).toBe('https://ci.example#repo:acme/app');
    expect(id.kind).toBe('oidc');
  });
});

describe('JWKS from a URI', () => {
  let server: Server;
  let fetches = 0;
  let keys: Record<string, unknown>[] = [];
  const rotating = new TestIssuer('remote.test');

  beforeAll(async () => {
    server = createServer((_req, res) => {
      fetches += 1;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ keys }));
    });
    server.listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
  });
  afterAll(() => new Promise((r) => server.close(r)));

  test('refetches on an unknown kid (key rotation) but at most once per cooldown', async () => {
    const port = (server.address() as AddressInfo).port;
    const p = uniquePrefix('jwks');
    const config = testConfig(rotating, p, {
      trust: [
        {
          name: 'remote',
          kind: 'spiffe',
          trustDomain: 'remote.test',
          audiences: ['jit-broker'],
          jwks: { uri: `http://127.0.0.1:${port}/bundle` },
        },
      ],
      identity: { clockSkewSeconds: 30, maxTokenLifetimeSeconds: 86_400, jwksCacheSeconds: 300, jwksRefetchCooldownSeconds: 1 },
    });
    keys = [];
    const v = new IdentityVerifier(config, { redis, keys: new Keys(p), logger: silentLogger, cacheMs: 0 });
    await v.init();
    await new Promise((r) => setTimeout(r, 1100)); // past the cooldown that init's own fetch started
    const before = fetches;
    // Unknown kid: one refetch, still nothing, rejected.
    await expect(v.verify(rotating.svid('/w'))).rejects.toMatchObject({ code: 'identity_invalid' });
    // A flood of unknown kids within the cooldown triggers no more fetches.
    for (let i = 0; i < 5; i++)
      await expect(
        v.verify(
          rotating.signRaw({ alg: 'ES256', kid: randomUUID() }, { sub: 'spiffe://remote.test/w', aud: 'jit-broker', exp: now() + 60 }),
        ),
      ).rejects.toBeTruthy();
    expect(fetches - before).toBe(1);
    // The issuer publishes its key; after the cooldown the next unknown kid refetches and it verifies.
    keys = rotating.bundle().keys;
    await new Promise((r) => setTimeout(r, 1100));
    await expect(v.verify(rotating.svid('/w'))).resolves.toMatchObject({ id: 'spiffe://remote.test/w' });
    expect(fetches - before).toBe(2);
  });
});
