import { ADMIN, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { readCost } from '../../src/http/read-cost.ts';

/**
 * Review leftovers of the read costs (src/http/read-cost.ts):
 * - `GET /v1/tasks?limit=1000` was charged 5 points (its limit cut to 500) before the route refused it with 400:
 *   a refused request cost five times what the broker spent on it.
 * - The admin quarantine list is a list page (`?limit=` up to 500) but cost 1 point whatever its limit.
 *
 * perSecond 1, burst 30: a reserve of 29 that takes 290 s to come back, so each caller has ~30 points here.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('read-cost-leftovers', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 1, burst: 30 } } },
  });
});
afterAll(async () => {
  await t?.close();
});

async function statuses(n: number, send: () => Promise<{ status: number }>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push((await send()).status);
  return out;
}

test("a limit the route refuses costs only authentication's point, whatever it asks for", async () => {
  expect(readCost('GET', '/v1/tasks', '1000')).toBe(1);
  expect(readCost('GET', '/v1/tasks', '2.5')).toBe(1);
  expect(readCost('GET', '/v1/tasks', ['500', '500'])).toBe(1);
  expect(readCost('GET', '/v1/tasks', '500')).toBe(5);
  expect(readCost('GET', '/v1/tasks', undefined)).toBe(1);
  // 20 refusals in a row fit in 30 points (before: 5 each, so the 7th was 429).
  const who = t.as('/orchestrator/over-limit');
  expect(await statuses(20, () => call(t.url, 'GET', '/v1/tasks?limit=1000', who))).toEqual(Array(20).fill(400));
});

test('the admin quarantine list costs one point per 100 records its limit allows, like the other lists', async () => {
  expect(readCost('GET', '/v1/admin/quarantine', '500')).toBe(5);
  expect(readCost('GET', '/console/api/v1/admin/quarantine', '500')).toBe(5);
  expect(readCost('GET', '/v1/admin/quarantine', undefined)).toBe(1);
  expect(readCost('DELETE', '/v1/admin/quarantine/x', undefined)).toBe(1);
  // 30 points: 6 pages of 5 at most (a 7th only if every page came in a second of its own); before: all 8 answered.
  const pages = await statuses(8, () => call(t.url, 'GET', '/v1/admin/quarantine?limit=500', t.as(ADMIN)));
  const ok = pages.filter((s) => s === 200).length;
  expect(ok).toBeGreaterThanOrEqual(6);
  expect(ok).toBeLessThanOrEqual(7);
  expect(pages.at(-1)).toBe(429);
});
