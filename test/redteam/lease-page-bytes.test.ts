import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { replyBytes } from '../helpers/reply-bytes.ts';

/**
 * Red team: a lease page had a count bound (`?limit=` at most 500) but no byte bound, and a lease record holds
 * its scopes (up to 100 of 256 characters: ~26 KB, within every bound; a request that omits `scopes` gets all
 * of the grant's). A task's own agent issued 500 such credentials (under `tasks.maxLeases`, 1,000), then each
 * `GET /v1/tasks/{id}/leases?limit=500` read ~13 MB from Redis and answered ~13 MB, and `GET /v1/tasks/{id}`
 * and the evidence ~2.6 MB each for their first 100 leases, with 16 such reads running per caller
 * (`server.rateLimit.concurrentReads`). The audit records of those issuances name the same scopes: a page of
 * `GET /v1/audit?taskId=` at `limit=500` was ~13 MB too. Task and approval lists stop at ~2 MB a page; lease
 * and audit pages now do too (at least one item), and the cursor goes on after the last one shown.
 */
let t: TestBroker;
const ISSUED = 180;
const scopes = Array.from({ length: 100 }, (_, j) => `${String(j).padStart(3, '0')}${'s'.repeat(253)}`);

beforeAll(async () => {
  t = await startTestBroker('rt-lease-bytes', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } } },
    // What one request reads is measured on the broker's client: the periodic rollback look is not the page's.
    // Counted on the broker's client: the worker's seal, retention and sweeper passes are not the read's.
    broker: { dataLossCheckMs: 600_000, worker: false },
  });
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'lb',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 3600,
    grants: [{ role: 'demo-api', scopes }],
  });
  expect(open.status).toBe(201);
  for (let i = 0; i < ISSUED; i += 20) {
    const rs = await Promise.all(
      Array.from({ length: Math.min(20, ISSUED - i) }, () =>
        call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'lb', role: 'demo-api' }),
      ),
    );
    for (const r of rs) expect(r.status).toBe(201);
  }
}, 120_000);
afterAll(async () => t?.close());

const size = async (path: string) => {
  const m = replyBytes(t.broker.deps.redis);
  const res = await fetch(`${t.url}${path}`, { headers: t.as(AGENT) });
  const text = await res.text();
  const { bytes } = m.stop();
  return { status: res.status, text, redisBytes: bytes, body: JSON.parse(text) };
};

test('a lease page answers and reads ~2 MB at most, and its cursor goes on to every lease once, in issue order', async () => {
  const ids: string[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const r = await size(`/v1/tasks/lb/leases?limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    expect(r.status).toBe(200);
    // Before: ~4.7 MB answered and read from Redis for 180 leases (~13 MB at 500).
    expect(r.text.length).toBeLessThan(2_200_000);
    expect(r.redisBytes).toBeLessThan(3_500_000);
    expect(r.body.items.length).toBeGreaterThan(0);
    ids.push(...r.body.items.map((l: { leaseId: string }) => l.leaseId));
    cursor = r.body.nextCursor;
    pages += 1;
  } while (cursor && pages < 10);
  expect(cursor).toBeNull();
  expect(pages).toBeGreaterThan(1);
  expect(new Set(ids).size).toBe(ISSUED);
  const issuedAt = await Promise.all(ids.map((id) => t.broker.deps.redis.hget(t.broker.deps.keys.lease(id), 'issuedAt')));
  expect(issuedAt.map(Number)).toEqual([...issuedAt.map(Number)].sort((a, b) => a - b));
}, 60_000);

test('the leases embedded in a task read and in its evidence stop at ~0.5 MB, leasesNextCursor going on from there', async () => {
  for (const path of ['/v1/tasks/lb', '/v1/tasks/lb/evidence']) {
    const r = await size(path);
    expect(r.status).toBe(200);
    // Before: ~2.6 MB for the first 100 leases. Both now carry ~0.5 MB of them (EMBEDDED_LEASE_BYTES,
    // EVIDENCE_PART_BYTES), and the evidence's whole answer, its audit records too, is ~2 MB at most (EVIDENCE_BYTES,
    // test/redteam/evidence-page-bytes.test.ts, test/redteam/task-read-bytes.test.ts).
    expect(JSON.stringify(r.body.leases).length).toBeLessThan(600_000);
    expect(r.text.length).toBeLessThan(2_200_000);
    const shown: string[] = r.body.leases.map((l: { leaseId: string }) => l.leaseId);
    expect(shown.length).toBeGreaterThan(0);
    expect(shown.length).toBeLessThan(100);
    // The rest from where the embedded leases stopped (tree=true for the evidence's), none twice.
    const tree = path.endsWith('evidence') ? '&tree=true' : '';
    const next = await size(`/v1/tasks/lb/leases?limit=500${tree}&cursor=${encodeURIComponent(r.body.leasesNextCursor)}`);
    expect(next.status).toBe(200);
    const after = next.body.items.map((l: { leaseId: string }) => l.leaseId);
    expect(after.filter((id: string) => shown.includes(id))).toEqual([]);
    expect(after.length).toBeGreaterThan(0);
  }
}, 60_000);

test('an audit page of the task answers ~2 MB at most, and its cursor goes on to every record once, in chain order', async () => {
  for (const path of ['/v1/audit?taskId=lb&limit=500', '/v1/tasks/lb/evidence?limit=500']) {
    const seqs: number[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const r = await size(`${path}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
      expect(r.status).toBe(200);
      const page = path.startsWith('/v1/audit') ? r.body : r.body.audit;
      // Before: ~4.8 MB (180 credential.issue records of ~26 KB, and the task's opening) in one page.
      expect(JSON.stringify(page).length).toBeLessThan(2_200_000);
      // The evidence reads three parts, each bounded: its leases, its records, and each record's predecessor (chain check).
      expect(r.redisBytes).toBeLessThan(path.startsWith('/v1/audit') ? 3_500_000 : 8_000_000);
      seqs.push(...page.items.map((a: { seq: number }) => a.seq));
      cursor = page.nextCursor;
      pages += 1;
    } while (cursor && pages < 10);
    expect(cursor).toBeNull();
    expect(pages).toBeGreaterThan(1);
    expect(seqs.length).toBe(ISSUED + 1);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
  }
}, 60_000);
