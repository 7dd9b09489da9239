import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { replyBytes } from '../helpers/reply-bytes.ts';

/**
 * Red team: `GET /v1/tasks/{id}/evidence` read every record of the task's tree whole on every call (HGETALL,
 * the JSON `d` with grants, labels and purpose), its children sets one task after another, and its lease
 * indexes one task after another. A default tree (tasks.maxSubtasks 50) of ~36 KB records, all within
 * bounds, was ~1.9 MB read from Redis and ~320 commands per call (measured), and the task's own agent may
 * call it over and over; tasks.maxSubtasks could be set to 1,000,000 (or 0, no bound): ~36 MB and 2.4 s per
 * call at 1,000. Now the immutable part of each record comes from the task cache and only the fields that
 * change are read; children sets a level at a time; tasks.maxSubtasks is at most 1,000.
 */
let t: TestBroker;
const SUBS = 50;
const NESTED = 5; // of the 50, under s0
const scopes = Array.from({ length: 100 }, (_, j) => `${String(j).padStart(3, '0')}${'s'.repeat(253)}`);
const labels = Object.fromEntries(Array.from({ length: 32 }, (_, j) => [`k${j}`, 'v'.repeat(256)]));
const sub = (parentTaskId: string, taskId: string, ttlSeconds = 600) => ({
  parentTaskId,
  taskId,
  agent: `spiffe://dev.local${AGENT}`,
  purpose: 'p'.repeat(1024),
  ttlSeconds,
  grants: [{ role: 'demo-api', scopes }],
});
const evidence = (q = '') => call(t.url, 'GET', `/v1/tasks/et/evidence${q}`, t.as(AGENT));
/**
 * Every page of the tree, in order (`around` wraps each call): an evidence page holds ~0.5 MB of it at most
 * (EVIDENCE_PART_BYTES, test/redteam/evidence-page-bytes.test.ts), ~14 of these ~36 KB records.
 */
async function treePages(around = (send: () => ReturnType<typeof evidence>) => send()) {
  const pages: Awaited<ReturnType<typeof evidence>>[] = [];
  let cursor: string | null = null;
  do {
    const q = cursor ? `?treeCursor=${encodeURIComponent(cursor)}` : '';
    const r = await around(() => evidence(q));
    expect(r.status).toBe(200);
    pages.push(r);
    cursor = r.body.treeNextCursor;
  } while (cursor && pages.length < 20);
  expect(cursor).toBeNull();
  return { pages, tree: pages.flatMap((r) => r.body.tree) };
}

beforeAll(async () => {
  t = await startTestBroker('rt-evidence-tree', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } } },
    // Counted on the broker's client: the worker's seal, retention and sweeper passes are not the read's.
    broker: { worker: false },
  });
  const root = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'et',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p'.repeat(1024),
    ttlSeconds: 3600,
    grants: [{ role: 'demo-api', scopes }],
    labels,
  });
  expect(root.status).toBe(201);
  // Opened out of name order, ten at a time: the tree lists each level in opening order (test/lists/tree-paging.test.ts).
  const first = Array.from({ length: SUBS - NESTED }, (_, i) => `s${SUBS - NESTED - 1 - i}`);
  for (let i = 0; i < first.length; i += 10) {
    const rs = await Promise.all(first.slice(i, i + 10).map((id) => call(t.url, 'POST', '/v1/tasks', t.as(AGENT), sub('et', id))));
    for (const r of rs) expect(r.status).toBe(201);
  }
  for (let i = 0; i < NESTED; i++)
    expect((await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), sub('et~s0', `n${i}`, 300))).status).toBe(201);
  for (const taskId of ['et~s3', 'et~s0~n1']) {
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'demo-api', scopes: [scopes[0]], ttlSeconds: 60 });
    expect(r.status).toBe(201);
  }
}, 120_000);
afterAll(async () => t.close());

test('a repeated evidence call reads the fields that change, not every record of the tree whole', async () => {
  expect((await treePages()).tree).toHaveLength(SUBS + 1);
  const client = t.broker.deps.redis as unknown as { sendCommand(c: { name: string; promise: Promise<unknown> }): unknown };
  for (let round = 0; round < 3; round++) {
    // Children sets read a level at a time: the root's 45 children together, not one after another.
    const send = client.sendCommand;
    let inFlight = 0;
    let peak = 0;
    client.sendCommand = function (this: unknown, c) {
      if (c.name === 'smembers') {
        inFlight += 1;
        peak = Math.max(peak, inFlight);
        const done = () => {
          inFlight -= 1;
        };
        c.promise.then(done, done);
      }
      return send.call(this, c);
    };
    const read: number[] = [];
    let tree: unknown[];
    try {
      ({ tree } = await treePages(async (page) => {
        const m = replyBytes(t.broker.deps.redis);
        try {
          return await page();
        } finally {
          read.push(m.stop().bytes);
        }
      }));
    } finally {
      client.sendCommand = send;
    }
    expect(tree).toHaveLength(SUBS + 1);
    // Was ~1.9 MB on every call (51 records of ~36 KB); the answers themselves still carry them all.
    expect(JSON.stringify(tree).length).toBeGreaterThan(1_500_000);
    for (const bytes of read) expect(bytes).toBeLessThan(200_000);
    expect(peak).toBeGreaterThanOrEqual(SUBS - NESTED);
  }
}, 60_000);

