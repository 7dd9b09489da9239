import { jest } from '@jest/globals';
import { ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * src/http/rate-limit.ts: an address over its authentication-failure budget is refused (429) from an
 * in-memory block list until the budget's wait ends. The block was dated with Date.now(): a wall clock
 * stepped back an hour (NTP setting a fast clock right) kept the address refused for that hour more than
 * the Retry-After it was told, and one stepped forward let every blocked address through to the signature
 * check at once. A block is now a monotonic duration.
 */
const HOUR = 3_600_000;
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('rl-step', {
    config: {
      server: {
        port: 0,
        publicUrl: 'http://127.0.0.1:8080',
        rateLimit: { unauthenticated: { perSecond: 1, burst: 1 }, trustProxy: 'loopback' },
      },
    },
  });
});
afterAll(async () => {
  jest.restoreAllMocks();
  await t.close();
});

test.each([
  ['back', -HOUR, 10],
  ['forward', HOUR, 11],
])('a blocked address is refused for its Retry-After, and no longer, the wall clock stepped %s an hour', async (_, stepMs, net) => {
  const verify = jest.spyOn(t.broker.deps.verifier, 'verify');
  // The budget is one a second, so the block lasts a second: on a loaded machine the steps below can take longer
  // than that, which proves nothing either way. Such a try is started again from another address.
  for (let attempt = 0; ; attempt++) {
    const ip = `203.0.${net}.${attempt + 1}`;
    const from = (h: Record<string, string> = {}) => ({ 'x-forwarded-for': ip, ...h });
    // Signed before the step: the broker decides a token's expiry on Redis's clock, which does not step.
    const valid = from(t.as(ORCH));
    const out = await Promise.all([call(t.url, 'GET', '/v1/tasks/t-none', from()), call(t.url, 'GET', '/v1/tasks/t-none', from())]);
    const blockedAt = performance.now();
    const refused = out.find((r) => r.status === 429);
    expect(out.map((r) => r.status).sort()).toEqual(refused || attempt >= 4 ? [401, 429] : [401, 401]);
    if (!refused) continue;
    const retryAfter = Number(refused.headers.get('retry-after'));
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    const realNow = Date.now.bind(Date);
    jest.spyOn(Date, 'now').mockImplementation(() => realNow() + stepMs);
    try {
      // Still blocked right after the step: refused before any signature is checked.
      verify.mockClear();
      const after = await call(t.url, 'GET', '/v1/tasks/t-none', valid);
      if (performance.now() - blockedAt >= retryAfter * 1000 && attempt < 4) continue;
      expect(after.status).toBe(429);
      expect(verify).not.toHaveBeenCalled();
      // Served again once the wait it was told has passed.
      await new Promise((r) => setTimeout(r, retryAfter * 1000 + 300));
      expect((await call(t.url, 'GET', '/v1/tasks/t-none', valid)).status).toBe(404);
      return;
    } finally {
      jest.spyOn(Date, 'now').mockRestore();
    }
  }
});
