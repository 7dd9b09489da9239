import { call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: an admin searching the audit log. `GET /v1/audit?actor=...` reads
 * at most 20,000 records per page; when none of them matched it answered
 * `{ items: [], nextCursor: null }`, which says "no such records, last page",
 * so whatever the actor did after the first 20,000 records of the log was
 * never found. A page that runs out of its scan budget now ends with a cursor
 * that resumes the scan.
 */
let t: TestBroker;

beforeAll(async () => {
  t = await startTestBroker('rt-audit-query', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } } },
  });
});
afterAll(async () => {
  await t.close();
});

test("an actor's records after the first 20,000 of the log are found (or the page says there is more)", async () => {
  // A busy day: 20,100 ordinary records, then one by the actor under investigation.
  const filler = Array.from({ length: 20_100 }, (_, i) => ({
    action: 'task.open' as const,
    actor: 'spiffe://dev.local/orchestrator/main',
    decision: 'allow' as const,
    detail: { n: i },
  }));
  for (let i = 0; i < filler.length; i += 2000) await t.broker.deps.audit.appendAll(filler.slice(i, i + 2000));
  await t.broker.deps.audit.append({
    action: 'access.deny',
    actor: 'spiffe://dev.local/agent/mallory',
    decision: 'deny',
    reason: 'not_admin',
  });

  const page = await call(t.url, 'GET', `/v1/audit?actor=${encodeURIComponent('spiffe://dev.local/agent/mallory')}`, t.as('/ops/alice'));
  expect(page.status).toBe(200);
  const found = page.body.items.length > 0 || page.body.nextCursor !== null;
  expect({ items: page.body.items.length, nextCursor: page.body.nextCursor, foundOrMore: found }).toEqual(
    expect.objectContaining({ foundOrMore: true }),
  );
}, 60_000);

test('a client that follows nextCursor to the end finds every match', async () => {
  const found: { actor: string; action: string }[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const q = `actor=${encodeURIComponent('spiffe://dev.local/agent/mallory')}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
    const page = await call(t.url, 'GET', `/v1/audit?${q}`, t.as('/ops/alice'));
    expect(page.status).toBe(200);
    found.push(...page.body.items);
    cursor = page.body.nextCursor;
    pages += 1;
  } while (cursor && pages < 10);
  expect(cursor).toBeNull();
  expect(found).toEqual([expect.objectContaining({ actor: 'spiffe://dev.local/agent/mallory', action: 'access.deny' })]);
}, 60_000);
