import { Redis } from 'ioredis';
import { RedisClock } from '../../src/redis/clock.ts';

/**
 * The broker estimates Redis's clock from a `TIME` round trip, assuming half of it on each side. A process
 * that is descheduled (or pauses for GC) while the reply waits unread measured a round trip of that whole
 * pause and put its estimate half of it behind, for the 10 s until the next sync: with no signing key
 * active yet on that estimate, every issuance answered 503. A sync now keeps the shortest of a few round trips.
 */
const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
afterAll(() => redis.disconnect());

const busy = (ms: number) => {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    /* the process is not running its event loop: the TIME reply waits in the socket */
  }
};

test('a sync whose first reply sat unread for a second still estimates Redis’s clock within a fraction of that', async () => {
  await redis.ping();
  const clock = new RedisClock(redis);
  const syncing = clock.sync();
  busy(1000);
  await syncing;
  // Same machine: Redis's clock is the local one. Before: about 500 ms behind.
  expect(Math.abs(clock.skewMs)).toBeLessThan(250);
});
