import { deriveSealKey } from '../../src/audit/seal.ts';
import { verifyAudit } from '../../src/audit/verify.ts';
import { readSecret, resolvePath } from '../../src/config/load.ts';
import { silentLogger } from '../../src/logger.ts';
import type { DataLossMonitor } from '../../src/ops/recovery.ts';
import { slotOf } from '../../src/redis/keys.ts';
import type { RedisClient } from '../../src/redis/scripts.ts';
import { AGENT, ORCH, auditRecords, call, startSibling, startTestBroker, type TestBroker, uniquePrefix } from '../helpers/broker.ts';
import { recoveryMonitor, exportSealedNow } from '../helpers/recovery-harness.ts';
import { type RedisCluster, startCluster } from '../helpers/redis-topology.ts';

/**
 * Races of the per-bucket data-loss markers (src/ops/bucket-marks.ts) on a real 3-master Redis Cluster, found by
 * attacking them: a master losing its data again while its buckets are being recovered, the global slot's master
 * losing its data while a bucket recovery waits for the lock, and an instance starting while a bucket is lost.
 * The broker's own periodic check is off (an hour): each check here is the test's, so each race is the test's too.
 */
let cluster: RedisCluster;
let b: TestBroker;
const prefix = uniquePrefix('shardrace');
const monitors: DataLossMonitor[] = [];

beforeAll(async () => {
  cluster = await startCluster({ masters: 3 });
  b = await startTestBroker('shardrace', {
    prefix,
    config: {
      redis: { cluster: { nodes: cluster.urls }, prefix },
      audit: { sealIntervalSeconds: 60, sealMaxAgeSeconds: 180 },
      tasks: { maxTtlSeconds: 86_400, maxDelegationDepth: 3, maxGrants: 20, maxLeases: 0 },
    },
    broker: { dataLossCheckMs: 3_600_000 },
  });
}, 90_000);
afterAll(async () => {
  for (const m of monitors) await m.stop();
  await b?.broker.close();
  await cluster?.stop();
});

async function nodeOf(slot: number): Promise<number> {
  const c = cluster.client(0);
  const slots = (await c.cluster('SLOTS')) as unknown as [number, number, [string, number]][];
  c.disconnect();
  return cluster.ports.indexOf(slots.find(([lo, hi]) => slot >= lo && slot <= hi)![2][1]);
}

async function flushNode(i: number): Promise<void> {
  const node = cluster.client(i);
  await node.flushall();
  node.disconnect();
}

