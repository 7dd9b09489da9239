import { expect } from '@jest/globals';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { deriveSealKey } from '../../src/audit/seal.ts';
import { verifyAudit } from '../../src/audit/verify.ts';
import { readSecret, resolvePath } from '../../src/config/load.ts';
import { RECOVERING } from '../../src/ops/bucket-marks.ts';
import { script } from '../../src/redis/scripts.ts';
import { AGENT, ORCH, auditRecords, call, type TestBroker, testRawConfig, UNLIMITED_SERVER, waitFor } from '../helpers/broker.ts';
import { type BrokerProcess, START_TIMEOUT_MS, processFixture } from '../helpers/process.ts';
import { redisCutProxy } from '../helpers/redis-cut-proxy.ts';
import { type RedisStandalone, startStandalone } from '../helpers/redis-topology.ts';
import { exportSealedNow } from '../helpers/recovery-harness.ts';

/**
 * A broker process SIGKILLed in the middle of a bucket recovery (src/ops/recovery.ts recoverBuckets), then started
 * again: the recovery must be redone or resumed under the same loss id (`recovering:<id>` in the lost markers), the
 * lost chain continued from the export once (not forked, not continued twice), the loss recorded once, /readyz 200
 * again, and the export and Redis one chain per bucket (audit verify).
 *
 * On a redis-server of its own, reached by the victim through a proxy that cuts it off at a chosen script of the
 * recovery (redis-cut-proxy.ts), so the kill lands exactly between two of its steps. A bucket's loss is made by
 * deleting every key of its hash tag at once (one DEL): what the broker sees of a Cluster master that came back
 * empty, for that bucket; the recovery's steps do not depend on the topology (only the markers' reading does,
 * one MGET here: test/topologies/shard-loss.test.ts covers the Cluster's).
 *
 * An in-process broker on the same Redis (its own data-loss check off) is only the test's tool: exports, reads
 * the records, verifies.
 */
const fx = processFixture();
let redis: RedisStandalone | undefined;
let proxy: Awaited<ReturnType<typeof redisCutProxy>> | undefined;
let admin: Redis | undefined;
fx.onCleanup(async () => {
  admin?.disconnect();
  await proxy?.close();
  await redis?.stop();
});

const taskBody = { agent: `spiffe://dev.local${AGENT}`, tenant: 'acme', purpose: 'p', ttlSeconds: 600, grants: [{ role: 'demo-api' }] };

async function exportNow(t: TestBroker): Promise<void> {
  await exportSealedNow(t);
}

/** Deletes every key of `bucket` in one command: the bucket's data gone, the rest kept. */
async function loseBucket(t: TestBroker, bucket: number): Promise<void> {
  const pattern = `${t.broker.deps.keys.base(bucket).replace(/[*?[\]\\]/g, '\\$&')}*`;
  const found: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await admin!.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    found.push(...batch);
    cursor = next;
  } while (cursor !== '0');
  expect(found).toContain(t.broker.deps.keys.bucketMarker(bucket));
  expect(await admin!.del(...found)).toBe(found.length);
}

const killedAt = [
  // Its markers hold `recovering:<id>`; nothing continued or recorded yet.
  { step: 'the lost chain’s continuation', script: 'loss-continue' },
  // Chain continued, the loss's records stored under its id, the markers not yet written back.
  { step: 'the markers’ write-back', script: 'bucket-mark-set' },
];

