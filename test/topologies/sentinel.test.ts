import { AGENT, ORCH, call, startTestBroker, uniquePrefix, waitFor, type TestBroker } from '../helpers/broker.ts';
import { type RedisSentinel, startSentinel } from '../helpers/redis-topology.ts';

/**
 * The broker behind Sentinel (contract section 8): a failover is followed
 * without a restart, no request answers 500 while it happens (503 at most),
 * and /readyz says ready only on a writable master. Before, the broker kept
 * writing to the old master (READONLY 500s) while /readyz said ready.
 */
let sentinel: RedisSentinel;
let t: TestBroker;
const prefix = uniquePrefix('sentinel');

beforeAll(async () => {
  sentinel = await startSentinel({ downAfterMs: 1000, replicas: 1 });
  t = await startTestBroker('sentinel', {
    prefix,
    config: { redis: { sentinel: { name: sentinel.name, sentinels: sentinel.sentinelUrls }, prefix, commandTimeoutMs: 1000 } },
  });
}, 60_000);
afterAll(async () => {
  await t?.broker.close();
  await sentinel?.stop();
});

test("the master's maxmemory-policy decides readiness: an evicting replica does not, an evicting master does", async () => {
  const replica = sentinel.client(await sentinel.waitForReplica());
  const master = sentinel.client(await sentinel.masterPort());
  const readyz = () => call(t.url, 'GET', '/readyz', {});
  try {
    await replica.config('SET', 'maxmemory-policy', 'allkeys-lru');
    // A new round of checks (at most one a second) still finds the master on noeviction.
    await new Promise((r) => setTimeout(r, 1100));
    expect((await readyz()).status).toBe(200);
    await master.config('SET', 'maxmemory-policy', 'volatile-lru');
    const r = await waitFor(async () => {
      const r = await readyz();
      return r.status === 503 && r;
    });
    expect(r.body.problems).toEqual([expect.stringMatching(/^maxmemory-policy is volatile-lru; the broker needs noeviction/)]);
  } finally {
    await master.config('SET', 'maxmemory-policy', 'noeviction');
    await replica.config('SET', 'maxmemory-policy', 'noeviction');
    master.disconnect();
    replica.disconnect();
  }
  await waitFor(async () => (await readyz()).status === 200);
}, 30_000);

test('a master killed mid-traffic: no 500s, then issuance and revocation on the new master', async () => {
  const agent = `spiffe://dev.local${AGENT}`;
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-sen',
    agent,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  expect(open.status).toBe(201);
  await sentinel.waitForReplica();

  const statuses: number[] = [];
  let running = true;
  const traffic = (async () => {
    while (running) {
      const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-sen', role: 'demo-api' }).catch(() => ({
        status: 0,
      }));
      statuses.push(r.status);
      await new Promise((res) => setTimeout(res, 20));
    }
  })();
  await new Promise((r) => setTimeout(r, 300));
  const old = await sentinel.killMaster();
  await sentinel.waitForFailover({ from: old, timeoutMs: 20_000 });
  // Traffic goes on until requests succeed on the new master again.
  await waitFor(async () => statuses.slice(-5).length === 5 && statuses.slice(-5).every((s) => s === 201), 20_000, 100);
  running = false;
  await traffic;

  expect(statuses.filter((s) => s >= 500 && s !== 503)).toEqual([]);
  expect(statuses.filter((s) => s === 201).length).toBeGreaterThan(5);
  const ready = await waitFor(async () => {
    const r = await call(t.url, 'GET', '/readyz', {});
    return r.status === 200 && r;
  }, 10_000);
  expect(ready.body.checks.redis).toBe(true);

  // What was written to the new master works end to end. (Leases issued on the old master after the
  // last replication are lost with it: the data-loss monitor notices if the signing keys went too.)
  const done = await call(t.url, 'POST', '/v1/tasks/t-sen/complete', t.as(ORCH));
  expect(done.status).toBe(202);
  const task = await call(t.url, 'GET', '/v1/tasks/t-sen', t.as(ORCH));
  await waitFor(async () => {
    const leases = (await call(t.url, 'GET', '/v1/tasks/t-sen', t.as(ORCH))).body.leases as { status: string }[];
    return leases.length > 0 && leases.every((l) => l.status === 'revoked');
  }, 10_000);
  expect(task.body.status).toBe('completed');
}, 90_000);
