import { Redis } from 'ioredis';
import { RateLimiterRedis } from 'rate-limiter-flexible';
import { RateLimits } from '../../src/http/rate-limit.ts';
import { silentLogger } from '../../src/logger.ts';
import { Metrics } from '../../src/metrics.ts';
import { dropPrefix, REDIS_URL, uniquePrefix } from '../helpers/broker.ts';

/**
 * Review leftover: an expensive read that was refused (429) still spent its points. rate-limiter-flexible counts
 * every point asked for, refused or not, so a refused evidence page (9 points on top of authentication's) pushed
 * the reserve past its end: the points that were left were gone too, and the reserve was blocked in memory until
 * it came back (here 90 s). A refused request now spends nothing (src/http/rate-limit.ts `refund`).
 *
 * perSecond 1, burst 10: a reserve of 9 that takes 90 s to come back, so what is left in it is known exactly
 * (the per-second window may add one point if a second ticks; the cases leave room for that).
 */
let redis: Redis;
/** Second broker instances' connections. */
const others: Redis[] = [];
const prefixes: string[] = [];
beforeAll(async () => {
  redis = new Redis(REDIS_URL);
  await redis.ping();
});
afterAll(async () => {
  for (const p of prefixes) await dropPrefix(p);
  redis.disconnect();
  for (const o of others) o.disconnect();
});

function limits(perSecond: number, burst: number): { l: RateLimits; prefix: string } {
  const prefix = uniquePrefix('rlr');
  prefixes.push(prefix);
  const l = new RateLimits({
    redis,
    prefix,
    config: {
      perSecond,
      burst,
      introspect: { perSecond: 0, burst: 1 },
      unauthenticated: { perSecond: 0, burst: 1 },
      concurrentReads: 0,
      trustProxy: false,
    },
    metrics: new Metrics(),
    logger: silentLogger,
  });
  return { l, prefix };
}

const spend = (l: RateLimits, who: string, points: number) =>
  l.spendIdentity(who, 'identity', points).then(
    () => 'ok',
    (err: { code: string }) => err.code,
  );

test('a refused expensive charge leaves the points that were left: cheap requests after it still fit', async () => {
  const { l, prefix } = limits(1, 10);
  const who = 'spiffe://dev.local/agent/refund';
  expect(await spend(l, who, 6)).toBe('ok'); // 1 of the per-second window, 5 of the reserve: 4 left (5 if a second ticks)
  expect(await spend(l, who, 9)).toBe('rate_limited');
  // The reserve's count in Redis is what was admitted, not what was asked for (before: 5 + 8 or 9 = 13-14).
  expect(Number(await redis.get(`${prefix}:rl:id:r:${who}`))).toBe(5);
  // Before: refused, every one (the reserve was counted past its end and blocked in memory for 90 s).
  const after = [];
  for (let i = 0; i < 4; i++) after.push(await spend(l, who, 1));
  expect(after).toEqual(['ok', 'ok', 'ok', 'ok']);
});

test('a refused charge in a batch gives back only what it asked for: the cheap requests admitted with it stay spent', async () => {
  const { l, prefix } = limits(1, 10);
  const who = 'spiffe://dev.local/agent/refund-batch';
  expect(await spend(l, who, 6)).toBe('ok');
  // One turn of the event loop: [9, 1, 1] with 4-5 points left: the 9 is refused, the two cheap ones fit.
  expect(await Promise.all([spend(l, who, 9), spend(l, who, 1), spend(l, who, 1)])).toEqual(['rate_limited', 'ok', 'ok']);
  const reserve = Number(await redis.get(`${prefix}:rl:id:r:${who}`));
  expect(reserve).toBeGreaterThanOrEqual(6);
  expect(reserve).toBeLessThanOrEqual(7);
  // 9 - 7 or 9 - 6 left: at least two more cheap requests, and never more than the budget.
  const after = [];
  for (let i = 0; i < 2; i++) after.push(await spend(l, who, 1));
  expect(after).toEqual(['ok', 'ok']);
});

test('a caller over its budget is still refused from memory, and a refusal gives nothing back it did not count', async () => {
  const { l, prefix } = limits(1, 3);
  const who = 'spiffe://dev.local/agent/refund-full';
  expect(await spend(l, who, 3)).toBe('ok');
  expect(await spend(l, who, 2)).toBe('rate_limited');
  expect(await spend(l, who, 1)).toBe('rate_limited');
  const reserve = Number(await redis.get(`${prefix}:rl:id:r:${who}`));
  expect(reserve).toBeGreaterThanOrEqual(2); // full (2 of 2), or past it: never given back below its end
});

/**
 * Review: the refund was the library's `reward`, which lands in whatever window the key holds when it arrives. When
 * the counted window ended between the charge and its refund and another instance had already spent the new window,
 * the refund took its points back from the new window: more than `perSecond` admitted in one second. The window's
 * end is made to fall between the two calls by holding the library's consume until the window is gone (a real
 * expiry, nothing stubbed), while a second broker instance on the same Redis spends the new window.
 */
test('a refund whose window ended meanwhile gives nothing back in the new window', async () => {
  const { l: a, prefix } = limits(5, 5);
  const other = new Redis(REDIS_URL);
  others.push(other);
  const b = new RateLimits({
    redis: other,
    prefix,
    config: {
      perSecond: 5,
      burst: 5,
      introspect: { perSecond: 0, burst: 1 },
      unauthenticated: { perSecond: 0, burst: 1 },
      concurrentReads: 0,
      trustProxy: false,
    },
    metrics: new Metrics(),
    logger: silentLogger,
  });
  const who = 'spiffe://dev.local/agent/refund-window-end';
  const key = `${prefix}:rl:id:s:${who}`;
  expect(await spend(a, who, 3)).toBe('ok');
  // The window opened by that charge must not be a fresh one when the next charge counts (see the script's header).
  await new Promise((r) => setTimeout(r, 200));
  const proto = RateLimiterRedis.prototype as unknown as { consume: (k: string, n: number) => Promise<unknown> };
  const consume = proto.consume;
  let armed = true;
  let inNewWindow: string[] = [];
  proto.consume = async function (this: RateLimiterRedis, k: string, n: number) {
    const hold = armed && n === 5;
    if (hold) armed = false;
    const settled = await consume.call(this, k, n).then(
      (r) => ({ ok: true, r }),
      (r) => ({ ok: false, r }),
    );
    if (hold) {
      while ((await redis.pttl(key)) > 0) await new Promise((r) => setTimeout(r, 20));
      inNewWindow = await Promise.all([1, 2, 3, 4, 5].map(() => spend(b, who, 1)));
    }
    if (settled.ok) return settled.r;
    throw settled.r;
  };
  try {
    // 3 of 5 spent: a 5-point charge is refused (2 fit), and its 5 counted points are to be given back.
    expect(await spend(a, who, 5)).toBe('rate_limited');
  } finally {
    proto.consume = consume;
  }
  expect(inNewWindow).toEqual(['ok', 'ok', 'ok', 'ok', 'ok']);
  // The new window holds the 5 the other instance spent (before: 0, the refund taken from them).
  const [[, count], [, ttl]] = (await redis.multi().get(key).pttl(key).exec()) as [[null, string], [null, number]];
  expect(ttl).toBeGreaterThan(0);
  expect(Number(count)).toBe(5);
  // So this second admits nothing more (before: 5 more, 10 in one second of a budget of 5).
  const more = await Promise.all([1, 2, 3, 4, 5].map(() => spend(a, who, 1)));
  expect(more.filter((x) => x === 'ok')).toHaveLength(0);
});
