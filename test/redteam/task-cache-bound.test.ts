import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: the per-process cache of task records (src/tasks/task-store.ts) was bounded by count only
 * (10,000 records of up to tens of KB each: hundreds of MB), and a task was cached before the "may you
 * read it?" check, so any caller's reads of any task ids filled it. It is now bounded by the records'
 * length too, and a read, credential request or sub-task open refused to its caller does not add the task.
 */
const BOUND = 200_000; // chars of task JSON; each task here is ~10 KB
const N = 40;
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('rt-task-cache', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 1000 } } },
    broker: { taskCacheChars: BOUND },
  });
});
afterAll(async () => {
  await t?.close();
});

/** 32 labels of 256 characters: ~10 KB of record. */
const bigLabels = (i: number) => Object.fromEntries(Array.from({ length: 32 }, (_, k) => [`l${k}`, `${i}-${k}-`.padEnd(256, 'x')]));

async function open(id: string, labels: Record<string, string> = {}): Promise<void> {
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: id,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
    labels,
  });
  expect(r.status).toBe(201);
}

/** The cache's entries as task records, whatever it wraps them in. */
function cached(): Map<string, unknown> {
  const cache = (t.broker.deps.tasks as unknown as { fixedCache: Map<string, unknown> }).fixedCache;
  const out = new Map<string, unknown>();
  for (const [k, v] of cache.entries()) out.set(k, (v as { task?: unknown }).task ?? v);
  return out;
}
const charsOf = (m: Map<string, unknown>) => [...m.values()].reduce<number>((n, v) => n + JSON.stringify(v).length, 0);

test('reading many large tasks keeps the cache within its length bound; evicted ones read again the same', async () => {
  for (let i = 0; i < N; i++) await open(`big-${i}`, bigLabels(i));
  for (let i = 0; i < N; i++) {
    const r = await call(t.url, 'GET', `/v1/tasks/big-${i}`, t.as(ORCH));
    expect(r.status).toBe(200);
    expect(r.body.labels.l0).toBe(bigLabels(i).l0);
  }
  const held = cached();
  expect(charsOf(held)).toBeLessThanOrEqual(BOUND);
  expect(held.size).toBeLessThan(N);
  expect(held.size).toBeGreaterThan(5);
  // The first ones left the cache; reading one again reads Redis and answers the same.
  expect(held.has('big-0')).toBe(false);
  const again = await call(t.url, 'GET', '/v1/tasks/big-0', t.as(ORCH));
  expect(again.status).toBe(200);
  expect(again.body.labels).toEqual(bigLabels(0));
});

test("a caller refused a task's read, credentials or sub-task does not put it in the cache", async () => {
  await open('guarded');
  t.broker.deps.tasks.forget('guarded');
  const stranger = t.as('/agent/intruder');
  expect((await call(t.url, 'GET', '/v1/tasks/guarded', stranger)).status).toBe(403);
  expect((await call(t.url, 'GET', '/v1/tasks/guarded/evidence', stranger)).status).toBe(403);
  expect((await call(t.url, 'GET', '/v1/tasks/guarded/leases', stranger)).status).toBe(403);
  expect((await call(t.url, 'POST', '/v1/credentials', stranger, { taskId: 'guarded', role: 'tickets-api' })).status).toBe(403);
  const sub = await call(t.url, 'POST', '/v1/tasks', stranger, {
    parentTaskId: 'guarded',
    agent: 'spiffe://dev.local/agent/x',
    ttlSeconds: 60,
    grants: [{ role: 'tickets-api' }],
  });
  expect(sub.status).toBe(403);
  expect(cached().has('guarded')).toBe(false);
  // Its own agent's read caches it, as before.
  expect((await call(t.url, 'GET', '/v1/tasks/guarded', t.as(AGENT))).status).toBe(200);
  expect(cached().has('guarded')).toBe(true);
});
