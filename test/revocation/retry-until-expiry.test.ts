import { upstreamFailed } from '../../src/errors.ts';
import type { LeaseRecord } from '../../src/leases/types.ts';
import type { JwtProvider } from '../../src/providers/jwt/provider.ts';
import { AGENT, ORCH, auditRecords, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';

/**
 * Contract section 5: a revocation is retried until the upstream confirms it
 * or the credential's own expiry has passed; nothing is given up earlier,
 * whatever the error. Before, a "permanent" error stopped after 8 attempts
 * and the reconciler re-enqueued revoke_failed leases forever.
 */
let t: TestBroker;
let calls = 0;
let fail = true;

beforeAll(async () => {
  t = await startTestBroker('retry', {
    config: {
      revocation: {
        backoffMs: 20,
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
  // An upstream whose revoke fails with what used to count as permanent (a 502 upstream_denied).
  t.broker.deps.providers.set(
    'jwt',
    Object.assign(Object.create(Object.getPrototypeOf(real)), real, {
      upstream: true,
      revoke: async (_l: LeaseRecord) => {
        calls += 1;
        if (fail) throw upstreamFailed('upstream_denied', 'denied');
      },
    }),
  );
});
afterAll(async () => {
  await t.close();
});

async function leaseOn(taskId: string, ttlSeconds: number): Promise<string> {
  await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  const c = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'demo-api', ttlSeconds });
  expect(c.status).toBe(201);
  return c.body.leaseId;
}

test('every error is retried past any attempt budget, then the lease ends expired with the last error', async () => {
  fail = true;
  calls = 0;
  const leaseId = await leaseOn('t-retry-1', 6);
  await call(t.url, 'POST', '/v1/tasks/t-retry-1/complete', t.as(ORCH));
  const failing = await waitFor(async () => {
    const l = await t.broker.deps.leases.get(leaseId);
    // More than the 8 attempts after which revocation used to give up.
    return l?.status === 'revoke_failed' && (l.attempts ?? 0) >= 9 && l;
  }, 15_000);
  expect(failing.lastError).toBe('upstream_denied');
  const shown = await call(t.url, 'GET', `/v1/leases/${leaseId}`, t.as(AGENT));
  expect(shown.body).toMatchObject({ status: 'revoke_failed', lastError: 'upstream_denied' });
  const done = await waitFor(async () => {
    const l = await t.broker.deps.leases.get(leaseId);
    return l?.status === 'expired' && l;
  }, 15_000);
  expect(done).toMatchObject({ reason: 'task_completed', lastError: 'upstream_denied' });
  const settled = calls;
  await new Promise((r) => setTimeout(r, 500));
  expect(calls).toBe(settled); // nothing is retried once the credential has expired
  const records = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter((r) => r.leaseId === leaseId);
  expect(records.map((r) => r.action)).toEqual(['credential.issue', 'lease.revoke_failed', 'lease.expire']);
}, 40_000);

test('a revocation that starts failing and then succeeds ends revoked', async () => {
  fail = true;
  const leaseId = await leaseOn('t-retry-2', 60);
  await call(t.url, 'POST', '/v1/tasks/t-retry-2/complete', t.as(ORCH));
  await waitFor(async () => (await t.broker.deps.leases.get(leaseId))?.status === 'revoke_failed');
  fail = false;
  const done = await waitFor(async () => {
    const l = await t.broker.deps.leases.get(leaseId);
    return l?.status === 'revoked' && l;
  });
  expect(done.reason).toBe('task_completed');
});
