import { ADMIN, AGENT, ORCH, call, startTestBroker, type TestBroker, openAgentTask } from '../helpers/broker.ts';
import { largestShape, openLargestTask } from '../helpers/largest-task.ts';
import { replyBytes } from '../helpers/reply-bytes.ts';

/**
 * Red team (resource exhaustion with a valid identity): a list page costs `ceil(limit / 100)` points of its caller's
 * rate limit (src/http/read-cost.ts), by how many items it may hold, but held up to ~2 MB of them (PAGE_BYTES)
 * whatever it paid. For records of the largest shape the API accepts (leases and credential.issue records naming
 * 100 scopes of ~250 characters, ~26 KB each; tasks with 32 labels and a 1,000-character purpose too, ~36 KB;
 * approvals of such scopes, ~27 KB) one `?limit=100` page, one point, answered ~2 MB for ~30-50 ms of broker CPU:
 * one agent or orchestrator at its default 50 requests a second kept more than a core busy. A page now holds
 * ~0.5 MB per point it costs (src/lists/page-bytes.ts, at least one item, ~2 MB at most), reads from Redis about
 * what it answers, and its cursor goes on to every item once.
 */
let t: TestBroker;
const CREDS = 50;
const TASKS = 24;
const APPROVAL_TASKS = 2;
const PENDING = 20; // tasks.maxPendingApprovals
const { scopes } = largestShape();

const as = (who: string) => t.as(who);
const sized = async (path: string, who: string) => {
  const m = replyBytes(t.broker.deps.redis);
  const res = await fetch(`${t.url}${path}`, { headers: as(who) });
  const text = await res.text();
  const { bytes } = m.stop();
  expect(res.status).toBe(200);
  return { bytes: text.length, redisBytes: bytes, body: JSON.parse(text) };
};

/** Every page of `path` at `limit`: each page's answer and Redis bytes, and every item's key in order. */
async function walk(path: string, who: string, limit: number, key: (item: any) => string) {
  const sep = path.includes('?') ? '&' : '?';
  const keys: string[] = [];
  const pages: { bytes: number; redisBytes: number; items: number }[] = [];
  let cursor: string | null = null;
  do {
    const r = await sized(`${path}${sep}limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`, who);
    keys.push(...r.body.items.map(key));
    pages.push({ bytes: r.bytes, redisBytes: r.redisBytes, items: r.body.items.length });
    cursor = r.body.nextCursor;
  } while (cursor && pages.length < 200);
  expect(cursor).toBeNull();
  return { keys, pages };
}

beforeAll(async () => {
  t = await startTestBroker('rt-list-page-bytes', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } } },
    // What one request reads is measured on the broker's client: the periodic rollback look is not the page's.
    // Counted on the broker's client: the worker's seal, retention and sweeper passes are not the read's.
    broker: { dataLossCheckMs: 600_000, worker: false },
  });
  for (let i = 0; i < TASKS; i += 8)
    await Promise.all(Array.from({ length: Math.min(8, TASKS - i) }, (_, j) => openLargestTask(t, `lp${i + j}`)));
  for (let i = 0; i < CREDS; i += 10) {
    const rs = await Promise.all(
      Array.from({ length: 10 }, () =>
        call(t.url, 'POST', '/v1/credentials', as(AGENT), { taskId: 'lp0', role: 'demo-api', scopes, ttlSeconds: 300 }),
      ),
    );
    for (const r of rs) expect(r.status).toBe(201);
  }
  for (let a = 0; a < APPROVAL_TASKS; a++) {
    await openAgentTask(t, `lpa${a}`, [{ role: 'prod-deploy', scopes }], 'p'.repeat(1000), 3600);
    // Distinct requests (their TTLs differ), each its own pending approval naming every scope.
    const rs = await Promise.all(
      Array.from({ length: PENDING }, (_, i) =>
        call(t.url, 'POST', '/v1/credentials', as(AGENT), { taskId: `lpa${a}`, role: 'prod-deploy', scopes, ttlSeconds: 100 + i }),
      ),
    );
    for (const r of rs) expect(r.status).toBe(202);
  }
  await t.broker.deps.audit.flush();
}, 240_000);
afterAll(async () => t?.close());

/** The lists, each with who reads it and an item's key; each holds well over ~0.5 MB of the largest records. */
const LISTS: [string, string, (item: any) => string, number][] = [
  ['/v1/tasks/lp0/leases', AGENT, (l) => l.leaseId, CREDS],
  ['/v1/audit?taskId=lp0', AGENT, (a) => String(a.seq), CREDS + 1],
  ['/v1/tasks', ORCH, (x) => x.taskId, TASKS + APPROVAL_TASKS],
  ['/v1/approvals', AGENT, (x) => x.approvalId, APPROVAL_TASKS * PENDING],
  ['/v1/audit', ADMIN, (a) => `${a.chain}:${a.streamId}`, -1],
];

test.each(LISTS)(
  '%s at limit=100 answers ~0.5 MB at most, reading about that from Redis',
  async (path, who) => {
    const sep = path.includes('?') ? '&' : '?';
    const r = await sized(`${path}${sep}limit=100`, who);
    // Before: ~1-2 MB answered (up to PAGE_BYTES) for the one point a page of 100 costs.
    expect(r.bytes).toBeLessThan(700_000);
    expect(r.redisBytes).toBeLessThan(900_000);
    expect(r.body.items.length).toBeGreaterThan(0);
    expect(r.body.nextCursor).toEqual(expect.any(String));
  },
  60_000,
);

test.each(LISTS)(
  '%s: pages of 100 reach every item once, as pages of 500 do',
  async (path, who, key, count) => {
    const small = await walk(path, who, 100, key);
    const large = await walk(path, who, 500, key);
    for (const p of small.pages) {
      expect(p.items).toBeGreaterThan(0);
      expect(p.bytes).toBeLessThan(700_000);
    }
    // A page of 500 costs 5 points: it still holds up to ~2 MB.
    for (const p of large.pages) expect(p.bytes).toBeLessThan(2_200_000);
    expect(small.pages.length).toBeGreaterThan(1);
    expect(new Set(small.keys).size).toBe(small.keys.length);
    expect(small.keys).toEqual(large.keys);
    if (count >= 0) expect(small.keys.length).toBe(count);
  },
  120_000,
);
