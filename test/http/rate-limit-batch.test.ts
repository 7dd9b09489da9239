import type { Command } from 'ioredis';
import { Redis } from 'ioredis';
import type { RateLimits } from '../../src/http/rate-limit.ts';
import { coalesceWrites } from '../../src/redis/coalesce.ts';
import { dropPrefix, REDIS_URL, uniquePrefix } from '../helpers/broker.ts';
import { identityLimits, spendOutcome } from '../helpers/rate-limits.ts';

/**
 * One identity's concurrent requests spend their budget in one Redis call per
 * window (src/http/rate-limit.ts), against real Redis: the budget admits
 * exactly what it would one call at a time, and the calls are counted.
 */

let redis: Redis;
let calls = 0;
const prefixes: string[] = [];
beforeAll(async () => {
  redis = new Redis(REDIS_URL);
  // Connected first: a command sent while connecting passes through sendCommand twice (queued, then sent).
  await redis.ping();
  // Count the rate limiter's script calls: every command this connection sends that names a rate-limit key.
  const send = redis.sendCommand.bind(redis);
  redis.sendCommand = ((cmd: Command, stream?: never) => {
    if (cmd.args.some((a) => String(a).includes(':rl:'))) calls++;
    return send(cmd, stream);
  }) as typeof redis.sendCommand;
});
afterAll(async () => {
  for (const p of prefixes) await dropPrefix(p);
  redis.disconnect();
});

function limits(perSecond: number, burst: number, conn: Redis = redis): RateLimits {
  const prefix = uniquePrefix('rlb');
  prefixes.push(prefix);
  return identityLimits(conn, prefix, perSecond, burst);
}

/** Spends `n` requests of one identity in the same turn of the event loop: 'ok' or the refusal's code, in order. */
async function burst(l: RateLimits, n: number, identity = 'spiffe://dev.local/agent/a'): Promise<string[]> {
  return Promise.all(Array.from({ length: n }, () => spendOutcome(l, identity)));
}

/** Waits until the start of a fresh wall-clock second, so one test's spends fall in one one-second window. */
async function freshSecond(): Promise<void> {
  const ms = 1000 - (Date.now() % 1000);
  if (ms < 900) await new Promise((r) => setTimeout(r, ms + 5));
}

test('20 concurrent requests, budget 5/s with a burst of 8: exactly 8 pass, in two script calls, not 20', async () => {
  const l = limits(5, 8);
  await freshSecond();
  calls = 0;
  const out = await burst(l, 20);
  expect(out.filter((x) => x === 'ok')).toHaveLength(8);
  expect(out.filter((x) => x === 'rate_limited')).toHaveLength(12);
  // The first ones admitted, the later ones refused, as arrival order would have it.
  expect(out.slice(0, 8)).toEqual(Array(8).fill('ok'));
  expect(calls).toBe(2); // the per-second window, then the reserve
  // Over budget now: refused from the in-memory block, no Redis call at all.
  calls = 0;
  expect(await burst(l, 5)).toEqual(Array(5).fill('rate_limited'));
  expect(calls).toBe(0);
});

test('a batch that straddles the per-second window gets what is left of it, then the reserve', async () => {
  const l = limits(5, 8);
  await freshSecond();
  for (let i = 0; i < 3; i++) await l.spendIdentity('spiffe://dev.local/agent/b');
  // 2 left in the per-second window, 3 in the reserve.
  const out = await burst(l, 7, 'spiffe://dev.local/agent/b');
  expect(out).toEqual(['ok', 'ok', 'ok', 'ok', 'ok', 'rate_limited', 'rate_limited']);
});

test('without a reserve (burst = perSecond) the window admits exactly perSecond; other identities keep their own budget', async () => {
  const l = limits(4, 4);
  await freshSecond();
  calls = 0;
  const [a, b] = await Promise.all([burst(l, 10, 'spiffe://dev.local/agent/c'), burst(l, 3, 'spiffe://dev.local/agent/d')]);
  expect(a.filter((x) => x === 'ok')).toHaveLength(4);
  expect(b).toEqual(['ok', 'ok', 'ok']);
  expect(calls).toBe(2); // one per identity
});

test('Redis down: a concurrent batch is admitted by the per-instance insurance limiter, exactly as far as the budget goes', async () => {
  const dead = new Redis('redis://127.0.0.1:1', { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0 });
  dead.on('error', () => {});
  try {
    const out = await burst(limits(2, 3, dead), 6);
    expect(out).toEqual(['ok', 'ok', 'ok', 'rate_limited', 'rate_limited', 'rate_limited']);
  } finally {
    dead.disconnect();
  }
});

test("the batch's script call is written in the loop turn it is made, not corked for another turn", async () => {
  // As the broker's command connections are: writes of one turn corked until its setImmediate.
  const conn = new Redis(REDIS_URL);
  try {
    await new Promise((resolve) => conn.once('ready', resolve));
    coalesceWrites(conn);
    type Write = (chunk: unknown, enc: unknown, cb: unknown) => void;
    type Writev = (chunks: unknown[], cb: unknown) => void;
    const stream = (conn as unknown as { stream: { _write: Write; _writev: Writev } }).stream;
    let written = 0;
    const count = (chunks: unknown[]) => {
      if (chunks.some((c) => String((c as { chunk?: unknown }).chunk ?? c).includes(':rl:'))) written++;
    };
    const [write, writev] = [stream._write.bind(stream), stream._writev.bind(stream)];
    stream._write = (chunk, enc, cb) => {
      count([chunk]);
      write(chunk, enc, cb);
    };
    stream._writev = (chunks, cb) => {
      count(chunks);
      writev(chunks, cb);
    };
    const l = limits(100, 100, conn);
    await conn.ping(); // the limiter's script is defined; nothing corked
    const spent = burst(l, 3);
    // Queued after the batch's own setImmediate: runs right after it, in the same check phase.
    await new Promise((r) => setImmediate(r));
    expect(written).toBe(1);
    expect(await spent).toEqual(['ok', 'ok', 'ok']);
  } finally {
    conn.disconnect();
  }
});

test('a cheap request in the same batch as an expensive one that does not fit is admitted while the batch has points for it', async () => {
  // Review of 50cc898: requests were let through in order "while their points fit", so one expensive read over
  // what was left refused every cheap request queued behind it, though the batch had points for them (spent in
  // Redis either way). perSecond 1, a reserve of 9 (90 s to come back): 8 spent, 2 or 3 left (3 if a second ticks).
  const l = limits(1, 10);
  const who = 'spiffe://dev.local/agent/mixed';
  await l.spendIdentity(who, 'identity', 8);
  const spend = (points: number) => spendOutcome(l, who, points);
  // One turn of the event loop: one batch [5, 1, 1] with 2-3 points left.
  const got = await Promise.all([spend(5), spend(1), spend(1)]);
  expect(got).toEqual(['rate_limited', 'ok', 'ok']);
});
