import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { silentLogger } from '../../src/logger.ts';
import { RedisClock } from '../../src/redis/clock.ts';
import { Keys } from '../../src/redis/keys.ts';
import { script } from '../../src/redis/scripts.ts';
import { Kek } from '../../src/signing/kek.ts';
import { SigningKeyStore } from '../../src/signing/key-store.ts';
import { dropPrefix, uniquePrefix } from '../helpers/broker.ts';

/**
 * Each signing key's record in Redis keeps the longest token TTL any instance
 * recorded signing with it (maxTokenTtlMs, raised before an instance signs
 * with the key), and a rotation retires the key after the longer of that and
 * the rotating instance's own TTL: not after whatever the rotating instance
 * happens to run with now (test/signing/rotation-lowered-ttl.test.ts shows the
 * same through a real broker in real time). Here several stores (instances
 * with different configs) on one Redis, and the JWKS read at chosen instants.
 */
const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
const prefixes: string[] = [];
afterAll(async () => {
  for (const p of prefixes) await dropPrefix(p);
  redis.disconnect();
});

const S = 1000;
const GRACE = 5 * S;

async function deployment(name: string) {
  const prefix = uniquePrefix(name);
  prefixes.push(prefix);
  const keys = new Keys(prefix);
  const kek = new Kek(randomBytes(32).toString('base64'));
  const clock = new RedisClock(redis);
  await clock.sync();
  const instance = (maxTokenTtlMs: number | undefined, conn: Redis = redis) =>
    new SigningKeyStore({
      redis: conn,
      keys,
      kek,
      logger: silentLogger,
      alg: 'ES256',
      clock,
      ...(maxTokenTtlMs === undefined ? {} : { maxTokenTtlMs }),
      graceMs: GRACE,
    });
  const stored = async (kid: string) =>
    JSON.parse((await redis.hget(keys.signingKeys(), kid)) ?? 'null') as { retireAt?: number; maxTokenTtlMs?: number; dropped?: boolean };
  return { keys, instance, stored };
}

/** The rotation of an instance whose longest jwt TTL is `ttlMs` (as the jwt provider asks for it). */
const rotation = (ttlMs: number, extra: { leadMs?: number; immediate?: boolean } = {}) => ({
  leadMs: 0,
  maxTokenTtlMs: Math.max(60 * S, ttlMs),
  graceMs: GRACE,
  ...extra,
});

const published = (store: SigningKeyStore, kid: string, at: number) => store.jwks(at).keys.some((k) => k.kid === kid);

test('an instance still running with a longer TTL keeps the old key in the JWKS when one with a shorter TTL rotates', async () => {
  const d = await deployment('ttl-rec-longer');
  const long = d.instance(600 * S);
  const short = d.instance(60 * S);
  await long.ensure();
  await short.reload();
  const old = long.current().kid;
  expect((await d.stored(old)).maxTokenTtlMs).toBe(600 * S);

  const r = await short.rotate(rotation(60 * S));
  expect(published(short, old, r.activateAt + 600 * S + GRACE - 1)).toBe(true);
  expect(published(short, old, r.activateAt + 600 * S + GRACE)).toBe(false);
  // The new key: the long-TTL instance records its TTL on it as soon as it loads it, before it signs.
  expect((await d.stored(r.kid)).maxTokenTtlMs).toBe(60 * S);
  await long.reload();
  expect((await d.stored(r.kid)).maxTokenTtlMs).toBe(600 * S);
  expect(long.current().kid).toBe(r.kid);
});

test('a record only grows: a restart with a lower TTL does not lower it', async () => {
  const d = await deployment('ttl-rec-grows');
  const before = d.instance(600 * S);
  await before.ensure();
  const old = before.current().kid;
  const after = d.instance(60 * S); // the same instance, restarted with the role's TTL lowered
  await after.reload();
  expect((await d.stored(old)).maxTokenTtlMs).toBe(600 * S);
  const r = await after.rotate(rotation(60 * S));
  expect(published(after, old, r.activateAt + 600 * S + GRACE - 1)).toBe(true);
});

test('an instance started with a longer TTL while the old key still signs (the publish lead) moves its retirement later', async () => {
  const d = await deployment('ttl-rec-lead');
  const short = d.instance(60 * S);
  await short.ensure();
  const old = short.current().kid;
  const r = await short.rotate(rotation(60 * S, { leadMs: 90 * S }));
  expect((await d.stored(old)).retireAt).toBe(r.activateAt + 60 * S + GRACE);
  // Started within the lead: it signs with the old key until the new one activates, up to 900 s tokens.
  const late = d.instance(900 * S);
  await late.reload();
  expect(late.current().kid).toBe(old);
  expect(await d.stored(old)).toMatchObject({ maxTokenTtlMs: 900 * S, retireAt: r.activateAt + 900 * S + GRACE });
  expect((await d.stored(r.kid)).maxTokenTtlMs).toBe(900 * S);
  // Every instance sees it on its next reload.
  await short.reload();
  expect(published(short, old, r.activateAt + 900 * S + GRACE - 1)).toBe(true);
});

