import { Redis } from 'ioredis';
import { Keys } from '../../src/redis/keys.ts';
import { AGENT, ORCH, REDIS_URL, auditRecords, call, openAgentTask, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';

/**
 * Red team: `server.rateLimit.concurrentReads` bounds the list, task and audit reads one caller has running
 * at once (else one agent's pages queue enough Redis commands for the stall guard to answer 503 to
 * everyone). Two ways around it or past the audit log:
 * - it counted GET only, while Express runs a GET route for HEAD too: a caller sent its pages as HEAD,
 *   any number at once, each doing every Redis read of the GET (the body is merely not sent);
 * - its 429 was counted in metrics but never audited, though every other 429 of a per-identity limit is
 *   an `access.deny` record (contract section 7: every denial is a record, whatever the route).
 */
let t: TestBroker;
let redis: Redis;
let keys: Keys;

beforeAll(async () => {
  t = await startTestBroker('rt-read-slots', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0, concurrentReads: 2 } } },
  });
  redis = new Redis(REDIS_URL);
  keys = new Keys(t.prefix);
  await openAgentTask(t, 'rs-1', [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
  const issued = await Promise.all(
    Array.from({ length: 20 }, () =>
      call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'rs-1', role: 'tickets-api', ttlSeconds: 300 }),
    ),
  );
  for (const r of issued) expect(r.status).toBe(201);
}, 60_000);
afterAll(async () => {
  redis.disconnect();
  await t.close();
});

/** Runs `fn` while every lease page read takes 300 ms, so that concurrent reads surely overlap; counts the reads. */
async function withSlowReads<T>(fn: () => Promise<T>): Promise<{ result: T; reads: number }> {
  const leases = t.broker.deps.leases as unknown as { getMany: (ids: string[]) => Promise<unknown[]> };
  const real = leases.getMany.bind(leases);
  let reads = 0;
  leases.getMany = async (ids: string[]) => {
    reads += 1;
    await new Promise((r) => setTimeout(r, 300));
    return real(ids);
  };
  try {
    return { result: await fn(), reads };
  } finally {
    leases.getMany = real;
  }
}

test('HEAD reads count against concurrentReads like GET reads', async () => {
  const { result, reads } = await withSlowReads(() =>
    Promise.all(Array.from({ length: 12 }, () => call(t.url, 'HEAD', '/v1/tasks/rs-1/leases?limit=500', t.as(AGENT)))),
  );
  const statuses = result.map((r) => r.status);
  expect(statuses.every((s) => s === 200 || s === 429)).toBe(true);
  // Two run (concurrentReads: 2); the other ten are refused before reading anything.
  expect(statuses.filter((s) => s === 200)).toHaveLength(2);
  expect(reads).toBe(2);
  expect(result.find((r) => r.status === 429)!.headers.get('retry-after')).toBe('1');
});

test('a read refused by concurrentReads is an audited denial', async () => {
  const { result } = await withSlowReads(() =>
    Promise.all(Array.from({ length: 6 }, () => call(t.url, 'GET', '/v1/tasks/rs-1/leases?limit=500', t.as(ORCH)))),
  );
  const refused = result.filter((r) => r.status === 429);
  expect(refused.length).toBeGreaterThan(0);
  expect(refused[0]!.body.code).toBe('rate_limited');
  const records = await auditRecords(redis, keys);
  const denials = records.filter(
    (r) => r.action === 'access.deny' && r.reason === 'rate_limited' && r.actor === 'spiffe://dev.local/orchestrator/main',
  );
  // The first denial of the minute is written at once; the rest fold into a counted record later.
  expect(denials).toHaveLength(1);
  expect(denials[0]).toMatchObject({ decision: 'deny', detail: { budget: 'reads' } });
});

test('a caller that hangs up keeps its read slot until the read is done', async () => {
  // The slot was freed on the socket's close: a caller that hung up at once had its read go on in the
  // broker, every Redis read of it, while the slot served its next request; sent one after another, any
  // number of reads ran at once.
  const leases = t.broker.deps.leases as unknown as { getMany: (ids: string[]) => Promise<unknown[]> };
  const real = leases.getMany.bind(leases);
  let running = 0;
  let most = 0;
  leases.getMany = async (ids: string[]) => {
    running += 1;
    most = Math.max(most, running);
    try {
      await new Promise((r) => setTimeout(r, 400));
      return await real(ids);
    } finally {
      running -= 1;
    }
  };
  try {
    for (let i = 0; i < 8; i++) {
      const stop = new AbortController();
      const sent = fetch(`${t.url}/v1/tasks/rs-1/leases?limit=500`, { headers: t.as(AGENT), signal: stop.signal }).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 40));
      stop.abort();
      await sent;
      await new Promise((r) => setTimeout(r, 10));
    }
    // The last read ends ~400 ms after it started; on a loaded machine later: waited for, not slept on.
    await waitFor(async () => running === 0, 10_000, 20);
  } finally {
    leases.getMany = real;
  }
  expect(most).toBeLessThanOrEqual(2);
  // Once those reads are done the caller reads again.
  expect((await call(t.url, 'GET', '/v1/tasks/rs-1/leases?limit=5', t.as(AGENT))).status).toBe(200);
});
