import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { upstreamFailed } from '../../src/errors.ts';
import type { LeaseRecord } from '../../src/leases/types.ts';
import type { JwtProvider } from '../../src/providers/jwt/provider.ts';
import { leaseEndJobId } from '../../src/revocation/queue.ts';
import { AGENT, ORCH, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';

/**
 * A revocation is retried until the upstream confirms it or the credential expires (contract section 5):
 * with the default backoff cap of 30 s, a 12-hour AWS session whose revoke keeps failing is tried about
 * 2,000 times. Found in a Redis growth audit: BullMQ appends each failed attempt's stack trace to the job's
 * hash unless the job sets `stackTraceLimit`, so every retry made the lease-end job bigger (a kilobyte or
 * more an attempt, rewritten whole each time). An upstream outage with many leases to revoke grew Redis by
 * gigabytes. The job now keeps the last attempt's trace only.
 */
let t: TestBroker;
let calls = 0;

beforeAll(async () => {
  t = await startTestBroker('retry-job-size', {
    config: {
      revocation: {
        backoffMs: 10,
        maxBackoffMs: 100,
        reconcileIntervalMs: 60_000,
        concurrency: 4,
        lockMs: 1000,
        stalledCheckMs: 500,
        sweepMs: 20,
      },
    },
  });
  const real = t.broker.deps.providers.get('jwt') as JwtProvider;
  // An upstream whose revoke keeps failing (an outage).
  t.broker.deps.providers.set(
    'jwt',
    Object.assign(Object.create(Object.getPrototypeOf(real)), real, {
      upstream: true,
      revoke: async (_l: LeaseRecord) => {
        calls += 1;
        throw upstreamFailed('upstream_unavailable', 'the upstream is down');
      },
    }),
  );
});
afterAll(async () => {
  await t.close();
});

test('a revocation retried many times does not grow its job in Redis', async () => {
  const taskId = 't-job-size';
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  expect(open.status).toBe(201);
  const c = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'demo-api', ttlSeconds: 120 });
  expect(c.status).toBe(201);
  const leaseId = c.body.leaseId as string;
  await call(t.url, 'POST', `/v1/tasks/${taskId}/complete`, t.as(ORCH));
  const { queue, keys, redis } = t.broker.deps;
  const q = queue.queues[queue.groupOf(keys.bucketOfId(leaseId)!)]!;
  const jobKey = `${q.keys['']}${leaseEndJobId(leaseId)}`;
  const traceBytes = async () => Number(await redis.hstrlen(jobKey, 'stacktrace'));
  await waitFor(async () => calls >= 3, 15_000);
  const early = await traceBytes();
  expect(early).toBeGreaterThan(0); // the key is the job's: its last failure is there
  await waitFor(async () => calls >= 40, 30_000);
  const late = await traceBytes();
  const job = await q.getJob(leaseEndJobId(leaseId));
  expect(job?.attemptsMade).toBeGreaterThanOrEqual(35);
  // Before: one stack trace per attempt (40 of them, ~25 times the bytes after 3 attempts).
  expect(job?.stacktrace?.length ?? 0).toBeLessThanOrEqual(1);
  expect(late).toBeLessThan(2 * early + 1024);
  expect((await t.broker.deps.leases.get(leaseId))?.status).toBe('revoke_failed');
}, 60_000);
