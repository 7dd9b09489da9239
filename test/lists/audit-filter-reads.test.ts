import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { FILTERED_READS } from '../../src/lists/audit-query.ts';
import { AGENT, call, openAgentTask, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';

/**
 * A filtered `GET /v1/audit?taskId=` page reads each of the task's records from its chain's stream (one
 * XRANGE each) to see whether it matches. Found in review: a page read up to 500 of them whatever its
 * `limit`, so the task's own agent, asking for an action that never happens, made the broker send 500
 * Redis reads for an empty page, 50 times a second. Now a filtered page reads at most FILTERED_READS
 * (100), and its cursor goes on from there.
 */
let t: TestBroker;
const RECORDS = 260;
const agent = `spiffe://dev.local${AGENT}`;

beforeAll(async () => {
  t = await startTestBroker('audit-filter-reads', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } } },
    // Counted on the broker's client: the worker's seal, retention and sweeper passes are not the read's.
    broker: { worker: false },
  });
  await openAgentTask(t, 'afr', [{ role: 'demo-api' }]);
  const { audit, redis, keys } = t.broker.deps;
  // The task's records: every tenth one by the agent with action `lease.revoke`, the rest by the broker (`credential.issue`).
  for (let i = 0; i < RECORDS; i++) {
    await audit.append(
      i % 10 === 0
        ? { action: 'lease.revoke', actor: agent, decision: 'ok', taskId: 'afr', detail: { i } }
        : { action: 'credential.issue', actor: 'broker', decision: 'ok', taskId: 'afr', detail: { i } },
    );
  }
  await waitFor(async () => (await redis.llen(keys.taskAudit('afr'))) >= RECORDS, 10_000);
}, 60_000);
afterAll(async () => {
  await t?.close();
});

/** Runs `fn`, counting the XRANGE commands the broker's connection sends meanwhile. */
async function countingReads<T>(fn: () => Promise<T>): Promise<{ value: T; reads: number }> {
  const client = t.broker.deps.redis as unknown as { sendCommand(c: { name: string }): unknown };
  const send = client.sendCommand;
  let reads = 0;
  client.sendCommand = function (this: unknown, c) {
    if (c.name === 'xrange') reads += 1;
    return send.call(this, c);
  };
  try {
    return { value: await fn(), reads };
  } finally {
    client.sendCommand = send;
  }
}

/** Every page of `query` for the agent: the items, and the most XRANGEs one page sent. */
async function pages(query: string): Promise<{ items: { detail: { i: number } }[]; pages: number; maxReads: number }> {
  const items: { detail: { i: number } }[] = [];
  let cursor: string | null = null;
  let n = 0;
  let maxReads = 0;
  do {
    const path: string = `/v1/audit?taskId=afr&${query}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
    const { value: r, reads } = await countingReads(() => call(t.url, 'GET', path, t.as(AGENT)));
    expect(r.status).toBe(200);
    maxReads = Math.max(maxReads, reads);
    items.push(...r.body.items);
    cursor = r.body.nextCursor;
    n += 1;
  } while (cursor && n < 100);
  return { items, pages: n, maxReads };
}

test('a filtered page that matches nothing reads at most FILTERED_READS records, and its cursor goes on to the end', async () => {
  const none = await pages('action=never.happens&limit=500');
  expect(none.items).toEqual([]);
  // Before: one page of 500 reads (the task's 261 records, all of them).
  expect(none.maxReads).toBeLessThanOrEqual(FILTERED_READS);
  expect(none.pages).toBeGreaterThanOrEqual(Math.ceil(RECORDS / FILTERED_READS));
});

test('paging a filter to the end finds every match, in order, whatever the limit', async () => {
  const expected = Array.from({ length: RECORDS / 10 }, (_, k) => k * 10);
  for (const limit of [1, 7, 500]) {
    const got = await pages(`actor=${encodeURIComponent(agent)}&action=lease.revoke&limit=${limit}`);
    expect(got.items.map((r) => r.detail.i)).toEqual(expected);
    expect(got.maxReads).toBeLessThanOrEqual(FILTERED_READS);
  }
  // Unfiltered pages read what they show: a limit of 500 is one page of every record.
  const all = await pages('limit=500');
  expect(all.items.length).toBe(RECORDS + 1); // and the task.open record
});
