import { Redis } from 'ioredis';
import { Keys } from '../../src/redis/keys.ts';
import { AGENT, ORCH, REDIS_URL, call, openAgentTask, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';

/**
 * Red team: "one agent can make the broker answer 503 to everyone". `GET /v1/tasks/{id}` and its
 * evidence read every lease of the task (up to tasks.maxLeasesTotal, 10,000; a tree 51 times that)
 * and every audit id of the tree on each call: 10,000 leases answered 3.3 MB in 1.5-3.5 s, and ten
 * such reads at once pushed Redis past its command timeout. Both now carry the first 100 leases and a
 * cursor; `GET /v1/tasks/{id}/leases` pages the rest from each task's lease index.
 */
let t: TestBroker;
let redis: Redis;
let keys: Keys;
const ISSUED = 230;
const SUB_ISSUED = 30;

beforeAll(async () => {
  t = await startTestBroker('task-leases', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0, concurrentReads: 2 } } },
  });
  redis = new Redis(REDIS_URL);
  keys = new Keys(t.prefix);
  await openAgentTask(t, 'tl-1', [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
  await issue('tl-1', ISSUED);
  const sub = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
    parentTaskId: 'tl-1',
    taskId: 'helper',
    agent: `spiffe://dev.local${AGENT}`,
    ttlSeconds: 300,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
  });
  expect(sub.status).toBe(201);
  await issue('tl-1~helper', SUB_ISSUED);
}, 60_000);
afterAll(async () => {
  redis.disconnect();
  await t.close();
});

async function issue(taskId: string, n: number): Promise<void> {
  for (let i = 0; i < n; i += 25) {
    const batch = Array.from({ length: Math.min(25, n - i) }, () =>
      call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api', ttlSeconds: 300 }),
    );
    for (const r of await Promise.all(batch)) expect(r.status).toBe(201);
  }
}

/** Every page of a lease list, following nextCursor. */
async function allPages(path: string, who = t.as(ORCH)): Promise<{ pages: number; items: any[] }> {
  const items: any[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const r = await call(t.url, 'GET', `${path}${cursor ? `${sep}cursor=${encodeURIComponent(cursor)}` : ''}`, who);
    expect(r.status).toBe(200);
    items.push(...r.body.items);
    cursor = r.body.nextCursor;
    pages += 1;
  } while (cursor);
  return { pages, items };
}

const inIssueOrder = (items: any[]) => items.every((l, i) => i === 0 || Date.parse(items[i - 1].issuedAt) <= Date.parse(l.issuedAt));

test('GET /v1/tasks/{id} carries the first 100 leases and a cursor, not all of them', async () => {
  const r = await call(t.url, 'GET', '/v1/tasks/tl-1', t.as(ORCH));
  expect(r.status).toBe(200);
  expect(r.body.leases).toHaveLength(100);
  expect(typeof r.body.leasesNextCursor).toBe('string');
  expect(inIssueOrder(r.body.leases)).toBe(true);
  // The cursor goes on at the lease list, where the rest are.
  const next = await call(
    t.url,
    'GET',
    `/v1/tasks/tl-1/leases?limit=500&cursor=${encodeURIComponent(r.body.leasesNextCursor)}`,
    t.as(ORCH),
  );
  expect(next.status).toBe(200);
  expect(next.body.items).toHaveLength(ISSUED - 100);
  expect(next.body.nextCursor).toBeNull();
  const seen = new Set([...r.body.leases, ...next.body.items].map((l: any) => l.leaseId));
  expect(seen.size).toBe(ISSUED);
});

test('GET /v1/tasks/{id}/leases pages every lease once, in issue order', async () => {
  const { pages, items } = await allPages('/v1/tasks/tl-1/leases?limit=70');
  expect(pages).toBe(Math.ceil(ISSUED / 70));
  expect(new Set(items.map((l) => l.leaseId)).size).toBe(ISSUED);
  expect(items.every((l) => l.taskId === 'tl-1' && l.status === 'active')).toBe(true);
  expect(inIssueOrder(items)).toBe(true);
  // The agent may read its task's leases too; a cursor is bound to its caller.
  const first = await call(t.url, 'GET', '/v1/tasks/tl-1/leases?limit=10', t.as(AGENT));
  expect(first.status).toBe(200);
  const stolen = await call(t.url, 'GET', `/v1/tasks/tl-1/leases?cursor=${encodeURIComponent(first.body.nextCursor)}`, t.as(ORCH));
  expect(stolen.status).toBe(400);
  expect(stolen.body.code).toBe('invalid_cursor');
  const bad = await call(t.url, 'GET', '/v1/tasks/tl-1/leases?limit=501', t.as(ORCH));
  expect(bad.status).toBe(400);
  const other = await call(t.url, 'GET', '/v1/tasks/tl-1/leases', t.as('/agent/other'));
  expect(other.status).toBe(403);
});

