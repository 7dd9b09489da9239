import { performance } from 'node:perf_hooks';
import { AGENT, call, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team (review of 50cc898): an expensive read's extra cost was cut to the whole budget (`burst`), but
 * authentication had already spent one point of it, so with a `burst` under the read's cost (10 for an
 * evidence page, 5 for `limit=500`) the read cost burst + 1 and could never be answered: every evidence page
 * was 429 with a Retry-After that retrying never met, even for a caller that had made no other call.
 * docs/edge.md: "A cost above the whole budget (`burst`) is cut to it."
 *
 * perSecond 1, burst 4 (the reserve of 3 takes 30 s to come back): each caller's first read fits.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('rt-read-cost-small', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 1, burst: 4 } } },
  });
  await openAgentTask(t, 'rcs-1', [{ role: 'demo-api' }]);
});
afterAll(async () => {
  await t?.close();
});

test('with a burst under an evidence page cost, a fresh caller still gets one evidence page (it spends the whole budget)', async () => {
  // openAgentTask spent the orchestrator's budget, not the agent's: the agent has spent nothing yet.
  const sentAt = performance.now();
  const first = await call(t.url, 'GET', '/v1/tasks/rcs-1/evidence', t.as(AGENT));
  expect(first.status).toBe(200);
  // It took the whole budget: the reserve is empty for 30 s. Calls of any kind now fit only in a new one-second
  // window, which opens a second after the first call was charged: on a slow host the page itself may take that
  // long (CI, 2026-12-03), so three calls at once get at most one through then, and none while it is surely the same
  // window. Had the page cost less, the reserve's leftover points would let two or three through.
  const sameWindow = performance.now() - sentAt < 500;
  const next = await Promise.all([1, 2, 3].map(() => call(t.url, 'GET', '/v1/tasks/rcs-1', t.as(AGENT))));
  const through = next.filter((r) => r.status === 200).length;
  expect(next.every((r) => r.status === 200 || r.status === 429)).toBe(true);
  expect(through).toBeLessThanOrEqual(sameWindow ? 0 : 1);
});

test('with a burst under a list page cost, a fresh caller still gets one page of limit=500', async () => {
  const who = t.as('/orchestrator/small-budget');
  expect((await call(t.url, 'GET', '/v1/tasks?limit=500', who)).status).toBe(200);
});
