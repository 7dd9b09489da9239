import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ADMIN, auditRecords, call, startSibling, startTestBroker, testConfig, type TestBroker, waitFor } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';

/**
 * Red team: resource exhaustion by an orchestrator with a valid identity (contract section 3, "Growth is
 * bounded"). Sub-tasks, leases and approvals are bounded per task, but nothing bounded how many top-level tasks
 * one orchestrator holds open: measured on a redis-server of its own, a root task with the largest body the
 * schema takes (20 grants of 100 scopes, 32 labels, a 1,024-char purpose) costs Redis ~34 KB, and the default
 * rate limit (50/s) let one orchestrator add ~1.7 MB a second, for tasks living up to a day (plus retention).
 * `tasks.maxOpenTasks` bounds the open top-level tasks of one opener: 429 `limit_exceeded`, audited.
 */
const AGENT = '/agent/ot-agent';
const OTHER_ORCH = '/orchestrator/other';
const id = (p: string) => `spiffe://dev.local${p}`;
let t: TestBroker;

beforeAll(async () => {
  const policies = mkdtempSync(join(tmpdir(), 'rt-open-tasks-policies-'));
  writeFileSync(join(policies, 'all.cedar'), 'permit (principal, action, resource);\n');
  t = await startTestBroker('rt-open-tasks', { config: { policies, tasks: { maxOpenTasks: 3 } } });
});
afterAll(async () => {
  await t.close();
});

const open = (who: string, body: Record<string, unknown>) =>
  call(t.url, 'POST', '/v1/tasks', t.as(who), {
    agent: id(AGENT),
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
    ...body,
  });

test('the default bound is 10,000 open top-level tasks per opener', () => {
  expect(testConfig(new TestIssuer(), 'x').tasks.maxOpenTasks).toBe(10_000);
});

test('an orchestrator at tasks.maxOpenTasks is refused (429, audited) until one of its tasks ends', async () => {
  const orch = '/orchestrator/ot-a';
  for (const n of [1, 2, 3]) expect((await open(orch, { taskId: `ot-a-${n}` })).status).toBe(201);

  const over = await open(orch, { taskId: 'ot-a-4' });
  expect({ status: over.status, code: over.body.code }).toEqual({ status: 429, code: 'limit_exceeded' });
  expect(over.body.detail).toContain('tasks.maxOpenTasks');
  expect(over.headers.get('retry-after')).toMatch(/^\d+$/);
  // A generated id is refused the same way, and nothing was stored for either.
  expect((await open(orch, {})).status).toBe(429);
  expect(await t.broker.deps.tasks.get('ot-a-4')).toBeUndefined();
  const denied = await waitFor(async () =>
    (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).find(
      (r) => r.action === 'access.deny' && r.reason === 'limit_exceeded' && r.actor === id(orch) && r.taskId === 'ot-a-4',
    ),
  );
  expect(denied.decision).toBe('deny');

  // Another orchestrator has its own bound.
  expect((await open(OTHER_ORCH, { taskId: 'ot-other-1' })).status).toBe(201);
  // The same request repeated for a task it holds answers as before (200), at the bound.
  expect((await open(orch, { taskId: 'ot-a-1' })).status).toBe(200);
  // Sub-tasks are bounded per tree (tasks.maxSubtasks), not here: the agent may still delegate.
  const sub = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
    parentTaskId: 'ot-a-1',
    taskId: 'child',
    agent: id('/agent/ot-helper'),
    ttlSeconds: 60,
    grants: [{ role: 'demo-api' }],
  });
  expect(sub.status).toBe(201);

  // Completing a task frees its place; repeating the open of a completed task still answers 200, and takes none.
  expect((await call(t.url, 'POST', '/v1/tasks/ot-a-1/complete', t.as(orch))).status).toBe(202);
  expect((await open(orch, { taskId: 'ot-a-1' })).status).toBe(200);
  expect((await open(orch, { taskId: 'ot-a-5' })).status).toBe(201);
  expect((await open(orch, { taskId: 'ot-a-6' })).status).toBe(429);

  // The kill switch ends them too.
  const revoked = await call(t.url, 'POST', '/v1/admin/revoke', t.as(ADMIN), { taskId: 'ot-a-2' });
  expect(revoked.status).toBe(202);
  expect((await open(orch, { taskId: 'ot-a-6' })).status).toBe(201);
});

