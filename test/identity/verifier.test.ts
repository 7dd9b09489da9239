import { createHash, createHmac, generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import { IdentityVerifier } from '../../src/identity/verifier.ts';
import { BrokerError } from '../../src/errors.ts';
import { silentLogger, type Logger } from '../../src/logger.ts';
import { Keys } from '../../src/redis/keys.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { dropPrefix, REDIS_URL, testConfig, uniquePrefix } from '../helpers/broker.ts';

const issuer = new TestIssuer('dev.local');
const oidcIssuer = new TestIssuer('unused');
const prefix = uniquePrefix('identity');
/** An issuer whose trust entry sets `singleUse: true`. */
const ONCE = 'https://once.example';
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
      {
        name: 'once',
        kind: 'oidc',
        issuer: ONCE,
        audiences: ['jit-broker'],
        jwks: { keys: oidcIssuer.jwks().keys },
        singleUse: true,
      },
    ],
  });
  verifier = new IdentityVerifier(config, { redis, keys: new Keys(prefix), logger: silentLogger, cacheMs: 0 });
  await verifier.init();
});

afterAll(async () => {
  await dropPrefix(prefix);
  await redis.quit();
});

async function codeOf(token: string | undefined, v: IdentityVerifier = verifier): Promise<string> {
  try {
    await v.verify(token);
    return 'ok';
  } catch (err) {
    if (err instanceof BrokerError) {
      expect(err.status).toBe(401);
      return err.code;
    }
    throw err;
  }
}

