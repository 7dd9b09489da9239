import { deriveSealKey } from '../../src/audit/seal.ts';
import { verifyAudit } from '../../src/audit/verify.ts';
import { readSecret, resolvePath } from '../../src/config/load.ts';
import { slotOf } from '../../src/redis/keys.ts';
import {
  ADMIN,
  AGENT,
  ORCH,
  auditRecords,
  call,
  startSibling,
  startTestBroker,
  type TestBroker,
  uniquePrefix,
  waitFor,
} from '../helpers/broker.ts';
import { exportSealedNow } from '../helpers/recovery-harness.ts';
import { type RedisCluster, startCluster } from '../helpers/redis-topology.ts';

/**
 * A partial data loss on a real 3-master Redis Cluster: one master comes back empty (FLUSHALL on that node: what a
 * restart without persistence or a failover to an empty replica leaves) while the others keep their data.
 *
 * Found by attacking the broker with it: when the master that lost its data was not the one holding the global
 * slot (epoch marker, signing keys), nothing noticed. /readyz stayed 200, jit_redis_data_loss_total stayed 0, no
 * `broker.data_loss` record was written, and the next record on a lost bucket's audit chain started that chain
 * again at seq 1; the exporter then appended that second seq 1 to the export, and `npm run audit:verify` said
 * BROKEN for good (a flake had hinted at it). Each bucket now has a marker of its own, read by the data-loss check.
 */
let cluster: RedisCluster;
let b: TestBroker;
/** A second instance whose data-loss check runs only when the test says (a check that came too late to see the loss). */
let late: TestBroker;
const prefix = uniquePrefix('shardloss');

beforeAll(async () => {
  cluster = await startCluster({ masters: 3 });
  b = await startTestBroker('shardloss', {
    prefix,
    config: {
      redis: { cluster: { nodes: cluster.urls }, prefix },
      // No periodic export pass within the test: each is the test's (exportNow).
      audit: { sealIntervalSeconds: 60, sealMaxAgeSeconds: 180 },
      tasks: { maxTtlSeconds: 86_400, maxDelegationDepth: 3, maxGrants: 20, maxLeases: 0 },
    },
    broker: { dataLossCheckMs: 100 },
  });
  late = await startSibling(b, { dataLossCheckMs: 3_600_000 });
}, 90_000);
afterAll(async () => {
  await late?.close();
  await b?.broker.close();
  await cluster?.stop();
});

/** Index (into cluster.ports) of the master owning `slot`. */
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

async function introspect(token: string): Promise<boolean> {
  const res = await fetch(`${b.url}/v1/introspect`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...b.as('/agent/rs') },
    body: new URLSearchParams({ token }).toString(),
  });
  return ((await res.json()) as { active: boolean }).active;
}

const taskBody = { agent: `spiffe://dev.local${AGENT}`, tenant: 'acme', purpose: 'p', ttlSeconds: 600, grants: [{ role: 'demo-api' }] };
const openTask = (taskId: string, purpose = 'p') => call(b.url, 'POST', '/v1/tasks', b.as(ORCH), { ...taskBody, taskId, purpose });

