import { ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { replyBytes } from '../helpers/reply-bytes.ts';

/**
 * Red team 6, finding 3. `GET /v1/tasks` read every scanned task whole (HGETALL, the immutable `d` with grants,
 * labels and purpose) before applying its filters, up to 5,000 per page. Tasks of ~36 KB records (within every
 * bound: 100 scopes of 256 characters, 32 labels of 256 characters, a 1 KiB purpose) listed with a filter that
 * matches none cost ~7.2 MB read from Redis for 200 tasks. Now the filters read small plain fields, the record
 * is read only for tasks kept, and a page stops at a byte budget.
 */
let t: TestBroker;
const N = 200;

beforeAll(async () => {
  t = await startTestBroker('lists-bytes', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } } },
    // Counted on the broker's client: the worker's seal, retention and sweeper passes are not the read's.
    broker: { worker: false },
  });
  const big = (i: number) => ({
    taskId: `big-${i}`,
    agent: 'spiffe://dev.local/agent/x',
    tenant: 'acme',
    purpose: 'p'.repeat(1024),
    ttlSeconds: 3600,
    grants: [{ role: 'demo-api', scopes: Array.from({ length: 100 }, (_, j) => `${String(j).padStart(3, '0')}${'s'.repeat(253)}`) }],
    labels: Object.fromEntries(Array.from({ length: 32 }, (_, j) => [`k${j}`, 'v'.repeat(256)])),
  });
  for (let i = 0; i < N; i += 5) {
    const rs = await Promise.all(Array.from({ length: 5 }, (_, j) => call(t.url, 'POST', '/v1/tasks', t.as(ORCH), big(i + j))));
    for (const r of rs) expect(r.status).toBe(201);
  }
}, 120_000);
afterAll(async () => t.close());

test('a task list page whose filters match nothing does not read every scanned task whole', async () => {
  const m = replyBytes(t.broker.deps.redis);
  const r = await call(t.url, 'GET', '/v1/tasks?tenant=nomatch&limit=1', t.as(ORCH));
  const { bytes } = m.stop();
  expect(r.status).toBe(200);
  expect(r.body.items).toEqual([]);
  expect(r.body.nextCursor).toBeNull();
  // Was ~7.2 MB for 200 tasks. The filters need status, agent, tenant and opener only.
  expect(bytes).toBeLessThan(1_000_000);
}, 60_000);

test('a page of big records stops at its byte budget; the cursor walks every task once', async () => {
  const seen = new Set<string>();
  let cursor: string | null = null;
  let pages = 0;
  do {
    const q: string = `/v1/tasks?tenant=acme&limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
    const r = await call(t.url, 'GET', q, t.as(ORCH));
    expect(r.status).toBe(200);
    expect(JSON.stringify(r.body).length).toBeLessThan(3_000_000);
    for (const it of r.body.items as { taskId: string }[]) {
      expect(seen.has(it.taskId)).toBe(false);
      seen.add(it.taskId);
    }
    cursor = r.body.nextCursor;
    pages += 1;
  } while (cursor && pages < 20);
  expect(seen.size).toBe(N);
  expect(pages).toBeGreaterThan(1);
}, 60_000);

test('a task stored before its opener was a plain field is still filtered by its opener (read from its record)', async () => {
  const { redis, keys } = t.broker.deps;
  await redis.hdel(keys.task('big-7'), 'openedBy');
  const one = await call(t.url, 'GET', '/v1/tasks?limit=1', t.as(ORCH));
  const opener = encodeURIComponent(one.body.items[0].openedBy as string);
  const other = await call(t.url, 'GET', '/v1/tasks?orchestrator=spiffe://dev.local/orch/other&limit=1', t.as(ORCH));
  expect(other.status).toBe(200);
  expect(other.body.items).toEqual([]);
  const ids: string[] = [];
  let cursor: string | null = null;
  do {
    const r = await call(
      t.url,
      'GET',
      `/v1/tasks?orchestrator=${opener}&limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
      t.as(ORCH),
    );
    ids.push(...(r.body.items as { taskId: string }[]).map((x) => x.taskId));
    cursor = r.body.nextCursor;
  } while (cursor);
  expect(ids).toContain('big-7');
  expect(ids).toHaveLength(N);
}, 60_000);
