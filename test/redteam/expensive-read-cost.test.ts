import { AGENT, auditRecords, call, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { EVIDENCE_POINTS } from '../../src/http/read-cost.ts';

/**
 * Red team: one agent made the broker spend ~35-40 ms of CPU per evidence call, at the 50 calls a second
 * its rate limit allowed: an evidence page cost its caller as much of the limit as a credential request.
 * It now costs EVIDENCE_POINTS (10) requests, and a list page one per 100 records it may hold.
 *
 * The budget here: 1 request a second and a reserve of 29 that takes 290 s to come back, so what a caller
 * may do in the test's few seconds is 30 requests (plus one per second that passes): each case leaves a
 * margin of several seconds of those before a refusal it expects could turn into an answer.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('rt-read-cost', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 1, burst: 30 } } },
  });
  await openAgentTask(t, 'rc-1', [{ role: 'demo-api' }]);
});
afterAll(async () => {
  await t?.close();
});

async function statuses(n: number, send: () => Promise<{ status: number }>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push((await send()).status);
  return out;
}

test('an evidence page costs its caller ten requests of its rate limit; the refusal is an audited denial', async () => {
  expect(EVIDENCE_POINTS).toBe(10);
  const evidence = () => call(t.url, 'GET', '/v1/tasks/rc-1/evidence', t.as(AGENT));
  // 20 + 5 of the agent's 30: a third evidence page does not fit (before: all answered, 8 of 30).
  expect(await statuses(2, evidence)).toEqual([200, 200]);
  expect(await statuses(5, () => call(t.url, 'GET', '/v1/tasks/rc-1', t.as(AGENT)))).toEqual([200, 200, 200, 200, 200]);
  const refused = await evidence();
  expect(refused.status).toBe(429);
  expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
  const denials = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter(
    (r) => r.action === 'access.deny' && r.actor === `spiffe://dev.local${AGENT}` && r.reason === 'rate_limited',
  );
  expect(denials).toHaveLength(1);
  // Refused on the evidence page's extra cost (authentication's 1 fitted): the record says what it would have cost.
  expect(denials[0]!.detail).toEqual({ budget: 'identity', points: EVIDENCE_POINTS - 1 });
});

test('a list page costs one request per 100 records it may hold; a default page costs one', async () => {
  // limit=500: 5 requests each, so 6 pages of 30; before: 30 pages.
  const big = await statuses(8, () => call(t.url, 'GET', '/v1/tasks?limit=500', t.as('/orchestrator/big')));
  const ok = big.filter((s) => s === 200).length;
  expect(ok).toBeGreaterThanOrEqual(6);
  expect(ok).toBeLessThanOrEqual(7); // a 7th only if every page came in a second of its own
  expect(big.at(-1)).toBe(429);
  // Another caller's default pages cost one each: 25 in a row, inside its 30.
  const small = await statuses(25, () => call(t.url, 'GET', '/v1/tasks', t.as('/orchestrator/small')));
  expect(small.every((s) => s === 200)).toBe(true);
});

test('HEAD costs as GET does', async () => {
  const who = t.as('/orchestrator/head');
  const open = await call(t.url, 'POST', '/v1/tasks', who, {
    taskId: 'rc-2',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  expect(open.status).toBe(201);
  expect(await statuses(5, () => call(t.url, 'GET', '/v1/tasks/rc-2', who))).toEqual([200, 200, 200, 200, 200]);
  // 1 + 5 + 2 × 10 of 30: a third does not fit.
  expect(await statuses(3, () => call(t.url, 'HEAD', '/v1/tasks/rc-2/evidence', who))).toEqual([200, 200, 429]);
});
