import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { largestShape, openLargestTask, sizedGet } from '../helpers/largest-task.ts';

/**
 * Red team (resource exhaustion with a valid identity): an evidence page is three pages in one answer, the
 * sub-task tree, the tree's first leases and a page of its audit records, and each stopped at ~2 MB on its own
 * (PAGE_BYTES). For a task of the largest shape the API accepts (100 scopes of ~250 characters, 32 labels, a
 * 1,000-character purpose, its leases and their credential.issue records naming every scope) one
 * `?limit=500` page answered ~4-6 MB and cost ~100-190 ms of broker CPU, for a flat 10 points: five such pages a
 * second, one agent's default budget, kept about a core busy. A whole evidence page now holds ~2 MB at most
 * (EVIDENCE_BYTES: the tree and the leases a quarter each at most, the audit records the rest), what the 10
 * points were set for, and the cursors it already had page through the rest, each item once.
 */
let t: TestBroker;
const SUBS = 20;
const CREDS = 60;
const { scopes } = largestShape();
const get = (path: string) => sizedGet(t, path);

beforeAll(async () => {
  t = await startTestBroker('rt-evidence-page-bytes', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } } },
  });
  await openLargestTask(t, 'ep');
  for (let i = 0; i < SUBS; i += 10) {
    const rs = await Promise.all(
      Array.from({ length: 10 }, (_, j) =>
        call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
          parentTaskId: 'ep',
          taskId: `s${i + j}`,
          agent: `spiffe://dev.local${AGENT}`,
          purpose: 'p'.repeat(1000),
          ttlSeconds: 600,
          grants: [{ role: 'demo-api', scopes }],
        }),
      ),
    );
    for (const r of rs) expect(r.status).toBe(201);
  }
  for (let i = 0; i < CREDS; i += 10) {
    const rs = await Promise.all(
      Array.from({ length: 10 }, (_, j) =>
        call(t.url, 'POST', '/v1/credentials', t.as(AGENT), {
          taskId: (i + j) % 2 ? 'ep' : `ep~s${(i + j) % SUBS}`,
          role: 'demo-api',
          scopes,
          ttlSeconds: 300,
        }),
      ),
    );
    for (const r of rs) expect(r.status).toBe(201);
  }
  const small = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'ep-small',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'an ordinary task',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api', scopes: ['read'] }],
  });
  expect(small.status).toBe(201);
  for (let i = 0; i < 3; i++)
    expect(
      (await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'ep-small', role: 'demo-api', ttlSeconds: 60 })).status,
    ).toBe(201);
}, 120_000);
afterAll(async () => t?.close());

test('an evidence page of a task of the largest shape holds ~2 MB at most, whatever its limit', async () => {
  const { bytes, body } = await get('/v1/tasks/ep/evidence?limit=500');
  // Before: ~4.4 MB (tree ~0.75 MB, leases ~1.6 MB, audit records ~2 MB).
  expect(bytes).toBeLessThan(2_200_000);
  // Every part still has something, and says where the rest is.
  expect(body.task.taskId).toBe('ep');
  expect(body.tree.length).toBeGreaterThan(0);
  expect(body.leases.length).toBeGreaterThan(0);
  expect(body.audit.items.length).toBeGreaterThan(0);
  expect(body.leasesNextCursor).toEqual(expect.any(String));
  expect(body.audit.nextCursor).toEqual(expect.any(String));
});

test('the cursors page through the whole tree, every lease and every audit record, each once', async () => {
  const tree: string[] = [];
  let treeCursor: string | null = null;
  do {
    const { bytes, body } = await get(`/v1/tasks/ep/evidence${treeCursor ? `?treeCursor=${encodeURIComponent(treeCursor)}` : ''}`);
    expect(bytes).toBeLessThan(2_200_000);
    tree.push(...body.tree.map((x: { taskId: string }) => x.taskId));
    treeCursor = body.treeNextCursor;
  } while (treeCursor && tree.length <= SUBS + 1);
  expect(treeCursor).toBeNull();
  expect([...tree].sort()).toEqual(['ep', ...Array.from({ length: SUBS }, (_, i) => `ep~s${i}`)].sort());

  const first = await get('/v1/tasks/ep/evidence?limit=500');
  const leases: string[] = first.body.leases.map((l: { leaseId: string }) => l.leaseId);
  let leaseCursor: string | null = first.body.leasesNextCursor;
  while (leaseCursor && leases.length <= CREDS) {
    const { body } = await get(`/v1/tasks/ep/leases?tree=true&limit=500&cursor=${encodeURIComponent(leaseCursor)}`);
    leases.push(...body.items.map((l: { leaseId: string }) => l.leaseId));
    leaseCursor = body.nextCursor;
  }
  expect(leaseCursor).toBeNull();
  expect(new Set(leases).size).toBe(CREDS);
  expect(leases).toHaveLength(CREDS);

  const audit: { streamId: string; action: string }[] = [...first.body.audit.items];
  let cursor: string | null = first.body.audit.nextCursor;
  expect(first.body.chain).toBe('intact');
  while (cursor && audit.length <= 500) {
    const { bytes, body } = await get(`/v1/tasks/ep/evidence?limit=500&cursor=${encodeURIComponent(cursor)}`);
    expect(bytes).toBeLessThan(2_200_000);
    expect(body.chain).toBe('intact');
    audit.push(...body.audit.items);
    cursor = body.audit.nextCursor;
  }
  expect(cursor).toBeNull();
  const ids = audit.map((r) => r.streamId);
  expect(new Set(ids).size).toBe(ids.length);
  expect(audit.filter((r) => r.action === 'credential.issue')).toHaveLength(CREDS);
  expect(audit.filter((r) => r.action === 'task.open')).toHaveLength(SUBS + 1);
}, 60_000);

test("an ordinary task's evidence is one page, as before", async () => {
  const { body } = await get('/v1/tasks/ep-small/evidence');
  expect(body.tree).toHaveLength(1);
  expect(body.leases).toHaveLength(3);
  expect(body.leasesNextCursor).toBeNull();
  expect(body.treeNextCursor).toBeNull();
  expect(body.audit.nextCursor).toBeNull();
  expect(body.audit.items.map((r: { action: string }) => r.action)).toEqual([
    'task.open',
    'credential.issue',
    'credential.issue',
    'credential.issue',
  ]);
});
