import { jest } from '@jest/globals';
import { ADMIN, AGENT, ORCH, REDIS_URL, call, startTestBroker, uniquePrefix, waitFor, type TestBroker } from '../helpers/broker.ts';
import type { TaskStore } from '../../src/tasks/task-store.ts';

/**
 * Red team: the kill switch (POST /v1/admin/revoke) walks the open tasks in
 * pages while tasks end around it (the sweeper expires the earliest
 * deadlines, orchestrators complete theirs). With offset paging, every task
 * that left the set ahead of the offset shifted the rest down, and the walk
 * skipped that many: some of the agent's tasks, and their leases, survived.
 */
const ROGUE = '/agent/rt-rogue';
const PAGE = 3;
let t: TestBroker;

beforeAll(async () => {
  // One bucket, so every task is in one open-task set.
  const prefix = uniquePrefix('rt-kill');
  t = await startTestBroker('rt-kill', {
    prefix,
    config: {
      redis: { url: REDIS_URL, prefix, buckets: 1 },
      server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } },
    },
  });
});
afterAll(async () => {
  await t.close();
});

async function openTask(taskId: string, agent: string, ttlSeconds: number): Promise<void> {
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${agent}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds,
    grants: [{ role: 'demo-api' }],
  });
  expect(r.status).toBe(201);
}

test('every task and lease of the agent ends, across pages, while other tasks end during the walk', async () => {
  // Bystanders with the earliest deadlines: the first ranks of the open set (ordered by deadline). More
  // than Redis's small-set encoding holds (128), so a ZSCAN cursor really pages as well.
  const bystanders = Array.from({ length: 130 }, (_, i) => `rt-by-${i}`);
  for (const id of bystanders) await openTask(id, AGENT, 120);
  const rogue = Array.from({ length: 3 * PAGE }, (_, i) => `rt-rogue-${i}`);
  const leases: string[] = [];
  for (const id of rogue) {
    await openTask(id, ROGUE, 600);
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(ROGUE), { taskId: id, role: 'demo-api' });
    expect(r.status).toBe(201);
    leases.push(r.body.leaseId);
  }

  // Small pages, and the bystanders end (completed by their orchestrator) after the first page was read.
  const store = t.broker.deps.tasks as TaskStore;
  const openIn = store.openIn.bind(store);
  const spy = jest.spyOn(store, 'openIn').mockImplementation(async function* (bucket: number) {
    let pages = 0;
    for await (const page of openIn(bucket, PAGE)) {
      yield page;
      if (++pages === 1) for (const id of bystanders) await call(t.url, 'POST', `/v1/tasks/${id}/complete`, t.as(ORCH));
    }
  });
  try {
    const r = await call(t.url, 'POST', '/v1/admin/revoke', t.as(ADMIN), { agent: `spiffe://dev.local${ROGUE}` });
    expect(r.status).toBe(202);
    expect(r.body).toEqual({ tasks: rogue.length, leases: leases.length });
  } finally {
    spy.mockRestore();
  }
  for (const id of rogue) {
    expect((await call(t.url, 'GET', `/v1/tasks/${id}`, t.as(ADMIN))).body).toMatchObject({
      status: 'completed',
      reason: 'revoked_by_admin',
    });
  }
  for (const id of leases) {
    await waitFor(async () => (await call(t.url, 'GET', `/v1/leases/${id}`, t.as(ADMIN))).body.status === 'revoked');
  }
});
