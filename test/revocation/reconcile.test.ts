import { AGENT, ORCH, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';

/**
 * The reconciler (every `revocation.reconcileIntervalMs`) finishes what a lost
 * job left undone: live leases of ended tasks, revocations left `revoking`.
 * It used to read and parse every live lease on each pass; with tens of
 * thousands live that held the event loop for seconds every 30 s, and the
 * open-loop bench saw p99 jump from ~6 ms to ~100 ms during each pass. Redis
 * now picks the leases that need work (reconcile-page.lua) and only those are
 * read.
 */
let t: TestBroker;
const agentId = `spiffe://dev.local${AGENT}`;

beforeAll(async () => {
  t = await startTestBroker('reconcile', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0, introspect: { perSecond: 0 } } } },
  });
});
afterAll(async () => {
  await t?.close();
});

async function openTask(taskId: string): Promise<void> {
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'reconcile',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  expect(r.status).toBe(201);
}

async function issue(taskId: string, n: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'demo-api', ttlSeconds: 300 });
    expect(r.status).toBe(201);
    ids.push(r.body.leaseId);
  }
  return ids;
}

const statusOf = (id: string) => t.broker.deps.redis.hget(t.broker.deps.keys.lease(id), 'status');

/** Counts the lease records the reconciler reads into the process. */
function countReads(): { ids: number; restore(): void } {
  const leases = t.broker.deps.leases;
  const original = leases.getMany.bind(leases);
  const seen = {
    ids: 0,
    restore: () => {
      leases.getMany = original;
    },
  };
  leases.getMany = async (ids) => {
    seen.ids += ids.length;
    return original(ids);
  };
  return seen;
}

test('a pass over healthy leases of open tasks reads none of their records', async () => {
  await openTask('t-healthy');
  await issue('t-healthy', 60);
  const reads = countReads();
  try {
    expect(await t.broker.sweeper!.reconcile()).toBe(0);
    expect(reads.ids).toBe(0);
  } finally {
    reads.restore();
  }
});

test('live leases of a task that ended without them (a lost job) are ended; healthy ones are left alone', async () => {
  await openTask('t-lost');
  await openTask('t-kept');
  const lost = await issue('t-lost', 3);
  const kept = await issue('t-kept', 2);
  // The task ended, but the step that ends its leases never ran (a crash between the two).
  const { redis, keys } = t.broker.deps;
  await redis.hset(keys.task('t-lost'), 'status', 'completed', 'reason', 'task_completed');
  await redis.zrem(keys.openTasks(keys.bucketOfTask('t-lost')), 't-lost');
  const reads = countReads();
  try {
    expect(await t.broker.sweeper!.reconcile()).toBe(3);
    expect(reads.ids).toBe(3);
  } finally {
    reads.restore();
  }
  await waitFor(async () => (await Promise.all(lost.map(statusOf))).every((s) => s === 'revoked'));
  expect(await Promise.all(kept.map(statusOf))).toEqual(['active', 'active']);
});

test('a revocation left `revoking` by a lost job is handed to the worker again', async () => {
  await openTask('t-stuck');
  const [stuck, ok] = await issue('t-stuck', 2);
  const { redis, keys } = t.broker.deps;
  await redis.hset(keys.lease(stuck!), 'status', 'revoking', 'reason', 'revoked_by_caller');
  expect(await t.broker.sweeper!.reconcile()).toBe(1);
  await waitFor(async () => (await statusOf(stuck!)) === 'revoked');
  expect(await statusOf(ok!)).toBe('active');
});
