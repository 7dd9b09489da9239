import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { jest } from '@jest/globals';
import { Redis } from 'ioredis';
import { IdentityVerifier } from '../../src/identity/verifier.ts';
import { silentLogger } from '../../src/logger.ts';
import { Keys } from '../../src/redis/keys.ts';
import { dropPrefix, REDIS_URL, testConfig, uniquePrefix } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';

/**
 * src/identity/key-set.ts: a JWKS fetched from a URI is kept for jwksCacheSeconds, then fetched again, so a
 * key the issuer withdrew (a leaked one) stops verifying tokens by then. The cache's age was counted with
 * Date.now(): the process's wall clock stepped back an hour (NTP setting a fast clock right) made the age
 * negative, and the withdrawn key went on verifying tokens for that hour (the refetch cooldown, counted the
 * same way, held off the refetch too). The age is now a monotonic duration.
 */
const HOUR = 3_600_000;
const rotating = new TestIssuer('remote.test');
const prefix = uniquePrefix('jwks-step');
let redis: Redis;
let server: Server;
let keys: Record<string, unknown>[] = rotating.bundle().keys;

beforeAll(async () => {
  redis = new Redis(REDIS_URL);
  server = createServer((_req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ keys }));
  });
  server.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
});
afterAll(async () => {
  jest.restoreAllMocks();
  await new Promise((r) => server.close(r));
  await dropPrefix(prefix);
  await redis.quit();
});

test('a key the issuer withdrew stops verifying once the JWKS cache is stale, the wall clock stepped back an hour', async () => {
  const port = (server.address() as AddressInfo).port;
  const config = testConfig(rotating, prefix, {
    trust: [
      {
        name: 'remote',
        kind: 'spiffe',
        trustDomain: 'remote.test',
        audiences: ['jit-broker'],
        jwks: { uri: `http://127.0.0.1:${port}/bundle` },
      },
    ],
    identity: { clockSkewSeconds: 30, maxTokenLifetimeSeconds: 86_400, jwksCacheSeconds: 1, jwksRefetchCooldownSeconds: 0 },
  });
  const realNow = Date.now.bind(Date);
  // The broker's clock (RedisClock in a broker) does not step with the process's wall clock.
  const v = new IdentityVerifier(config, { redis, keys: new Keys(prefix), logger: silentLogger, cacheMs: 0, now: () => realNow() });
  await v.init();
  const token = rotating.svid('/w');
  await expect(v.verify(token)).resolves.toMatchObject({ id: 'spiffe://remote.test/w' });
  // The issuer withdraws its key; the process's clock steps back an hour.
  keys = [];
  jest.spyOn(Date, 'now').mockImplementation(() => realNow() - HOUR);
  await new Promise((r) => setTimeout(r, 1500)); // past jwksCacheSeconds
  await expect(v.verify(token)).rejects.toMatchObject({ code: 'identity_invalid' });
});
