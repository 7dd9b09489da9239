import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { READS_IN_FLIGHT } from '../../src/redis/in-rounds.ts';
import { ADMIN, call, REDIS_URL, startTestBroker, uniquePrefix, type TestBroker } from '../helpers/broker.ts';

/**
 * An admin's `GET /v1/audit` without `taskId` merges every chain by time (the ops chain and one per bucket,
 * up to 1,025 at `redis.buckets: 1024`). Found in review: its first page read up to 100 records of every chain
 * before answering, one chain after another: ~100,000 records (tens of MB) and 1,025 sequential round trips for
 * a page of 10, every time the console's audit view opened. A page now reads a few records per chain to start
 * the merge (more only from the chains it takes records from), in rounds of at most READS_IN_FLIGHT.
 */
let t: TestBroker;
const BUCKETS = 256;
const PER_CHAIN = 40;

beforeAll(async () => {
  const prefix = uniquePrefix('audit-all-chains');
  t = await startTestBroker('audit-all-chains', {
    prefix,
    config: {
      redis: { url: REDIS_URL, prefix, buckets: BUCKETS },
      server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } },
    },
  });
  const { audit, keys } = t.broker.deps;
  // Every chain holds PER_CHAIN records, appended round robin, so the merged order interleaves the chains.
  for (let n = 0; n < PER_CHAIN; n++)
    await Promise.all(
      keys
        .auditChains()
        .map((c) => audit.appendTo(c, { action: 'task.open', actor: 'broker', decision: 'ok', detail: { c: String(c), n } })),
    );
}, 120_000);
afterAll(async () => {
  await t?.close();
});

/** Runs `fn`, counting the stream entries the broker's XRANGE/XREVRANGE replies carried, and the most reads in flight at once. */
async function counting<T>(fn: () => Promise<T>): Promise<{ value: T; entries: number; inFlight: number }> {
  const client = t.broker.deps.redis as unknown as { sendCommand(c: { name: string; promise: Promise<unknown> }): unknown };
  const send = client.sendCommand;
  let entries = 0;
  let open = 0;
  let inFlight = 0;
  client.sendCommand = function (this: unknown, c) {
    if (c.name === 'xrange' || c.name === 'xrevrange') {
      open += 1;
      inFlight = Math.max(inFlight, open);
      void c.promise.then(
        (r) => {
          open -= 1;
          entries += Array.isArray(r) ? r.length : 0;
        },
        () => {
          open -= 1;
        },
      );
    }
    return send.call(this, c);
  };
  try {
    return { value: await fn(), entries, inFlight };
  } finally {
    client.sendCommand = send;
  }
}

test('a page of 10 over 257 chains reads a few records per chain, in bounded rounds', async () => {
  const { value: r, entries, inFlight } = await counting(() => call(t.url, 'GET', '/v1/audit?limit=10', t.as(ADMIN)));
  expect(r.status).toBe(200);
  expect(r.body.items).toHaveLength(10);
  expect(r.body.nextCursor).toEqual(expect.any(String));
  // Before: 100 per chain (PER_CHAIN here, all of them): 257 x 40 = 10,280 records for a page of 10.
  expect(entries).toBeLessThanOrEqual((BUCKETS + 1) * 2 + 10);
  expect(inFlight).toBeLessThanOrEqual(READS_IN_FLIGHT);
});

test('paging to the end still returns every record once, merged in stream order', async () => {
  const seen: string[] = [];
  const ids: { chain: string; streamId: string }[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const path: string = `/v1/audit?limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
    const r = await call(t.url, 'GET', path, t.as(ADMIN));
    expect(r.status).toBe(200);
    for (const it of r.body.items) {
      if (it.action !== 'task.open' || it.actor !== 'broker') continue;
      seen.push(`${it.detail.c}:${it.detail.n}`);
      ids.push({ chain: String(it.chain), streamId: it.streamId });
    }
    cursor = r.body.nextCursor;
    pages += 1;
  } while (cursor && pages < 100);
  expect(cursor).toBeNull();
  expect(new Set(seen).size).toBe((BUCKETS + 1) * PER_CHAIN);
  expect(seen).toHaveLength((BUCKETS + 1) * PER_CHAIN);
  const ms = (id: string) => id.split('-').map(Number) as [number, number];
  for (let i = 1; i < ids.length; i++) {
    const [a, an] = ms(ids[i - 1]!.streamId);
    const [b, bn] = ms(ids[i]!.streamId);
    expect(a < b || (a === b && (an <= bn || ids[i - 1]!.chain !== ids[i]!.chain))).toBe(true);
  }
}, 60_000);
