import { Redis } from 'ioredis';
import type { Deps } from '../../src/deps.ts';
import { admitIdentity } from '../../src/http/middleware.ts';
import { RateLimited, type RateLimits } from '../../src/http/rate-limit.ts';
import type { WorkloadIdentity } from '../../src/identity/types.ts';
import { silentLogger } from '../../src/logger.ts';
import { identityLimits } from '../helpers/rate-limits.ts';

/** Rate limits on a Redis that refuses every connection: an identity budget of `perSecond`/`burst`, the others off. */
function limitsWithoutRedis(prefix: string, perSecond: number, burst: number): { dead: Redis; limits: RateLimits } {
  // disconnectTimeout: ioredis arms a timer to destroy the socket on disconnect, and when the socket was
  // already closed (refused) nothing clears it; its default 2 s outlived the file and made jest force-exit its worker.
  const dead = new Redis('redis://127.0.0.1:1', {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    disconnectTimeout: 100,
  });
  dead.on('error', () => {});
  return { dead, limits: identityLimits(dead, prefix, perSecond, burst) };
}

/** With Redis unreachable the limits still hold, per instance (each window's insurance window in memory), and never throw. */
test('Redis down: the same budget per instance, no errors', async () => {
  const { dead, limits } = limitsWithoutRedis('down', 2, 3);
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

test('Redis down: a 429 stays a 429 though its audit record cannot be written', async () => {
  const { dead, limits } = limitsWithoutRedis('down-audit', 1, 1);
  const deps = {
    limits,
    quarantine: { match: () => undefined },
    logger: silentLogger,
    audit: { denial: () => Promise.reject(new Error('Connection is closed.')) },
  } as unknown as Deps;
  try {
    const out: string[] = [];
    for (let i = 0; i < 3; i++) {
      try {
        await admitIdentity(deps, { id: 'spiffe://dev.local/agent/b' } as WorkloadIdentity);
        out.push('ok');
      } catch (err) {
        out.push(err instanceof RateLimited ? `429 ${err.code}` : `other: ${(err as Error).message}`);
      }
    }
    // Before: the failed audit write replaced the 429 (a 503, or a 500 on the AWS container endpoint).
    expect(out).toEqual(['ok', '429 rate_limited', '429 rate_limited']);
  } finally {
    dead.disconnect();
  }
});
