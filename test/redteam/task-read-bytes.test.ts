import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { largestShape, openLargestTask, sizedGet } from '../helpers/largest-task.ts';

/**
 * Red team (resource exhaustion with a valid identity): `GET /v1/tasks/{taskId}` costs one point of its caller's
 * rate limit, like any cheap read, but carried the task's first 100 leases up to ~2 MB of them (PAGE_BYTES, a
 * whole list page's worth, which a list page charges 5 points for). For a task of the largest shape the API
 * accepts (100 scopes of ~250 characters, 32 labels, a 1,000-character purpose, leases naming every scope) one
 * read answered ~2.05 MB for ~30-75 ms of broker CPU (on the shared 2-core test machine): at the default 50
 * requests a second one agent kept more than a core busy. The leases a task read carries now stop at ~0.5 MB
 * (EMBEDDED_LEASE_BYTES, at least one lease), and `leasesNextCursor`, which the answer already had, goes on at
 * `GET /v1/tasks/{taskId}/leases`: ~0.55 MB and ~16-24 ms per read. A task of
 * ordinary leases answers as before (its first 100, whole).
 */
let t: TestBroker;
const CREDS = 90;
const SMALL = 101;
const { scopes } = largestShape();
const get = (path: string) => sizedGet(t, path);
const issue = async (taskId: string, n: number, body: Record<string, unknown>) => {
  for (let i = 0; i < n; i += 10) {
    const rs = await Promise.all(
      Array.from({ length: Math.min(10, n - i) }, () =>
        call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'demo-api', ttlSeconds: 300, ...body }),
      ),
    );
    for (const r of rs) expect(r.status).toBe(201);
  }
};

beforeAll(async () => {
  t = await startTestBroker('rt-task-read-bytes', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } } },
  });
  await openLargestTask(t, 'tr');
  await issue('tr', CREDS, { scopes });
  const small = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'tr-small',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'an ordinary task',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api', scopes: ['read'] }],
  });
  expect(small.status).toBe(201);
  await issue('tr-small', SMALL, {});
}, 180_000);
afterAll(async () => t?.close());

const ids = (leases: { leaseId: string }[]) => leases.map((l) => l.leaseId);

test('a task read of a task of the largest shape answers ~0.5 MB of leases at most, the cursor going on to every lease once', async () => {
  const { bytes, body } = await get('/v1/tasks/tr');
  // Before: ~2.05 MB (its first ~75 leases, up to PAGE_BYTES of them).
  expect(bytes).toBeLessThan(700_000);
  expect(body.taskId).toBe('tr');
  expect(body.leases.length).toBeGreaterThan(0);
  expect(body.leasesNextCursor).toEqual(expect.any(String));
  // The rest at the leases list, from where the read stopped: every lease once, in issue order.
  const seen = ids(body.leases);
  let cursor: string | null = body.leasesNextCursor;
  for (let pages = 0; cursor && pages < 10; pages++) {
    const next = await get(`/v1/tasks/tr/leases?limit=500&cursor=${encodeURIComponent(cursor)}`);
    seen.push(...ids(next.body.items));
    cursor = next.body.nextCursor;
  }
  expect(cursor).toBeNull();
  expect(seen.length).toBe(CREDS);
  expect(new Set(seen).size).toBe(CREDS);
  const all: string[] = [];
  cursor = null;
  do {
    const p = await get(`/v1/tasks/tr/leases?limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    all.push(...ids(p.body.items));
    cursor = p.body.nextCursor;
  } while (cursor);
  expect(seen).toEqual(all);
}, 60_000);

test('a task of ordinary leases answers as before: its first 100 leases, whole, and the cursor to the rest', async () => {
  const { body } = await get('/v1/tasks/tr-small');
  const page = await get('/v1/tasks/tr-small/leases?limit=100');
  expect(body.leases.length).toBe(100);
  // The same leases, field for field, as the list page shows them, and its cursor going on.
  expect(body.leases).toEqual(page.body.items);
  expect(body.leasesNextCursor).toEqual(expect.any(String));
  const rest = await get(`/v1/tasks/tr-small/leases?limit=500&cursor=${encodeURIComponent(body.leasesNextCursor)}`);
  expect(rest.body.items.length).toBe(SMALL - 100);
  expect(rest.body.nextCursor).toBeNull();
}, 60_000);
