import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { silentLogger } from '../../src/logger.ts';
import { RedisClock } from '../../src/redis/clock.ts';
import { Keys } from '../../src/redis/keys.ts';
import { Kek } from '../../src/signing/kek.ts';
import { SigningKeyStore } from '../../src/signing/key-store.ts';
import { dropPrefix, uniquePrefix } from '../helpers/broker.ts';

/**
 * The first signing key (a first start, or Redis lost its data) was dated "now" on Redis's clock, and an
 * instance decides which key signs on its own estimate of that clock, which can run behind by half a round
 * trip, or by however long its process was descheduled while it measured. Such an instance had no active
 * key: every issuance answered 503 `not_ready` until its estimate caught up (seen in CI under load, 180
 * issuances of a fresh test broker all 503). There is no older key to overlap with, so the first key is
 * dated back by more than any estimate's error.
 */
class BehindClock extends RedisClock {
  override now(): number {
    return super.now() - 500;
  }
}

const prefix = uniquePrefix('first-key');
const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
afterAll(async () => {
  await dropPrefix(prefix);
  redis.disconnect();
});

test('an instance whose clock estimate runs 500 ms behind signs with the first key at once, its own or another instance’s', async () => {
  const keys = new Keys(prefix);
  const kek = new Kek(randomBytes(32).toString('base64'));
  const clock = new BehindClock(redis);
  await clock.sync();
  const own = new SigningKeyStore({ redis, keys, kek, logger: silentLogger, alg: 'ES256', clock });
  expect(await own.ensure()).toBe(true);
  const other = new SigningKeyStore({ redis, keys, kek, logger: silentLogger, alg: 'ES256', clock });
  await other.reload();
  for (const s of [own, other]) {
    const token = await s.sign({ typ: 'at+jwt' }, { sub: 'x' });
    expect(token.split('.')).toHaveLength(3);
    expect(s.jwks().keys).toHaveLength(1);
  }
});