test.each(killedAt)(
  'killed at $step of a bucket recovery, then started again: recovered once, one chain, ready',
  async ({ script: name }) => {
    redis ??= await startStandalone();
    proxy ??= await redisCutProxy(redis.url);
    if (!admin) {
      admin = redis.client();
      await admin.connect();
    }
    const prefix = fx.prefix(`bucket-killed-${name}`);
    const raw = testRawConfig(fx.issuer, prefix, {
      server: UNLIMITED_SERVER,
      // No periodic export pass: each is the test's.
      audit: { sealIntervalSeconds: 60, sealMaxAgeSeconds: 180 },
    });
    const dir = mkdtempSync(join(tmpdir(), 'jit-bucket-killed-'));
    const viaProxy = join(dir, 'proxy.yaml');
    const direct = join(dir, 'direct.yaml');
    writeFileSync(viaProxy, JSON.stringify({ ...raw, redis: { url: proxy.url, prefix } }));
    writeFileSync(direct, JSON.stringify({ ...raw, redis: { url: redis.url, prefix } }));
    const tool = await fx.startBroker(`bucket-killed-${name}`, direct, { dataLossCheckMs: 3_600_000 });
    const { keys } = tool.broker.deps;
    const rd = tool.broker.deps.redis;

    let victim: BrokerProcess = await fx.start(viaProxy, { args: ['--api'] });
    await waitFor(async () => (await fetch(`${victim.url}/readyz`)).status === 200, 30_000, 100);
    const id = `t-bk-${name}`;
    const bucket = keys.bucketOfTask(id);
    expect((await call(victim.url, 'POST', '/v1/tasks', fx.as(ORCH), { ...taskBody, taskId: id })).status).toBe(201);
    expect((await call(victim.url, 'POST', '/v1/credentials', fx.as(AGENT), { taskId: id, role: 'demo-api' })).status).toBe(201);
    await waitFor(async () => (await rd.get(keys.auditHead(bucket))) !== null, 5000);
    await exportNow(tool);
    const exported = (await rd.get(keys.auditExported(bucket)))!;
    expect(exported).toBe(await rd.get(keys.auditHead(bucket)));

    const cut = proxy.arm(script(name).sha, undefined, {
      // Once a 330-s timeout in CI with nothing said: where the victim stood instead.
      state: async () =>
        `marker ${await rd.get(keys.bucketMarker(bucket))}, recovery lock ${await rd.get(keys.lock('recovery'))}, victim ${victim.child.exitCode === null ? 'running' : `exited ${victim.child.exitCode}`}; its output:\n${victim.output().slice(-4000)}`,
    });
    await loseBucket(tool, bucket);
    await cut;
    await victim.kill('SIGKILL');
    // Caught mid-recovery: its lock held, the lost bucket's marker not back.
    expect(await rd.exists(keys.lock('recovery'))).toBe(1);
    const left = await rd.get(keys.bucketMarker(bucket));
    expect(left?.startsWith(RECOVERING)).toBe(true);

    victim = await fx.start(direct, { args: ['--api'] });
    await waitFor(async () => (await fetch(`${victim.url}/readyz`)).status === 200, 45_000, 100);
    // The marker is back, under the loss's id the killed attempt put in it (resumed, not a second loss).
    const mark = await rd.get(keys.bucketMarker(bucket));
    expect(mark).toBe(left!.slice(RECOVERING.length));
    for (let b = 0; b < keys.buckets; b++) expect((await rd.get(keys.bucketMarker(b)))?.startsWith(RECOVERING)).toBe(false);
    // Nothing left over (the flag of continued chains goes at the next periodic check: finishLeft).
    await waitFor(async () => (await rd.exists(keys.lossRecords(), keys.recoveryUnfinished())) === 0, 10_000, 100);

    // The lost bucket takes a record again (a task in it: the id is free again), on the continued chain.
    expect((await call(victim.url, 'POST', '/v1/tasks', fx.as(ORCH), { ...taskBody, taskId: id, purpose: 'again' })).status).toBe(201);
    const exportedSeq = Number(exported.split(':')[0]);
    await waitFor(async () => Number((await rd.get(keys.auditHead(bucket)))?.split(':')[0] ?? 0) > exportedSeq + 1, 5000);
    const records = await auditRecords(rd, keys);
    const losses = records.filter((r) => r.action === 'broker.data_loss');
    // Recorded once: one in `ops`, one in the lost chain, continued from the export's last record.
    expect(losses.map((r) => [r.chain, r.reason, r.detail.kind])).toEqual(
      expect.arrayContaining([
        ['ops', 'redis_data_lost', 'bucket'],
        [bucket, 'redis_data_lost', 'bucket'],
      ]),
    );
    expect(losses).toHaveLength(2);
    expect(losses.find((r) => r.chain === bucket)!.detail.continuedFromSeq).toBe(exportedSeq);
    const onChain = records.filter((r) => r.chain === bucket).map((r) => r.seq);
    expect(onChain).toEqual([...new Set(onChain)]);

    // The export and Redis: one chain per bucket, no fork, sealed.
    await exportNow(tool);
    const sealKey = deriveSealKey(readSecret(tool.config.secrets.kek!, 'secrets.kek'));
    const reports = await verifyAudit(rd, keys, { exportFile: resolvePath(tool.config.audit.export.file), sealKey });
    for (const r of reports) expect({ chain: r.chain, problems: r.problems }).toEqual({ chain: r.chain, problems: [] });
    await victim.kill('SIGKILL');
  },
  2 * START_TIMEOUT_MS + 90_000,
);
