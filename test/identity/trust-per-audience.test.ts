import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { validateConfig } from '../../src/config/load.ts';
import { BrokerError, ConfigError } from '../../src/errors.ts';
import { IdentityVerifier } from '../../src/identity/verifier.ts';
import { silentLogger } from '../../src/logger.ts';
import { Keys } from '../../src/redis/keys.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { dropPrefix, REDIS_URL, testConfig, testRawConfig, uniquePrefix } from '../helpers/broker.ts';

/**
 * Several trust entries for one trust domain or issuer. The verifier kept one entry per source (a map keyed by
 * it), so a second entry silently replaced the first: a `singleUse: true` entry followed by another for its trust
 * domain accepted the same token over and over, under the other entry's name; an IdP's agents and the console's
 * sign-in client could not be two entries. Now an entry is picked by source, then by the token's `aud`, and entries
 * of one source must have disjoint audiences (an overlap fails at startup, naming the key).
 */
const issuer = new TestIssuer('dev.local');
const idp = new TestIssuer('unused');
const IDP = 'https://idp.example';
const prefix = uniquePrefix('trust-aud');
const now = () => Math.floor(Date.now() / 1000);
let redis: Redis;
let verifier: IdentityVerifier;

const trust = [
  {
    name: 'agents',
    kind: 'spiffe',
    trustDomain: 'dev.local',
    audiences: ['jit-broker'],
    jwks: { keys: issuer.bundle().keys },
    singleUse: true,
  },
  { name: 'legacy', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['legacy-broker'], jwks: { keys: issuer.bundle().keys } },
  { name: 'idp-agents', kind: 'oidc', issuer: IDP, audiences: ['jit-broker'], jwks: { keys: idp.jwks().keys } },
  { name: 'idp-ci', kind: 'oidc', issuer: IDP, audiences: ['ci-broker', 'ci-alt'], jwks: { keys: idp.jwks().keys } },
];

beforeAll(async () => {
  redis = new Redis(REDIS_URL);
  verifier = new IdentityVerifier(testConfig(issuer, prefix, { trust }), {
    redis,
    keys: new Keys(prefix),
    logger: silentLogger,
    cacheMs: 0,
  });
  await verifier.init();
});

afterAll(async () => {
  await dropPrefix(prefix);
  await redis.quit();
});

async function verdict(token: string): Promise<string> {
  try {
    return `ok ${(await verifier.verify(token)).trust}`;
  } catch (err) {
    if (err instanceof BrokerError) return `${err.status} ${err.extra?.reason as string}`;
    throw err;
  }
}

const svid = (aud: string) =>
  issuer.signRaw(
    { alg: 'ES256', kid: issuer.kid },
    { sub: 'spiffe://dev.local/agent/a', aud, iat: now(), exp: now() + 60, jti: randomUUID() },
  );
const oidc = (aud: string | string[]) =>
  idp.signRaw({ alg: 'ES256', kid: idp.kid }, { iss: IDP, sub: 'job-1', aud, iat: now(), exp: now() + 60 });

test("the first entry of a trust domain keeps its singleUse: a replay is refused under that entry's name", async () => {
  const token = svid('jit-broker');
  expect(await verdict(token)).toBe('ok agents');
  expect(await verdict(token)).toBe('401 replayed');
});

test("the token's audience picks the entry of its source: each identity carries its entry's name", async () => {
  const legacy = svid('legacy-broker');
  expect(await verdict(legacy)).toBe('ok legacy');
  expect(await verdict(legacy)).toBe('ok legacy'); // not single-use
  expect(await verdict(oidc('jit-broker'))).toBe('ok idp-agents');
  expect(await verdict(oidc(['other', 'ci-alt']))).toBe('ok idp-ci');
});

test("a token naming audiences of two entries of its source is refused: the caller does not pick the entry's singleUse", async () => {
  const both = issuer.signRaw(
    { alg: 'ES256', kid: issuer.kid },
    { sub: 'spiffe://dev.local/agent/a', aud: ['legacy-broker', 'jit-broker'], iat: now(), exp: now() + 60, jti: randomUUID() },
  );
  expect(await verdict(both)).toBe('401 audience');
  expect(await verdict(oidc(['jit-broker', 'ci-broker']))).toBe('401 audience');
});

test('an audience no entry of the source lists is refused as audience', async () => {
  expect(await verdict(oidc('nobody'))).toBe('401 audience');
  expect(await verdict(svid('nobody'))).toBe('401 audience');
});

function refusal(entries: Record<string, unknown>[]): { path: string; message: string } | undefined {
  try {
    validateConfig(testRawConfig(issuer, 'trust-aud-cfg', { trust: entries }), {}, 'config/test.yaml');
    return undefined;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return { path: err.path, message: err.message };
  }
}

test('entries of one source with a shared audience fail at startup, naming the later one and the audience', () => {
  const keys = issuer.bundle().keys;
  const r = refusal([
    { name: 'a', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys }, singleUse: true },
    { name: 'b', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['x', 'jit-broker'], jwks: { keys } },
  ]);
  expect(r?.path).toBe('trust.1.audiences');
  expect(r?.message).toMatch(/"jit-broker".*"a".*dev\.local/);
  expect(
    refusal([
      { name: 'c', kind: 'oidc', issuer: IDP, audiences: ['jit-broker'], jwks: { keys } },
      { name: 'd', kind: 'oidc', issuer: IDP, audiences: ['jit-broker'], jwks: { keys } },
    ])?.path,
  ).toBe('trust.1.audiences');
});

test('disjoint audiences, and the same audience on different sources, load', () => {
  const keys = issuer.bundle().keys;
  expect(refusal(trust.map((t) => ({ ...t, jwks: { keys } })))).toBeUndefined();
  expect(
    refusal([
      { name: 'e', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys } },
      { name: 'f', kind: 'oidc', issuer: 'dev.local', audiences: ['jit-broker'], jwks: { keys } },
    ]),
  ).toBeUndefined();
});

test("the console's issuer may also be the agents' issuer: its entry is the one listing the client id", () => {
  const keys = idp.jwks().keys;
  const load = (entries: Record<string, unknown>[]) => {
    try {
      validateConfig(
        testRawConfig(issuer, 'trust-aud-console', { trust: entries, console: { issuer: 'http://127.0.0.1:9999', clientId: 'console' } }),
        {},
        'config/test.yaml',
      );
      return 'loaded';
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      return err.path;
    }
  };
  const people = { name: 'people', kind: 'oidc', issuer: 'http://127.0.0.1:9999', audiences: ['console'], jwks: { keys } };
  const bots = { name: 'bots', kind: 'oidc', issuer: 'http://127.0.0.1:9999', audiences: ['jit-broker'], jwks: { keys } };
  expect(load([people, bots])).toBe('loaded');
  expect(load([bots, people])).toBe('loaded');
  expect(load([bots])).toBe('console.clientId');
});