test('the evidence carries the tree’s first 100 leases; ?tree=true pages the whole tree', async () => {
  const e = await call(t.url, 'GET', '/v1/tasks/tl-1/evidence', t.as(ORCH));
  expect(e.status).toBe(200);
  expect(e.body.leases).toHaveLength(100);
  const tree = await allPages('/v1/tasks/tl-1/leases?tree=true&limit=500');
  expect(tree.items).toHaveLength(ISSUED + SUB_ISSUED);
  expect(tree.items.slice(ISSUED).every((l) => l.taskId === 'tl-1~helper')).toBe(true);
  // The evidence's cursor is a tree cursor: it goes on at ?tree=true, and nowhere else.
  const go = await call(
    t.url,
    'GET',
    `/v1/tasks/tl-1/leases?tree=true&limit=500&cursor=${encodeURIComponent(e.body.leasesNextCursor)}`,
    t.as(ORCH),
  );
  expect(go.status).toBe(200);
  expect(go.body.items).toHaveLength(ISSUED + SUB_ISSUED - 100);
  const wrong = await call(t.url, 'GET', `/v1/tasks/tl-1/leases?cursor=${encodeURIComponent(e.body.leasesNextCursor)}`, t.as(ORCH));
  expect(wrong.status).toBe(400);
});

test('evidence audit pages hold every record of the tree once, in chain order', async () => {
  const ids: string[] = [];
  let cursor: string | null = null;
  do {
    const r = await call(
      t.url,
      'GET',
      `/v1/tasks/tl-1/evidence?limit=37${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
      t.as(ORCH),
    );
    expect(r.status).toBe(200);
    for (const a of r.body.audit.items) ids.push(a.streamId);
    cursor = r.body.audit.nextCursor;
  } while (cursor);
  const want = [
    ...new Set([...(await redis.lrange(keys.taskAudit('tl-1'), 0, -1)), ...(await redis.lrange(keys.taskAudit('tl-1~helper'), 0, -1))]),
  ];
  expect(ids.length).toBeGreaterThanOrEqual(ISSUED + SUB_ISSUED);
  expect(new Set(ids).size).toBe(ids.length);
  expect([...ids].sort()).toEqual([...want].sort());
  const ms = (id: string) => id.split('-').map(Number) as [number, number];
  expect(
    ids.every((id, i) => i === 0 || ms(ids[i - 1]!)[0] < ms(id)[0] || (ms(ids[i - 1]!)[0] === ms(id)[0] && ms(ids[i - 1]!)[1] < ms(id)[1])),
  ).toBe(true);
});

test('a task whose leases an older release kept in a plain set is read, and ended, whole', async () => {
  await openAgentTask(t, 'tl-legacy', [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
  await issue('tl-legacy', 12);
  // What an older release wrote: the ids in a set under `task-leases:`, no index.
  const ids = await redis.zrange(keys.taskLeases('tl-legacy'), '0', '-1');
  expect(ids).toHaveLength(12);
  await redis.del(keys.taskLeases('tl-legacy'));
  await redis.sadd(keys.taskLeasesLegacy('tl-legacy'), ...ids);
  const { items } = await allPages('/v1/tasks/tl-legacy/leases?limit=5');
  expect(new Set(items.map((l) => l.leaseId))).toEqual(new Set(ids));
  // Copied into the index, and left in place for a process of that release still running (a rolling upgrade).
  expect(new Set(await redis.zrange(keys.taskLeases('tl-legacy'), '0', '-1'))).toEqual(new Set(ids));
  expect(await redis.scard(keys.taskLeasesLegacy('tl-legacy'))).toBe(12);
  // Again, and this time the task ends before anything read it: ending it revokes every lease.
  await redis.del(keys.taskLeases('tl-legacy'));
  await redis.sadd(keys.taskLeasesLegacy('tl-legacy'), ...ids);
  const done = await call(t.url, 'POST', '/v1/tasks/tl-legacy/complete', t.as(ORCH));
  expect(done.status).toBe(202);
  await waitFor(async () => {
    const r = await call(t.url, 'GET', '/v1/tasks/tl-legacy', t.as(ORCH));
    return r.body.leases.length === 12 && r.body.leases.every((l: any) => l.status === 'revoked' && l.reason === 'task_completed');
  }, 10_000);
});

test('one caller’s reads run a few at a time: the rest answer 429 with Retry-After, never 503 for everyone', async () => {
  // Review: forty pages of 500 leases at once from one agent queued 20,000 Redis commands on the shared
  // connection; the stall guard took that for Redis stalling and everyone got 503. Now a caller has at most
  // server.rateLimit.concurrentReads (2 here) reads running, each with at most 100 Redis reads in flight.
  const pages = await Promise.all(Array.from({ length: 12 }, () => call(t.url, 'GET', '/v1/tasks/tl-1/leases?limit=500', t.as(AGENT))));
  const statuses = pages.map((p) => p.status);
  expect(statuses.every((s) => s === 200 || s === 429)).toBe(true);
  expect(statuses.filter((s) => s === 429).length).toBeGreaterThan(0);
  const refused = pages.find((p) => p.status === 429)!;
  expect(refused.body.code).toBe('rate_limited');
  expect(refused.headers.get('retry-after')).toBe('1');
  // Another caller is not held up by it.
  expect((await call(t.url, 'GET', '/v1/tasks/tl-1/leases?limit=5', t.as(ORCH))).status).toBe(200);
});
