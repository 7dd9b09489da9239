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

/**
 * Redis's own clock stepping (a failover to a host whose clock is off, an NTP step on Redis's host) moves every
 * deadline and expiry decided on it by as much: back by 30 s, tasks and leases end 30 s late. Nothing told an
 * operator. A sync now compares how far Redis's clock went with how far this process's monotonic clock did.
 */
function shifted(by: { ms: number }) {
  return {
    time: async (): Promise<[string, string]> => {
      const [s, us] = (await redis.time()) as [string | number, string | number];
      const ms = Number(s) * 1000 + Math.floor(Number(us) / 1000) + by.ms;
      return [String(Math.floor(ms / 1000)), String((ms % 1000) * 1000)];
    },
  };
}

test('Redis’s clock going back 30 s between two syncs is reported as a step of about -30 s; no step, nothing', async () => {
  const by = { ms: 0 };
  const clock = new RedisClock(shifted(by) as never);
  const steps: number[] = [];
  clock.onStep = (ms) => steps.push(ms);
  await clock.sync();
  await clock.sync();
  expect(steps).toEqual([]);
  by.ms = -30_000;
  await clock.sync();
  expect(steps).toHaveLength(1);
  expect(Math.abs(steps[0]! + 30_000)).toBeLessThan(250);
  // The clock now follows Redis's: deadlines are still decided on it.
  expect(Math.abs(clock.skewMs - 30_000)).toBeLessThan(250);
  await clock.sync();
  expect(steps).toHaveLength(1);
  by.ms = 30_000;
  await clock.sync();
  expect(steps).toHaveLength(2);
  expect(Math.abs(steps[1]! - 60_000)).toBeLessThan(250);
});

test('this process’s own clock stepping is no step of Redis’s: the offset follows it', async () => {
  const clock = new RedisClock(redis);
  const steps: number[] = [];
  clock.onStep = (ms) => steps.push(ms);
  await clock.sync();
  const real = Date.now;
  Date.now = () => real() + 60_000;
  try {
    await clock.sync();
  } finally {
    Date.now = real;
  }
  expect(steps).toEqual([]);
  expect(Math.abs(clock.skewMs - 60_000)).toBeLessThan(250);
});
