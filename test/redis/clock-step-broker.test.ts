import { call, dropPrefix, startTestBroker, type TestBroker, uniquePrefix } from '../helpers/broker.ts';

/**
 * A broker whose Redis's clock steps back (a failover to a host 30 s behind) says so: an error log and
 * `jit_redis_clock_steps_total{direction="back"}`, with the offset in `jit_redis_clock_offset_seconds`.
 * Before, every deadline and expiry silently came 30 s later.
 */
let t: TestBroker;
const prefix = uniquePrefix('clock-step');
afterAll(async () => {
  await t?.broker.close();
  await dropPrefix(prefix);
});

test('a step back of Redis’s clock shows in /metrics', async () => {
  t = await startTestBroker('clock-step', { prefix });
  const redis = t.broker.deps.redis as unknown as { time: () => Promise<[string, string]> };
  const time = redis.time.bind(redis);
  // Only the clock's sync reads TIME from this process (scripts read it inside Redis).
  redis.time = async () => {
    const [s, us] = await time();
    return [String(Number(s) - 30), String(us)];
  };
  await t.broker.deps.clock.sync();
  const metrics = await (await fetch(`${t.url}/metrics`)).text();
  expect(metrics).toMatch(/jit_redis_clock_steps_total\{direction="back"\} 1\n/);
  const offset = Number(/^jit_redis_clock_offset_seconds (\S+)$/m.exec(metrics)?.[1]);
  expect(offset).toBeLessThan(-29);
  expect(offset).toBeGreaterThan(-31);
  // The broker still answers (nothing about a step refuses requests).
  expect((await call(t.url, 'GET', '/healthz', {})).status).toBe(200);
});