/** The fixed, non-secret `reason` member of the 401 problem (undefined when accepted). */
async function reasonOf(token: string | undefined): Promise<string | undefined> {
  try {
    await verifier.verify(token);
    return undefined;
  } catch (err) {
    if (!(err instanceof BrokerError)) throw err;
    return err.extra?.reason as string;
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

  // Each refusal says which check failed, as a fixed word (contract: 401 for all of them).
  const reasons: [string, () => string | undefined, string, string][] = [
    ['no token', () => undefined, 'identity_missing', 'missing'],
    ['not a JWT', () => 'not.a.jwt', 'identity_invalid', 'malformed'],
    ['alg none', () => `${b64({ alg: 'none', kid: issuer.kid })}.${b64(valid())}.`, 'identity_invalid', 'malformed'],
    ['unknown kid', () => issuer.signRaw({ ...header(), kid: 'nope' }, valid()), 'identity_invalid', 'unknown_key'],
    ['attacker key, right kid', () => issuer.signRaw(header(), valid(), attacker), 'identity_invalid', 'signature'],
    ['wrong aud', () => issuer.signRaw(header(), { ...valid(), aud: ['someone-else'] }), 'identity_invalid', 'audience'],
    ['expired', () => issuer.signRaw(header(), { ...valid(), exp: now() - 120 }), 'identity_expired', 'expired'],
    ['nbf in the future', () => issuer.signRaw(header(), { ...valid(), nbf: now() + 600 }), 'identity_invalid', 'not_yet_valid'],
    ['iat in the future', () => issuer.signRaw(header(), { ...valid(), iat: now() + 600 }), 'identity_invalid', 'not_yet_valid'],
    [
      'lifetime (exp - iat) too long',
      () => issuer.signRaw(header(), { ...valid(), iat: now() - 10, exp: now() + 2 * 86_400 }),
      'identity_invalid',
      'lifetime',
    ],
    [
      'unknown trust domain',
      () => issuer.signRaw(header(), { ...valid(), sub: 'spiffe://evil.example/agent/support' }),
      'identity_invalid',
      'untrusted',
    ],
    [
      'non-canonical SPIFFE ID',
      () => issuer.signRaw(header(), { ...valid(), sub: 'SPIFFE://dev.local/agent/support' }),
      'identity_invalid',
      'subject',
    ],
  ];
  test.each(reasons)('refusal reason: %s', async (_name, make, code, reason) => {
    const token = make();
    expect(await codeOf(token)).toBe(code);
    expect(await reasonOf(token)).toBe(reason);
  });

  test('a token with a jti is a bearer token like any other: accepted on every call', async () => {
    const token = issuer.svid('/agent/support', { jti: true });
    expect(await codeOf(token)).toBe('ok');
    expect(await codeOf(token)).toBe('ok');
    expect(await codeOf(token)).toBe('ok');
    expect(await redis.keys(`${prefix}:jti:*`)).toEqual([]);
  });

  test('singleUse: true: a token is accepted once, then rejected as a replay', async () => {
    const token = oidcIssuer.signRaw(
      { alg: 'ES256', kid: oidcIssuer.kid },
      { iss: ONCE, sub: 'job-1', aud: 'jit-broker', iat: now(), exp: now() + 60, jti: randomUUID() },
    );
    expect(await codeOf(token)).toBe('ok');
    expect(await codeOf(token)).toBe('identity_replayed');
    expect(await reasonOf(token)).toBe('replayed');
  });

  test('singleUse: true: a token without a jti is refused (it could not be held to one use)', async () => {
    const token = oidcIssuer.signRaw(
      { alg: 'ES256', kid: oidcIssuer.kid },
      { iss: ONCE, sub: 'job-1', aud: 'jit-broker', exp: now() + 60 },
    );
    expect(await codeOf(token)).toBe('identity_invalid');
    expect(await reasonOf(token)).toBe('malformed');
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

  test('an OIDC sub ending in /* is refused: its identity would read as a pattern of every identity below it', async () => {
    // Found from outside: an agent `https://ci.example#team/*` had a console page whose Revoke all and Quarantine
    // (both take an identity pattern) stopped every agent of the team, and whose task list showed theirs as its own.
    const token = (sub: string) =>
      oidcIssuer.signRaw({ alg: 'ES256', kid: oidcIssuer.kid }, { iss: 'https://ci.example', sub, aud: 'jit-broker', exp: now() + 60 });
    expect(await codeOf(token('team/*'))).toBe('identity_invalid');
    expect(await reasonOf(token('team/*'))).toBe('subject');
    expect(await codeOf(token('team/*x'))).toBe('ok');
    expect(await codeOf(token('*'))).toBe('ok');
  });
});

describe('token lifetime and numeric dates', () => {
  const header = () => ({ alg: 'ES256', kid: issuer.kid, typ: 'JWT' });
  const sub = 'spiffe://dev.local/agent/support';
  const tenYears = 10 * 365 * 86_400;

  const cases: [string, () => Record<string, unknown>, string][] = [
    // Without iat the lifetime is exp - now: a token valid for ten years is refused.
    ['no iat, exp ten years out', () => ({ sub, aud: 'jit-broker', exp: now() + tenYears }), 'identity_invalid'],
    ['no iat, exp one day + 1 h out', () => ({ sub, aud: 'jit-broker', exp: now() + 86_400 + 3600 }), 'identity_invalid'],
    ['no iat, exp within the maximum', () => ({ sub, aud: 'jit-broker', exp: now() + 3600 }), 'ok'],
    ['iat, exp - iat within the maximum', () => ({ sub, aud: 'jit-broker', iat: now() - 60, exp: now() + 3600 }), 'ok'],
    ['old iat makes exp - iat too long', () => ({ sub, aud: 'jit-broker', iat: now() - 86_400, exp: now() + 60 }), 'identity_invalid'],
    ['exp 1e16 with a jti', () => ({ sub, aud: 'jit-broker', exp: 1e16, jti: randomUUID() }), 'identity_invalid'],
    ['exp 1e16 without iat or jti', () => ({ sub, aud: 'jit-broker', exp: 1e16 }), 'identity_invalid'],
    ['exp 1e300', () => ({ sub, aud: 'jit-broker', iat: now(), exp: 1e300 }), 'identity_invalid'],
    ['non-integer exp', () => ({ sub, aud: 'jit-broker', iat: now(), exp: now() + 60.5 }), 'identity_invalid'],
    ['non-integer exp with a jti', () => ({ sub, aud: 'jit-broker', exp: now() + 60.25, jti: randomUUID() }), 'identity_invalid'],
    ['negative iat', () => ({ sub, aud: 'jit-broker', iat: -1, exp: now() + 60 }), 'identity_invalid'],
    ['non-integer iat', () => ({ sub, aud: 'jit-broker', iat: now() - 0.5, exp: now() + 60 }), 'identity_invalid'],
    ['string exp', () => ({ sub, aud: 'jit-broker', exp: String(now() + 60) }), 'identity_invalid'],
    ['negative nbf', () => ({ sub, aud: 'jit-broker', nbf: -5, exp: now() + 60 }), 'identity_invalid'],
  ];
  test.each(cases)('%s', async (_name, claims, expected) => {
    expect(await codeOf(issuer.signRaw(header(), claims()))).toBe(expected);
  });

  // With singleUse the dates also size the replay marker in Redis: absurd ones must be refused before that.
  test.each([
    ['exp 1e16', () => ({ exp: 1e16 })],
    ['non-integer exp', () => ({ exp: now() + 60.25 })],
    ['ten years without iat', () => ({ exp: now() + tenYears })],
  ])('singleUse, %s: refused, no replay marker written', async (_name, dates) => {
    const token = oidcIssuer.signRaw(
      { alg: 'ES256', kid: oidcIssuer.kid },
      { iss: ONCE, sub: 'job-2', aud: 'jit-broker', jti: randomUUID(), ...dates() },
    );
    const before = (await redis.keys(`${prefix}:jti:once:*`)).length;
    expect(await codeOf(token)).toBe('identity_invalid');
    expect(await redis.keys(`${prefix}:jti:once:*`)).toHaveLength(before);
  });

  test('the lifetime refusal says so', async () => {
    expect(await reasonOf(issuer.signRaw(header(), { sub, aud: 'jit-broker', exp: now() + tenYears }))).toBe('lifetime');
  });
});

describe("times are judged on the broker's clock (Redis's), not the process clock", () => {
  // The broker's clock ten minutes ahead of this process: as if this process's clock were ten minutes slow.
  const AHEAD_S = 600;
  const brokerNow = () => now() + AHEAD_S;
  let v: IdentityVerifier;
  beforeAll(async () => {
    const config = testConfig(issuer, prefix, {
      trust: [
        { name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: issuer.bundle().keys } },
        { name: 'once', kind: 'oidc', issuer: ONCE, audiences: ['jit-broker'], jwks: { keys: oidcIssuer.jwks().keys }, singleUse: true },
      ],
    });
    v = new IdentityVerifier(config, {
      redis,
      keys: new Keys(prefix),
      logger: silentLogger,
      cacheMs: 0,
      now: () => Date.now() + AHEAD_S * 1000,
    });
    await v.init();
  });
  const sub = 'spiffe://dev.local/agent/support';
  const header = () => ({ alg: 'ES256', kid: issuer.kid, typ: 'JWT' });

  test('a token minted just now by the issuer (iat and nbf = its now) is valid', async () => {
    const t = issuer.signRaw(header(), { sub, aud: 'jit-broker', iat: brokerNow(), nbf: brokerNow(), exp: brokerNow() + 300 });
    expect(await codeOf(t, v)).toBe('ok');
  });

  test('a token whose exp passed on the broker clock is expired, however early the process clock is', async () => {
    const t = issuer.signRaw(header(), { sub, aud: 'jit-broker', iat: brokerNow() - 400, exp: brokerNow() - 100 });
    expect(await codeOf(t, v)).toBe('identity_expired');
  });

  test('the lifetime without iat is measured from the broker clock', async () => {
    // exp - brokerNow is just under a day: fine. Measured from the process clock it would be a day + 10 min.
    const t = issuer.signRaw(header(), { sub, aud: 'jit-broker', exp: brokerNow() + 86_400 - 60 });
    expect(await codeOf(t, v)).toBe('ok');
  });

  test("the replay marker lives until the token's exp (plus skew) on the broker clock", async () => {
    const jti = randomUUID();
    const t = oidcIssuer.signRaw(
      { alg: 'ES256', kid: oidcIssuer.kid },
      { iss: ONCE, sub: 'job-3', aud: 'jit-broker', iat: brokerNow(), exp: brokerNow() + 120, jti },
    );
    expect(await codeOf(t, v)).toBe('ok');
    const key = new Keys(prefix).replay('once', createHash('sha256').update(jti).digest('base64url'));
    const ttl = await redis.pttl(key);
    // 120 s + 30 s skew; on the process clock it would have been 750 s.
    expect(ttl).toBeGreaterThan(140_000);
    expect(ttl).toBeLessThanOrEqual(150_000);
  });
});

describe('SPIFFE IDs must be canonical (lowercase scheme and trust domain, non-empty path)', () => {
  const header = () => ({ alg: 'ES256', kid: issuer.kid, typ: 'JWT' });
  const withSub = (sub: string) => issuer.signRaw(header(), { sub, aud: 'jit-broker', iat: now(), exp: now() + 60 });
  test.each([
    ['spiffe://dev.local/agent/support', 'ok'],
    ['SPIFFE://dev.local/agent/support', 'identity_invalid'],
    ['Spiffe://dev.local/agent/support', 'identity_invalid'],
    ['spiffe://DEV.LOCAL/agent/support', 'identity_invalid'],
    ['spiffe://Dev.local/agent/support', 'identity_invalid'],
    ['spiffe://dev.local', 'identity_invalid'],
    ['spiffe://dev.local/', 'identity_invalid'],
    ['spiffe://dev.local//agent', 'identity_invalid'],
    ['spiffe://dev.local:8443/agent', 'identity_invalid'],
    ['spiffe://user@dev.local/agent', 'identity_invalid'],
    ['spiffe://dev.local/agent%2Fsupport', 'identity_invalid'],
    ['spiffe://dev.local/agent?x=1', 'identity_invalid'],
    ['spiffe://dev.local/agent#frag', 'identity_invalid'],
    [' spiffe://dev.local/agent', 'identity_invalid'],
  ])('%s → %s', async (sub, expected) => {
    expect(await codeOf(withSub(sub))).toBe(expected);
  });
});

describe('what an unauthenticated token can make the broker log', () => {
  function capture(level: string): { logger: Logger; lines: () => string[] } {
    const chunks: string[] = [];
    const stream = new Writable({
      write(chunk, _enc, cb) {
        chunks.push(String(chunk));
        cb();
      },
    });
    return { logger: pino({ level }, stream), lines: () => chunks.join('').split('\n').filter(Boolean) };
  }
  const bigKid = 'k'.repeat(8192);
  const evil = () =>
    issuer.signRaw(
      { alg: 'ES256', kid: `${bigKid}\u001b[31m\n{"level":60}`, typ: 'JWT' },
      { sub: 'spiffe://dev.local/agent/support', aud: 'jit-broker', iat: now(), exp: now() + 60 },
    );

  async function flood(logger: Logger, n: number): Promise<void> {
    const config = testConfig(issuer, prefix);
    const v = new IdentityVerifier(config, { redis, keys: new Keys(prefix), logger, cacheMs: 0 });
    await v.init();
    for (let i = 0; i < n; i++) expect(await codeOf(evil(), v)).toBe('identity_invalid');
  }

  test('every logged value from an unverified token is truncated and escaped', async () => {
    const { logger, lines } = capture('debug');
    await flood(logger, 3);
    expect(lines().length).toBeGreaterThan(0);
    for (const line of lines()) {
      expect(line.length).toBeLessThan(1024);
      expect(line).not.toContain('\u001b');
      expect(JSON.parse(line)).toBeTruthy();
    }
  });

  test('a flood of bad tokens produces bounded log volume at the default level', async () => {
    const { logger, lines } = capture('info');
    await flood(logger, 500);
    const bytes = lines().reduce((n, l) => n + l.length, 0);
    expect(lines().length).toBeLessThanOrEqual(5);
    expect(bytes).toBeLessThan(4096);
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