/** Polls /readyz until stopped; the statuses seen. */
function watchReady(): { stop(): Promise<number[]> } {
  const seen: number[] = [];
  let on = true;
  const loop = (async () => {
    while (on) {
      seen.push((await fetch(`${b.url}/readyz`)).status);
      await new Promise((r) => setTimeout(r, 10));
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

/** One export pass, as the broker's periodic one (every chain exported and sealed). */
async function exportNow(): Promise<void> {
  await exportSealedNow(b, late);
}

async function verifyAll() {
  await exportNow();
  const sealKey = deriveSealKey(readSecret(b.config.secrets.kek!, 'secrets.kek'));
  return await verifyAudit(b.broker.deps.redis, b.broker.deps.keys, { exportFile: resolvePath(b.config.audit.export.file), sealKey });
}

/** A task id whose bucket lies on master `node` (or, with `not`, on another one). */
async function taskOn(node: number, tag: string, not = false): Promise<string> {
  const keys = b.broker.deps.keys;
  for (let i = 0; ; i++) {
    const id = `t-sl-${tag}-${i}`;
    if (((await nodeOf(slotOf(keys.base(keys.bucketOfTask(id))))) === node) !== not) return id;
  }
}

test('one master other than the global slot’s comes back empty: noticed, not ready until recovered, recorded, and the chains stay one', async () => {
  const { keys, redis } = b.broker.deps;
  const globalNode = await nodeOf(slotOf(keys.epoch()));
  const victim = [0, 1, 2].find((n) => n !== globalNode)!;
  const lostId = await taskOn(victim, 'lost');
  const keptId = await taskOn(victim, 'kept', true);
  const lostChain = keys.bucketOfTask(lostId);
  const issued: Record<string, { leaseId: string; token: string }> = {};
  for (const id of [lostId, keptId]) {
    expect((await openTask(id)).status).toBe(201);
    // Issued through the other instance: it wrote on the chain the loss takes.
    const c = await call(late.url, 'POST', '/v1/credentials', b.as(AGENT), { taskId: id, role: 'demo-api' });
    expect(c.status).toBe(201);
    issued[id] = { leaseId: c.body.leaseId, token: c.body.credentials.access_token };
  }
  // Exported up to the lost chain's head: what the chain continues from.
  await exportNow();
  const head = (await redis.get(keys.auditHead(lostChain)))!;
  expect(await redis.get(keys.auditExported(lostChain))).toBe(head);
  expect(Number(head.split(':')[0])).toBeGreaterThan(1);
  // One more record on that chain, by the other instance, not exported: lost with the master.
  expect((await call(late.url, 'POST', '/v1/credentials', b.as(AGENT), { taskId: lostId, role: 'demo-api' })).status).toBe(201);
  await late.broker.deps.audit.flush();

  const ready = watchReady();
  await flushNode(victim);
  // A caller opens a task in a lost bucket at once (the task id is free again): its record must not fork the chain.
  const again = await openTask(lostId, 'again');
  expect(again.status).toBe(201);
  // Before the fix, an export pass now put that record into the file as a second seq 1 of the chain.
  await exportNow();
  // Settled: the bucket's marker is back (no marker on unfixed code) or the time is up, and ready.
  await waitFor(async () => (await redis.exists(keys.bucketMarker(lostChain))) === 1, 5000, 20).catch(() => {});
  await waitFor(async () => (await fetch(`${b.url}/readyz`)).status === 200, 15_000, 20);
  const seen = await ready.stop();
  expect(seen).toContain(503);
  expect(seen.filter((s) => s !== 200 && s !== 503)).toEqual([]);
  expect(await lossCount('bucket_lost')).toBe(1);
  expect(await lossCount('lost')).toBe(0);

  // Recorded in `ops` and in the lost chain, which goes on from the export's last record.
  const records = await auditRecords(redis, keys);
  const losses = records.filter((r) => r.action === 'broker.data_loss');
  expect(losses).toEqual(
    expect.arrayContaining([
      expect.objectContaining({ chain: 'ops', detail: expect.objectContaining({ kind: 'bucket' }) }),
      expect.objectContaining({
        chain: lostChain,
        detail: expect.objectContaining({ kind: 'bucket', continuedFromSeq: Number(head.split(':')[0]) }),
      }),
    ]),
  );
  // What the lost master held is gone (404, the token inactive); what the others held is untouched.
  expect((await call(b.url, 'GET', `/v1/leases/${issued[lostId]!.leaseId}`, b.as(ADMIN))).status).toBe(404);
  expect(await introspect(issued[lostId]!.token)).toBe(false);
  expect((await call(b.url, 'GET', `/v1/leases/${issued[keptId]!.leaseId}`, b.as(ADMIN))).body.status).toBe('active');
  expect(await introspect(issued[keptId]!.token)).toBe(true);

  // The other instance checks only now: its next record on the chain is refused on a head behind the one it wrote
  // last (the chain went on from the export), which alone would read as Redis going back in time. The bucket's
  // marker changed since its last check: it takes the loss as recovered by another instance, not as a rollback.
  let sameBucket = '';
  for (let i = 0; !sameBucket; i++) if (keys.bucketOfTask(`t-sl-same-${i}`) === lostChain) sameBucket = `t-sl-same-${i}`;
  expect((await call(late.url, 'POST', '/v1/tasks', b.as(ORCH), { ...taskBody, taskId: sameBucket })).status).toBe(201);
  await late.broker.deps.audit.flush();
  await late.broker.recovery.check();
  expect(await lossCount('rolled_back', late)).toBe(0);
  expect((await fetch(`${late.url}/readyz`)).status).toBe(200);
  expect(await lossCount('bucket_lost', late)).toBe(1);

  // Once an export pass has run over what followed: the export and Redis read as one chain per bucket.
  for (const r of await verifyAll()) expect({ chain: r.chain, problems: r.problems }).toEqual({ chain: r.chain, problems: [] });
}, 60_000);

test('the global slot’s master comes back empty: a whole data loss, recovered as before; no bucket loss counted', async () => {
  const { keys, redis } = b.broker.deps;
  const q = await call(b.url, 'POST', '/v1/admin/quarantine', b.as(ADMIN), { agent: 'spiffe://dev.local/agent/leaky', reason: 'x' });
  expect(q.status).toBe(201);
  const globalNode = await nodeOf(slotOf(keys.epoch()));
  const keptId = await taskOn(globalNode, 'kept2', true);
  expect((await openTask(keptId)).status).toBe(201);
  await b.broker.deps.audit.flush();
  const lostBefore = await lossCount('lost');
  const ready = watchReady();
  await flushNode(globalNode);
  await waitFor(async () => (await redis.get(keys.epoch())) !== null && (await fetch(`${b.url}/readyz`)).status === 200, 15_000, 20);
  // Settled: a few more checks find nothing more to recover.
  await new Promise((r) => setTimeout(r, 500));
  const seen = await ready.stop();
  expect(seen).toContain(503);
  expect(await lossCount('lost')).toBe(lostBefore + 1);
  expect(await lossCount('bucket_lost')).toBe(1);
  expect((await fetch(`${b.url}/readyz`)).status).toBe(200);
  // Every bucket's marker is back, the quarantine restored from the export, the surviving task still open.
  for (let i = 0; i < keys.buckets; i++) expect(await redis.get(keys.bucketMarker(i))).not.toBeNull();
  expect((await call(b.url, 'GET', '/v1/admin/quarantine', b.as(ADMIN))).body.items).toHaveLength(1);
  expect((await call(b.url, 'GET', `/v1/tasks/${keptId}`, b.as(ADMIN))).body.status).toBe('open');
  for (const r of await verifyAll()) expect({ chain: r.chain, problems: r.problems }).toEqual({ chain: r.chain, problems: [] });
}, 60_000);
