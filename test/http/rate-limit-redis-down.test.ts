import { Redis } from 'ioredis';
import { RateLimits } from '../../src/http/rate-limit.ts';
import { silentLogger } from '../../src/logger.ts';
import { Metrics } from '../../src/metrics.ts';

/** With Redis unreachable the limits still hold, per instance (rate-limiter-flexible's insurance limiter), and never throw. */
test('Redis down: the same budget per instance, no errors', async () => {
  // disconnectTimeout: ioredis arms a timer to destroy the socket on disconnect, and when the socket was
  // already closed (refused) nothing clears it; its default 2 s outlived the file and made jest force-exit its worker.
  const dead = new Redis('redis://127.0.0.1:1', {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    disconnectTimeout: 100,
  });
  dead.on('error', () => {});
  const limits = new RateLimits({
    redis: dead,
    prefix: 'down',
    config: {
      perSecond: 2,
      burst: 3,
      introspect: { perSecond: 0, burst: 1 },
      unauthenticated: { perSecond: 0, burst: 1 },
      trustProxy: false,
    },
    metrics: new Metrics(),
    logger: silentLogger,
  });
  const out: string[] = [];
  for (let i = 0; i < 5; i++) {
    try {
      await limits.spendIdentity('spiffe://dev.local/agent/a');
      out.push('ok');
    } catch (err) {
      out.push((err as { code: string }).code);
    }
  }
  expect(out).toEqual(['ok', 'ok', 'ok', 'rate_limited', 'rate_limited']);
  // Budgets that are off cost nothing, even without Redis.
  await expect(limits.spendIdentity('spiffe://dev.local/agent/a', 'introspect')).resolves.toBeUndefined();
  dead.disconnect();
});
