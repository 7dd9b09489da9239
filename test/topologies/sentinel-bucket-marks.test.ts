import { AGENT, ORCH, call, startTestBroker, type TestBroker, uniquePrefix, waitFor } from '../helpers/broker.ts';
import { type RedisSentinel, startSentinel } from '../helpers/redis-topology.ts';

/**
 * The per-bucket data-loss markers (src/ops/bucket-marks.ts) behind Sentinel: one master holds every bucket and
 * the epoch marker, so a failover can never lose some buckets and keep the rest. A failover to a replica that
 * lagged (it has the markers, not the last writes) must not be taken for the loss of buckets (at most a rollback,
 * test/topologies/sentinel-rollback.test.ts); one to a replica that had nothing must be noticed, as a whole loss
 * (`lost`), not as the loss of every bucket (`bucket_lost`). Two replicas: the first failover leaves one behind.
 */
let sentinel: RedisSentinel;
let t: TestBroker;
const prefix = uniquePrefix('sentinel-marks');

beforeAll(async () => {
  sentinel = await startSentinel({ downAfterMs: 1000, replicas: 2 });
  t = await startTestBroker('sentinel-marks', {
    prefix,
    config: { redis: { sentinel: { name: sentinel.name, sentinels: sentinel.sentinelUrls }, prefix, commandTimeoutMs: 2000 } },
    broker: { dataLossCheckMs: 200 },
  });
}, 60_000);
afterAll(async () => {
  await t?.broker.close();
  await sentinel?.stop();
});

const metric = async (kind: string) => {
  const text = await (await fetch(`${t.url}/metrics`)).text();
  return Number(new RegExp(`jit_redis_data_loss_total\\{kind="${kind}"\\} (\\d+)`).exec(text)?.[1] ?? 0);
};
const readyz = async () => (await fetch(`${t.url}/readyz`)).status;
const taskBody = { agent: `spiffe://dev.local${AGENT}`, tenant: 'acme', purpose: 'p', ttlSeconds: 600, grants: [{ role: 'demo-api' }] };

async function openTasks(tag: string, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), { ...taskBody, taskId: `t-${tag}-${i}` });
    expect(r.status).toBe(201);
  }
}

/** Polls /readyz until stopped; the statuses seen. */
function watchReady(): { stop(): Promise<number[]> } {
  const seen: number[] = [];
  let on = true;
  const loop = (async () => {
    while (on) {
      seen.push(await readyz().catch(() => 0));
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return {
    async stop() {
      on = false;
      await loop;
      return seen;
    },
  };
}

async function pidOf(port: number): Promise<number> {
  const c = sentinel.client(port);
  try {
    return Number(/process_id:(\d+)/.exec(await c.info('server'))![1]);
  } finally {
    c.disconnect();
  }
}

async function settled(): Promise<void> {
  await waitFor(async () => (await readyz()) === 200, 30_000, 100);
  // A few more checks find nothing more.
  await new Promise((r) => setTimeout(r, 1000));
  expect(await readyz()).toBe(200);
  const { keys, redis } = t.broker.deps;
  for (let b = 0; b < keys.buckets; b++)
    expect({ b, mark: await redis.get(keys.bucketMarker(b)) }).toEqual({ b, mark: expect.any(String) });
}

test('a failover to replicas that lagged (they have the markers, not the last writes) is no bucket loss', async () => {
  await openTasks('before', 8);
  await sentinel.waitForReplica({ count: 2 });
  const before = { bucket: await metric('bucket_lost'), lost: await metric('lost') };
  // Both replicas frozen and cut off: what is written from now on reaches neither.
  const master = sentinel.client(await sentinel.masterPort());
  const replicaPorts = ((await master.call('ROLE')) as [string, number, [string, string, string][]])[2].map(([, port]) => Number(port));
  expect(replicaPorts).toHaveLength(2);
  const pids = await Promise.all(replicaPorts.map(pidOf));
  for (const pid of pids) process.kill(pid, 'SIGSTOP');
  try {
    await master.call('CLIENT', 'KILL', 'TYPE', 'replica');
    master.disconnect();
    // Tasks in most buckets (their records on the chains): lost with the master.
    await openTasks('lagged', 16);
    await new Promise((r) => setTimeout(r, 500));
    const old = await sentinel.killMaster();
    for (const pid of pids) process.kill(pid, 'SIGCONT');
    await sentinel.waitForFailover({ from: old, timeoutMs: 30_000 });
  } finally {
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // gone
      }
    }
  }
  await settled();
  expect(await metric('bucket_lost')).toBe(before.bucket);
  expect(await metric('lost')).toBe(before.lost);
  // The replica promoted did lag: the last tasks are gone, the earlier ones are there.
  expect((await call(t.url, 'GET', '/v1/tasks/t-lagged-0', t.as(ORCH))).status).toBe(404);
  expect((await call(t.url, 'GET', '/v1/tasks/t-before-0', t.as(ORCH))).status).toBe(200);
}, 90_000);

test('a failover to a replica that had nothing is a whole data loss, noticed and recovered: not the loss of every bucket', async () => {
  await openTasks('kept', 4);
  const replicaPort = await sentinel.waitForReplica({ timeoutMs: 30_000 });
  const before = { bucket: await metric('bucket_lost'), lost: await metric('lost') };
  // The replica loses everything (as one restarted without persistence, promoted before its first sync): made
  // writable and flushed; what the master writes from now on still reaches it.
  const replica = sentinel.client(replicaPort);
  await replica.config('SET', 'replica-read-only', 'no');
  expect(await replica.flushall()).toBe('OK');
  expect(await replica.dbsize()).toBeLessThan(5);
  replica.disconnect();
  const ready = watchReady();
  const old = await sentinel.killMaster();
  expect(await sentinel.waitForFailover({ from: old, timeoutMs: 30_000 })).toBe(replicaPort);
  await settled();
  const seen = await ready.stop();
  expect(seen).toContain(503);
  expect(await metric('lost')).toBe(before.lost + 1);
  expect(await metric('bucket_lost')).toBe(before.bucket);
  // The tasks went with the data.
  expect((await call(t.url, 'GET', '/v1/tasks/t-kept-0', t.as(ORCH))).status).toBe(404);
}, 90_000);