test('an immediate rotation is final: no instance with a longer TTL brings the dropped key back', async () => {
  const d = await deployment('ttl-rec-immediate');
  const short = d.instance(60 * S);
  await short.ensure();
  const old = short.current().kid;
  const r = await short.rotate(rotation(60 * S, { immediate: true }));
  const late = d.instance(900 * S);
  await late.reload();
  expect(await d.stored(old)).toMatchObject({ dropped: true, maxTokenTtlMs: 60 * S });
  expect(late.publicKey(old)).toBeUndefined();
  expect(late.jwks().keys.map((k) => k.kid)).toEqual([r.kid]);
  // And the claim script itself refuses it, whatever its retireAt.
  const rec = await d.stored(old);
  await redis.hset(d.keys.signingKeys(), old, JSON.stringify({ ...rec, retireAt: Date.now() + 3_600_000 }));
  expect(await script('signing-key-claim').run(redis, [d.keys.signingKeys()], [old, 900 * S, GRACE])).toBeNull();
});

test('a key an older release wrote (no record) is retired as before; an instance of this release records its TTL on it', async () => {
  const d = await deployment('ttl-rec-legacy');
  const legacy = d.instance(undefined); // records nothing
  await legacy.ensure();
  const old = legacy.current().kid;
  const { maxTokenTtlMs: _, ...rec } = await d.stored(old);
  await redis.hset(d.keys.signingKeys(), old, JSON.stringify(rec));
  const r = await legacy.rotate(rotation(120 * S, { leadMs: 90 * S }));
  expect((await d.stored(old)).retireAt).toBe(r.activateAt + 120 * S + GRACE);

  const d2 = await deployment('ttl-rec-legacy2');
  await d2.instance(undefined).ensure();
  const [kid] = await redis.hkeys(d2.keys.signingKeys());
  const { maxTokenTtlMs: __, ...rec2 } = await d2.stored(kid!);
  await redis.hset(d2.keys.signingKeys(), kid!, JSON.stringify(rec2));
  await d2.instance(300 * S).reload();
  expect((await d2.stored(kid!)).maxTokenTtlMs).toBe(300 * S);
  const r2 = await d2.instance(30 * S).rotate(rotation(30 * S));
  expect((await d2.stored(kid!)).retireAt).toBe(r2.activateAt + 300 * S + GRACE);
});

test('a key recreated after a data loss, or a record rolled back, gets the TTL recorded again; a failed record is made before signing', async () => {
  const d = await deployment('ttl-rec-loss');
  const long = d.instance(600 * S);
  await long.ensure();
  // Redis lost everything: an instance with a short TTL recreates the key.
  await redis.del(d.keys.signingKeys());
  const short = d.instance(60 * S);
  expect(await short.ensure()).toBe(true);
  const kid = short.current().kid;
  expect((await d.stored(kid)).maxTokenTtlMs).toBe(60 * S);
  await long.reload();
  expect((await d.stored(kid)).maxTokenTtlMs).toBe(600 * S);
  // Rolled back to a snapshot from before the record: the next reload records it again.
  await redis.hset(d.keys.signingKeys(), kid, JSON.stringify({ ...(await d.stored(kid)), maxTokenTtlMs: 60 * S }));
  await long.reload();
  expect((await d.stored(kid)).maxTokenTtlMs).toBe(600 * S);

  // The record fails while the instance loads the keys (Redis answered an error): it is made before the
  // instance signs, not skipped.
  await redis.hset(d.keys.signingKeys(), kid, JSON.stringify({ ...(await d.stored(kid)), maxTokenTtlMs: 60 * S }));
  let failClaims = true;
  const claimSha = script('signing-key-claim').sha;
  const flaky = new Proxy(redis, {
    get(target, prop, receiver) {
      if (prop === 'evalsha')
        return (...args: unknown[]) =>
          failClaims && args[0] === claimSha
            ? Promise.reject(new Error('LOADING Redis is loading the dataset in memory'))
            : (target.evalsha as (...a: unknown[]) => Promise<unknown>).apply(target, args);
      return Reflect.get(target, prop, receiver);
    },
  });
  const restarted = d.instance(600 * S, flaky as Redis);
  await restarted.reload();
  expect((await d.stored(kid)).maxTokenTtlMs).toBe(60 * S);
  await expect(restarted.sign({ typ: 'at+jwt' }, { sub: 'x' })).rejects.toThrow(/LOADING/);
  failClaims = false;
  const token = await restarted.sign({ typ: 'at+jwt' }, { sub: 'x' });
  expect(JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString()).kid).toBe(kid);
  expect((await d.stored(kid)).maxTokenTtlMs).toBe(600 * S);
});