test('the tree is complete and current: breadth first, each task as GET /v1/tasks/{id} shows it', async () => {
  await evidence(); // cache warm
  // Changed after the cache was filled: the evidence shows it ended.
  expect((await call(t.url, 'POST', '/v1/tasks/et~s7/complete', t.as(AGENT))).status).toBe(202);
  const { pages, tree } = await treePages();
  const ids = tree.map((x: { taskId: string }) => x.taskId);
  // Breadth first in opening order: the root, its sub-tasks batch by batch (the order within one concurrent batch
  // is the order Redis ran them), then the nested ones, opened one after another.
  const level1 = Array.from({ length: SUBS - NESTED }, (_, i) => `et~s${SUBS - NESTED - 1 - i}`);
  const level2 = Array.from({ length: NESTED }, (_, i) => `et~s0~n${i}`);
  expect(ids).toHaveLength(1 + level1.length + level2.length);
  expect(ids[0]).toBe('et');
  for (let i = 0; i < level1.length; i += 10) {
    const batch = level1.slice(i, i + 10);
    expect(ids.slice(1 + i, 1 + i + batch.length).sort()).toEqual(batch.sort());
  }
  expect(ids.slice(1 + level1.length)).toEqual(level2);
  for (const task of tree) {
    const one = await call(t.url, 'GET', `/v1/tasks/${encodeURIComponent(task.taskId)}`, t.as(AGENT));
    const { leases: _l, leasesNextCursor: _c, ...fields } = one.body;
    expect(task).toEqual(fields);
  }
  const s7 = tree.find((x: { taskId: string }) => x.taskId === 'et~s7');
  expect(s7).toMatchObject({ status: 'completed', reason: expect.any(String), endedAt: expect.any(String) });
  expect(tree[ids.indexOf('et~s0~n1')]).toMatchObject({ parentTaskId: 'et~s0', depth: 2, grants: [{ role: 'demo-api', scopes }] });
  // The leases of the tree, the root's first then breadth first.
  for (const r of pages) {
    expect(r.body.leases.map((l: { taskId: string }) => l.taskId)).toEqual(['et~s3', 'et~s0~n1']);
    expect(r.body.leasesNextCursor).toBeNull();
  }
});

test('the audit records of the tree, paged, are every record once in chain order, and the chain is intact', async () => {
  const seen: { seq: number; streamId: string }[] = [];
  let cursor: string | null = null;
  do {
    const r: Awaited<ReturnType<typeof call>> = await evidence(`?limit=7${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    expect(r.status).toBe(200);
    expect(r.body.chain).toBe('intact');
    seen.push(...r.body.audit.items);
    cursor = r.body.audit.nextCursor;
  } while (cursor);
  const { redis, keys } = t.broker.deps;
  const tree = await t.broker.deps.tasks.subtree('et');
  expect(tree).toHaveLength(SUBS + 1);
  const want = new Set((await Promise.all(tree.map((id) => redis.lrange(keys.taskAudit(id), 0, -1)))).flat());
  expect(seen.map((a) => a.streamId).sort()).toEqual([...want].sort());
  const seqs = seen.map((a) => a.seq);
  expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
  expect(new Set(seqs).size).toBe(seqs.length);
});

test('a task id opened again (another incarnation) is shown as Redis holds it now, not as cached', async () => {
  await treePages(); // et~s9 cached (on a later page of the tree than the first)
  const { redis, keys } = t.broker.deps;
  const key = keys.task('et~s9');
  const [d, createdAt] = await redis.hmget(key, 'd', 'createdAt');
  const fixed = JSON.parse(d!);
  await redis.hset(key, 'd', JSON.stringify({ ...fixed, purpose: 'another incarnation' }), 'createdAt', String(Number(createdAt) + 1));
  const s9 = (await treePages()).tree.find((x: { taskId: string }) => x.taskId === 'et~s9');
  expect(s9.purpose).toBe('another incarnation');
  expect(s9.createdAt).toBe(new Date(Number(createdAt) + 1).toISOString());
});
