import { ADMIN, AGENT, call, startTestBroker, type TestBroker, openAgentTask } from '../helpers/broker.ts';
import { largestShape } from '../helpers/largest-task.ts';

/**
 * Red team (1a04f0c): an approvals page stops scanning once it has read 4x its byte cap of whole records
 * (WHOLE_SCAN_PAGES). A filter that matches little (`?status=pending`, the two oldest among ~2.7 MB of rejected
 * approvals of the largest shape) must then answer a cursor, never a false end of the list: paging at limit=1 and
 * limit=100 reaches both pending approvals, once each, newest first.
 */
let t: TestBroker;
const REJECTED = 100;
const { scopes } = largestShape();
const as = (who: string) => t.as(who);

beforeAll(async () => {
  t = await startTestBroker('rt-approvals-sparse', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } } },
    broker: { dataLossCheckMs: 600_000 },
  });
  await openAgentTask(t, 'sparse', [{ role: 'prod-deploy', scopes }], 'p'.repeat(1000), 3600);
  const ask = (ttlSeconds: number) =>
    call(t.url, 'POST', '/v1/credentials', as(AGENT), { taskId: 'sparse', role: 'prod-deploy', scopes, ttlSeconds });
  // The two pending ones first (oldest: last in newest-first order).
  for (const ttl of [60, 61]) expect((await ask(ttl)).status).toBe(202);
  for (let i = 0; i < REJECTED; i += 10) {
    const rs = await Promise.all(Array.from({ length: 10 }, (_, j) => ask(100 + i + j)));
    for (const r of rs) expect(r.status).toBe(202);
    const ds = await Promise.all(
      rs.map((r) => call(t.url, 'POST', `/v1/approvals/${r.body.approvalId}`, as(ADMIN), { decision: 'reject' })),
    );
    for (const d of ds) expect(d.status).toBe(200);
  }
}, 240_000);
afterAll(async () => t?.close());

test.each([1, 100])(
  '?status=pending&limit=%i reaches every pending approval behind the scan budget, once',
  async (limit) => {
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const q = `/v1/approvals?status=pending&limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
      const r = await call(t.url, 'GET', q, as(ADMIN));
      expect(r.status).toBe(200);
      seen.push(...(r.body.items as { approvalId: string; status: string }[]).map((a) => a.approvalId));
      cursor = r.body.nextCursor;
      pages += 1;
    } while (cursor && pages < 100);
    expect(cursor).toBeNull();
    expect(seen.length).toBe(2);
    expect(new Set(seen).size).toBe(2);
    // Scanning stopped at least once before reaching them (the budget was hit): more than one page.
    expect(pages).toBeGreaterThan(1);
  },
  120_000,
);
