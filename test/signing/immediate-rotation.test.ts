import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { silentLogger } from '../../src/logger.ts';
import { RedisClock } from '../../src/redis/clock.ts';
import { Keys } from '../../src/redis/keys.ts';
import { Kek } from '../../src/signing/kek.ts';
import { SigningKeyStore } from '../../src/signing/key-store.ts';
import { dropPrefix, uniquePrefix } from '../helpers/broker.ts';

/**
 * An immediate rotation (a compromised key) takes the old key out of every
 * instance's JWKS and signing at once. Each instance decides on its own
 * estimate of Redis's clock, and two estimates differ by milliseconds: the
 * rotation used to date the switch at the rotating instance's "now", so an
 * instance whose estimate ran a little behind still published the old key,
 * and still signed with it, until its clock caught up (seen once in the
 * Cluster test under load).
 */
class BehindClock extends RedisClock {
  override now(): number {
    return super.now() - 200;
  }
}

const prefix = uniquePrefix('immediate');
const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
afterAll(async () => {
  await dropPrefix(prefix);
  redis.disconnect();
});

test('an instance whose clock estimate runs 200 ms behind neither publishes nor signs with the old key', async () => {
  const keys = new Keys(prefix);
  const kek = new Kek(randomBytes(32).toString('base64'));
  const store = (clock: RedisClock) => new SigningKeyStore({ redis, keys, kek, logger: silentLogger, alg: 'ES256', clock });
  const aClock = new RedisClock(redis);
  const bClock = new BehindClock(redis);
  await Promise.all([aClock.sync(), bClock.sync()]);
  const a = store(aClock);
  const b = store(bClock);
  await a.ensure();
  await b.reload();
  const old = a.current().kid;

  const { kid } = await a.rotate({ leadMs: 90_000, maxTokenTtlMs: 900_000, graceMs: 60_000, immediate: true });
  await b.reload();
  expect(b.jwks().keys.map((k) => k.kid)).toEqual([kid]);
  expect(b.current().kid).toBe(kid);
  expect(b.publicKey(old)).toBeUndefined();
  expect(old).not.toBe(kid);
});

/**
 * A rotation whose lock lapsed (its instance stalled past the lock's TTL) can land after a later
 * immediate rotation. It used to read the keys, then write each one's retireAt back from what it had
 * read: landing late, it moved the compromised key's retireAt forward again, and the key was back in
 * every instance's JWKS for the longest token TTL.
 */
test('a stalled normal rotation landing after an immediate one does not bring the retired key back', async () => {
  const keys = new Keys(uniquePrefix('stalled-rotation'));
  const kek = new Kek(randomBytes(32).toString('base64'));
  let release!: () => void;
  const gate = new Promise<void>((r) => {
    release = r;
  });
  let reached!: () => void;
  const writing = new Promise<void>((r) => {
    reached = r;
  });
  // The stalled instance's connection: its first write of the key set waits until the other rotation is done.
  const held = async <T>(write: () => Promise<T>): Promise<T> => {
    reached();
    await gate;
    return write();
  };
  const stalled = new Proxy(redis, {
    get(target, prop, receiver) {
      if (prop === 'evalsha')
        return (...args: unknown[]) => held(() => (target.evalsha as (...a: unknown[]) => Promise<unknown>).apply(target, args));
      if (prop === 'multi')
        return () => {
          const m = target.multi();
          const exec = m.exec.bind(m);
          return Object.assign(m, { exec: () => held(exec) });
        };
      return Reflect.get(target, prop, receiver);
    },
  });
  const clock = new RedisClock(redis);
  await clock.sync();
  const a = new SigningKeyStore({ redis: stalled as Redis, keys, kek, logger: silentLogger, alg: 'ES256', clock });
  const b = new SigningKeyStore({ redis, keys, kek, logger: silentLogger, alg: 'ES256', clock });
  await b.ensure();
  await a.reload();
  // The first key activates at Redis's TIME, which this estimate may trail by a millisecond: read its id.
  const compromised = (await redis.hkeys(keys.signingKeys()))[0] ?? '';

  const late = a.rotate({ leadMs: 90_000, maxTokenTtlMs: 900_000, graceMs: 60_000 });
  await writing;
  const { kid } = await b.rotate({ leadMs: 90_000, maxTokenTtlMs: 900_000, graceMs: 60_000, immediate: true });
  release();
  await late;
  await b.reload();
  expect(b.publicKey(compromised)).toBeUndefined();
  expect(b.jwks().keys.map((k) => k.kid)).not.toContain(compromised);
  expect(b.current().kid).toBe(kid);
  await dropPrefix(keys.prefix);
});