test('a task that expires frees its place', async () => {
  const orch = '/orchestrator/ot-b';
  for (const n of [1, 2]) expect((await open(orch, { taskId: `ot-b-${n}` })).status).toBe(201);
  expect((await open(orch, { taskId: 'ot-b-short', ttlSeconds: 1 })).status).toBe(201);
  expect((await open(orch, { taskId: 'ot-b-3' })).status).toBe(429);
  await new Promise((r) => setTimeout(r, 1200));
  expect((await open(orch, { taskId: 'ot-b-3' })).status).toBe(201);
});

/** Whether the opener's set of open tasks (tasks.maxOpenTasks) holds `taskId`. */
const placed = async (orch: string, taskId: string) =>
  (await t.broker.deps.redis.zscore(t.broker.deps.keys.openTasksOf(id(orch)), taskId)) !== null;

test('two concurrent opens of one new id: the one that did not store it does not give back the stored task its place', async () => {
  // A client retrying an open (or an orchestrator sending it twice on purpose): the first request takes the place
  // ('added') and the second, finding it taken ('held'), stores the task first; the first then finds the task
  // stored ('exists'). Giving back "its" place there freed the place of an open task: repeated, the bound counted
  // none of them.
  const orch = '/orchestrator/ot-race';
  const store = t.broker.deps.tasks;
  const realOpen = store.open.bind(store);
  const realReserve = store.reserveOpen.bind(store);
  let firstReserved!: () => void;
  const reservedOnce = new Promise<void>((r) => {
    firstReserved = r;
  });
  let letFirstStore!: () => void;
  const firstMayStore = new Promise<void>((r) => {
    letFirstStore = r;
  });
  let reserves = 0;
  let opens = 0;
  store.reserveOpen = async (...a) => {
    const got = await realReserve(...a);
    if (reserves++ === 0) firstReserved();
    return got;
  };
  store.open = async (...a) => {
    if (opens++ === 0) await firstMayStore;
    return realOpen(...a);
  };
  try {
    const first = open(orch, { taskId: 'ot-race-1' });
    await reservedOnce;
    const second = await open(orch, { taskId: 'ot-race-1' });
    letFirstStore();
    expect([second.status, (await first).status]).toEqual([201, 200]);
  } finally {
    store.open = realOpen;
    store.reserveOpen = realReserve;
  }
  expect(await placed(orch, 'ot-race-1')).toBe(true);
  for (const n of [2, 3]) expect((await open(orch, { taskId: `ot-race-${n}` })).status).toBe(201);
  expect((await open(orch, { taskId: 'ot-race-4' })).status).toBe(429);
});

test("ending a task gives back the place of the task's current opener, not that of an earlier incarnation another instance cached", async () => {
  // Task ids come back after the retention period. An instance that cached the earlier incarnation (another
  // opener) gave back that opener's place when it ended the new one: the new opener's place stayed taken until
  // the deadline.
  const sibling = await startSibling(t);
  try {
    const [a, b] = ['/orchestrator/ot-inc-a', '/orchestrator/ot-inc-b'];
    expect((await open(a, { taskId: 'ot-inc' })).status).toBe(201);
    expect((await call(t.url, 'POST', '/v1/tasks/ot-inc/complete', t.as(a))).status).toBe(202);
    // The sibling reads (and caches) the first incarnation; then its records lapse (the retention period).
    expect((await sibling.broker.deps.tasks.fixed('ot-inc'))?.openedBy).toBe(id(a));
    await t.broker.deps.redis.del(t.broker.deps.keys.task('ot-inc'));
    expect((await open(b, { taskId: 'ot-inc' })).status).toBe(201);
    expect(await placed(b, 'ot-inc')).toBe(true);
    expect((await call(sibling.url, 'POST', '/v1/tasks/ot-inc/complete', t.as(b))).status).toBe(202);
    expect(await placed(b, 'ot-inc')).toBe(false);
  } finally {
    await sibling.close();
  }
});
