import { Keys } from '../../src/redis/keys.ts';
import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: `GET /v1/tasks/{id}/leases?tree=true` read every task record of the tree whole (HGETALL, the big
 * JSON `d` included) on every page, only to show each lease's task status. A tree may have
 * `tasks.maxSubtasks` (50) sub-tasks of ~36 KB records each (32 labels, 100 grants, a 1 KB purpose, all
 * within bounds): a page of one lease cost ~1.8 MB read from Redis, 50 times a second per caller, the
 * amplification 2247804 took out of the task list. A page now reads the tree's ids and the status of the
 * tasks its leases belong to.
 */
let t: TestBroker;
let keys: Keys;
const SUBS = 12;
const labels = Object.fromEntries(Array.from({ length: 32 }, (_, i) => [`k${i}`, 'v'.repeat(200)]));

beforeAll(async () => {
  t = await startTestBroker('rt-tree-cost', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } } },
  });
  keys = new Keys(t.prefix);
  const root = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'tc',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p'.repeat(1024),
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
    labels,
  });
  expect(root.status).toBe(201);
  for (let i = 0; i < SUBS; i++) {
    const sub = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
      parentTaskId: 'tc',
      taskId: `s${i}`,
      agent: `spiffe://dev.local${AGENT}`,
      purpose: 'p'.repeat(1024),
      ttlSeconds: 300,
      grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
    });
    expect(sub.status).toBe(201);
  }
  for (const taskId of ['tc', 'tc~s0', `tc~s${SUBS - 1}`]) {
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api', ttlSeconds: 300 });
    expect(r.status).toBe(201);
  }
  const done = await call(t.url, 'POST', '/v1/tasks/tc~s0/complete', t.as(AGENT));
  expect(done.status).toBe(202);
}, 60_000);
afterAll(async () => {
  await t.close();
});

test('a tree lease page does not read every task record of the tree whole', async () => {
  const redis = t.broker.deps.redis as unknown as { hgetall: (key: string) => Promise<unknown> };
  const real = redis.hgetall.bind(redis);
  const whole: string[] = [];
  redis.hgetall = (key: string) => {
    if (key.includes(':task:')) whole.push(key);
    return real(key);
  };
  const items: any[] = [];
  try {
    let cursor: string | null = null;
    do {
      const r = await call(
        t.url,
        'GET',
        `/v1/tasks/tc/leases?tree=true&limit=1${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
        t.as(ORCH),
      );
      expect(r.status).toBe(200);
      items.push(...r.body.items);
      cursor = r.body.nextCursor;
    } while (cursor);
  } finally {
    redis.hgetall = real;
  }
  // Three pages; each reads the root whole (may the caller read it?) and no other task record.
  expect(whole.every((k) => k === keys.task('tc'))).toBe(true);
  expect(whole.length).toBeLessThanOrEqual(3);
  // Each lease still shows as its task is: the sub-task that ended has its lease revoking or revoked.
  expect(items.map((l) => l.taskId)).toEqual(['tc', 'tc~s0', `tc~s${SUBS - 1}`]);
  expect(items[0].status).toBe('active');
  expect(['revoking', 'revoked']).toContain(items[1].status);
  expect(items[2].status).toBe('active');
});
