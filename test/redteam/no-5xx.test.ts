import { ADMIN, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: "No request, however malformed, answers 500" (contract section 3).
 * Time bounds that Date.parse accepts but Redis stream ids cannot hold
 * answered 500. Bounds must now be RFC 3339 date-times (years 0000-9999, as
 * docs/openapi.yaml says); those before 1970 are clamped.
 */
let t: TestBroker;

beforeAll(async () => {
  t = await startTestBroker('rt-no-5xx');
});
afterAll(async () => {
  await t.close();
});

test.each([
  'until=-271821-04-20T00:00:00Z',
  'since=-271821-04-20T00:00:00Z',
  'since=-000001-01-01T00:00:00Z&until=-000001-01-01T00:00:00Z',
])('GET /v1/audit?%s answers 200 or 400, never 500', async (q) => {
  const r = await call(t.url, 'GET', `/v1/audit?${q}`, t.as(ADMIN));
  expect([r.status, r.body.code]).not.toEqual([500, 'internal_error']);
  expect(r.status).toBeLessThan(500);
});

test('RFC 3339 bounds before 1970 are valid: `since` is clamped, an `until` before 1970 matches nothing', async () => {
  await t.broker.deps.audit.append({ action: 'task.open', actor: 'spiffe://dev.local/orchestrator/main', decision: 'allow' });
  const early = await call(t.url, 'GET', '/v1/audit?since=0000-01-01T00:00:00Z&limit=1', t.as(ADMIN));
  expect(early.status).toBe(200);
  expect(early.body.items).toHaveLength(1);
  const before = await call(t.url, 'GET', '/v1/audit?until=1969-12-31T23:59:59Z', t.as(ADMIN));
  expect([before.status, before.body]).toEqual([200, { items: [], nextCursor: null }]);
  const late = await call(t.url, 'GET', '/v1/audit?until=9999-12-31T23:59:59Z&limit=1', t.as(ADMIN));
  expect(late.status).toBe(200);
  expect(late.body.items).toHaveLength(1);
});

test('a time that is not an RFC 3339 date-time is a 400 invalid_request', async () => {
  const r = await call(t.url, 'GET', '/v1/audit?since=-271821-04-20T00:00:00Z', t.as(ADMIN));
  expect([r.status, r.body.code]).toEqual([400, 'invalid_request']);
});