async function lossCount(kind: string, of: TestBroker = b): Promise<number> {
  const text = await (await fetch(`${of.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`jit_redis_data_loss_total{kind="${kind}"}`));
  return line ? Number(line.split(' ')[1]) : 0;
}

const taskBody = { agent: `spiffe://dev.local${AGENT}`, tenant: 'acme', purpose: 'p', ttlSeconds: 600, grants: [{ role: 'demo-api' }] };
const openTask = (url: string, taskId: string) => call(url, 'POST', '/v1/tasks', b.as(ORCH), { ...taskBody, taskId });

async function exportNow(): Promise<void> {
  await exportSealedNow(b);
}

async function verifyAll() {
  await exportNow();
  const sealKey = deriveSealKey(readSecret(b.config.secrets.kek!, 'secrets.kek'));
  return await verifyAudit(b.broker.deps.redis, b.broker.deps.keys, { exportFile: resolvePath(b.config.audit.export.file), sealKey });
}

/** A task id (never used before) whose bucket lies on master `node`. */
let used = 0;
async function taskOn(node: number): Promise<string> {
  const keys = b.broker.deps.keys;
  for (;;) {
    const id = `t-sr-${used++}`;
    if ((await nodeOf(slotOf(keys.base(keys.bucketOfTask(id))))) === node) return id;
  }
}

/** Another task id (never used before) in the bucket of task `id`. */
function sameBucket(id: string): string {
  const keys = b.broker.deps.keys;
  for (;;) {
    const other = `t-sr-${used++}`;
    if (keys.bucketOfTask(other) === keys.bucketOfTask(id)) return other;
  }
}

/** The broker's Redis client, with `before` run (once) ahead of the first call of `method` that `when` accepts. */
function hooked(method: string, when: (args: unknown[]) => boolean, before: () => Promise<void>): RedisClient {
  const redis = b.broker.deps.redis;
  let armed = true;
  return new Proxy(redis, {
    get(target, p) {
      const v = Reflect.get(target, p, target);
      if (typeof v !== 'function') return v;
      if (p !== method) return v.bind(target);
      return async (...args: unknown[]) => {
        if (armed && when(args)) {
          armed = false;
          await before();
        }
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}

/** Another instance's data-loss check on the broker's deps, that has had its first look at the healthy dataset. */
async function monitor(redis?: RedisClient): Promise<DataLossMonitor> {
  const m = recoveryMonitor(b, { ...(redis ? { redis } : {}), logger: silentLogger });
  monitors.push(m);
  await m.init();
  expect(m.ready).toBe(true);
  return m;
}

/** A check that may fail (an attempt cut short); the next one goes on. */
const checkSettled = (m: DataLossMonitor) => m.check().catch(() => {});

async function settledAndOneChain(): Promise<void> {
  const { keys, redis } = b.broker.deps;
  await b.broker.recovery.check();
  expect((await fetch(`${b.url}/readyz`)).status).toBe(200);
  // Every bucket's marker present holds its chain's head when the chain has records (else the next record forks it).
  for (let i = 0; i < keys.buckets; i++) {
    const [mark, head, exported] = await Promise.all([
      redis.get(keys.bucketMarker(i)),
      redis.get(keys.auditHead(i)),
      redis.get(keys.auditExported(i)),
    ]);
    expect(mark).not.toBeNull();
    if (exported !== null) expect({ bucket: i, head }).toEqual({ bucket: i, head: expect.any(String) });
  }
  for (const r of await verifyAll()) expect({ chain: r.chain, problems: r.problems }).toEqual({ chain: r.chain, problems: [] });
}

test('a master loses its data again while its buckets are recovered: the second loss is recovered too, not masked', async () => {
  const { keys } = b.broker.deps;
  const globalNode = await nodeOf(slotOf(keys.epoch()));
  const victim = [0, 1, 2].find((n) => n !== globalNode)!;
  const id = await taskOn(victim);
  expect((await openTask(b.url, id)).status).toBe(201);
  await exportNow();
  // The second loss lands after the lost chains were continued, before their markers are written back (the
  // records of the loss are stored then).
  const m = await monitor(
    hooked(
      'hsetnx',
      (args) => args[0] === keys.lossRecords(),
      () => flushNode(victim),
    ),
  );
  await flushNode(victim);
  await checkSettled(m);
  await checkSettled(m);
  expect(m.ready).toBe(true);
  // The task's bucket takes a record now: on a chain continued from the export, not a second seq 1.
  expect((await openTask(b.url, sameBucket(id))).status).toBe(201);
  await settledAndOneChain();
}, 60_000);

test('the global slot’s master loses its data while a bucket recovery waits for the lock: not ready until that is recovered', async () => {
  const { keys } = b.broker.deps;
  const globalNode = await nodeOf(slotOf(keys.epoch()));
  const victim = [0, 1, 2].find((n) => n !== globalNode)!;
  const id = await taskOn(victim);
  expect((await openTask(b.url, id)).status).toBe(201);
  await exportNow();
  // Flushed as the recovery takes its lock: under it, the epoch marker is gone.
  const m = await monitor(
    hooked(
      'evalsha',
      (args) => args.includes(keys.lock('recovery')),
      () => flushNode(globalNode),
    ),
  );
  await flushNode(victim);
  await checkSettled(m);
  // The signing keys and the epoch marker are gone: this instance must not answer ready.
  expect(m.ready).toBe(false);
  await checkSettled(m);
  expect(m.ready).toBe(true);
  await b.broker.recovery.check().catch(() => {});
  await settledAndOneChain();
}, 60_000);

test('another master loses its data while a whole loss is recovered: its buckets are recovered too, not masked', async () => {
  const { keys, quarantine } = b.broker.deps;
  const globalNode = await nodeOf(slotOf(keys.epoch()));
  const victim = [0, 1, 2].find((n) => n !== globalNode)!;
  const id = await taskOn(victim);
  expect((await openTask(b.url, id)).status).toBe(201);
  await exportNow();
  const m = await monitor();
  // The recovery restores the quarantines after it continued every chain, before it writes the markers back.
  let once = true;
  (m as unknown as { d: { restoreQuarantines: (e: unknown[]) => Promise<void> } }).d.restoreQuarantines = async (entries) => {
    if (once) await flushNode(victim);
    once = false;
    await quarantine.restore(entries as never);
  };
  await flushNode(globalNode);
  await checkSettled(m);
  await checkSettled(m);
  await checkSettled(m);
  expect(m.ready).toBe(true);
  await b.broker.recovery.check().catch(() => {});
  await b.broker.recovery.check().catch(() => {});
  expect((await openTask(b.url, sameBucket(id))).status).toBe(201);
  await settledAndOneChain();
}, 60_000);

test('an instance starting while a bucket is lost recovers a bucket loss, once: not a rollback', async () => {
  const { keys, redis } = b.broker.deps;
  const globalNode = await nodeOf(slotOf(keys.epoch()));
  const victim = [0, 1, 2].find((n) => n !== globalNode)!;
  const id = await taskOn(victim);
  const chain = keys.bucketOfTask(id);
  expect((await openTask(b.url, id)).status).toBe(201);
  await exportNow();
  const before = (await auditRecords(redis, keys)).filter((r) => r.action === 'broker.data_loss').length;
  await flushNode(victim);
  const late = await startSibling(b, { dataLossCheckMs: 3_600_000 });
  try {
    await late.broker.recovery.check().catch(() => {});
    await late.broker.recovery.check().catch(() => {});
    expect((await fetch(`${late.url}/readyz`)).status).toBe(200);
    expect(await lossCount('rolled_back', late)).toBe(0);
    expect(await lossCount('bucket_lost', late)).toBe(1);
    await late.broker.deps.audit.flush();
    const losses = (await auditRecords(redis, keys)).filter((r) => r.action === 'broker.data_loss');
    // Only what was written since the loss (the chain of the lost bucket starts from the export): one record in
    // `ops`, and one in the lost chain.
    expect(losses.length - before).toBeGreaterThan(0);
    const onChain = losses.filter((r) => r.chain === chain);
    expect(onChain.map((r) => [r.reason, r.detail.kind])).toEqual([['redis_data_lost', 'bucket']]);
    expect(losses.filter((r) => r.reason === 'redis_rolled_back')).toEqual([]);
  } finally {
    await late.close();
  }
  await settledAndOneChain();
}, 60_000);
