import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: `GET /v1/approvals` walked the approval index of EVERY bucket and
 * loaded each approval to check whether the caller may read it, up to 5,000
 * per page. Any identity at all (no task, no approval) made the broker read
 * thousands of records per call, 50 calls a second: measured here, 6,000
 * approvals cost a stranger's call 5,000 HGETALLs and ~250 ms for an empty
 * page. Lists now read per-identity indexes (approvals of the tasks one is the
 * agent or the opener of); only approvers and admins walk the bucket-wide one.
 */
let t: TestBroker;

beforeAll(async () => {
  t = await startTestBroker('rt-list-amp', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } }, tasks: { maxPendingApprovals: 0 } },
  });
});
afterAll(async () => {
  await t.close();
});

test('a caller who may read no approval costs the broker a bounded number of reads per list call', async () => {
  await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'rt-amp',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 3600,
    grants: [{ role: 'prod-deploy' }],
  });
  // 1,200 approvals of someone else's task (distinct ttlSeconds, so distinct requests).
  for (let i = 1; i <= 1200; i += 50)
    await Promise.all(
      Array.from({ length: 50 }, (_, j) =>
        call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'rt-amp', role: 'prod-deploy', ttlSeconds: i + j }),
      ),
    );

  const redis = t.broker.deps.redis as unknown as { hgetall: (...a: unknown[]) => Promise<unknown> };
  const real = redis.hgetall.bind(redis);
  let reads = 0;
  redis.hgetall = (...a: unknown[]) => {
    reads += 1;
    return real(...a);
  };
  try {
    const r = await call(t.url, 'GET', '/v1/approvals?limit=10', t.as('/agent/stranger'));
    expect(r.status).toBe(200);
    expect(r.body.items).toEqual([]);
  } finally {
    redis.hgetall = real;
  }
  expect(reads).toBeLessThanOrEqual(100);

  // The task's agent and orchestrator still see all of them, through their own indexes.
  for (const who of [AGENT, ORCH]) {
    const page = await call(t.url, 'GET', '/v1/approvals?limit=500&status=pending', t.as(who));
    expect(page.status).toBe(200);
    expect(page.body.items).toHaveLength(500);
    expect(page.body.nextCursor).toEqual(expect.any(String));
  }
}, 60_000);
