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

/** Redis's clock read now, in ms. */
async function redisNow(): Promise<number> {
  const [s, us] = await redis.time();
  return Number(s) * 1000 + Math.floor(Number(us) / 1000);
}

/**
 * Between two syncs the estimate moved with the wall clock: a step of it (NTP setting right a clock an hour
 * behind, `date -s`) put the estimate an hour ahead until the next sync, and the worker gave up failing
 * revocations as if their credentials had expired (test/faults/clock-step.test.ts). The estimate never runs
 * ahead of Redis's clock for a step of either clock, and measures again at once.
 */
describe('a clock that steps between two syncs', () => {
  const realDateNow = Date.now;
  const realPerfNow = performance.now.bind(performance);
  afterEach(() => {
    Date.now = realDateNow;
    performance.now = realPerfNow;
  });

  test('the wall clock stepped an hour forward: the estimate stays on Redis’s clock, and the next sync takes the new offset', async () => {
    const clock = new RedisClock(redis);
    await clock.sync();
    Date.now = () => realDateNow() + 3_600_000;
    const before = await redisNow();
    const est = clock.now();
    const after = await redisNow();
    // Before: an hour ahead.
    expect(est).toBeLessThanOrEqual(after + 250);
    expect(est).toBeGreaterThanOrEqual(before - 250);
    // now() saw the two clocks disagree and measured again: the offset is the wall clock's new one.
    await new Promise((r) => setTimeout(r, 200));
    expect(Math.abs(clock.skewMs - 3_600_000)).toBeLessThan(250);
    expect(Math.abs(clock.now() - (await redisNow()))).toBeLessThan(250);
  });

  test('the monotonic clock stood still (a suspended machine) or the wall clock stepped back: never ahead', async () => {
    const clock = new RedisClock(redis);
    await clock.sync();
    performance.now = () => realPerfNow() - 60_000;
    expect(clock.now()).toBeLessThanOrEqual((await redisNow()) + 250);
    performance.now = realPerfNow;
    Date.now = () => realDateNow() - 60_000;
    await new Promise((r) => setTimeout(r, 200));
    expect(clock.now()).toBeLessThanOrEqual((await redisNow()) + 250);
  });
});
