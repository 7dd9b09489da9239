import type { AuditLog } from '../../src/audit/audit-log.ts';
import { AuditExporter } from '../../src/audit/export.ts';
import { parseOutboxMember } from '../../src/audit/outbox-member.ts';
import { readArchive } from '../../src/audit/restore.ts';
import { resolvePath } from '../../src/config/load.ts';
import { silentLogger } from '../../src/logger.ts';
import { DataLossMonitor } from '../../src/ops/recovery.ts';
import { ADMIN, auditRecords, call, openAgentTask, startTestBroker, type TestBroker, uniquePrefix } from '../helpers/broker.ts';
import { type RedisStandalone, startStandalone } from '../helpers/redis-topology.ts';

/**
 * A rollback recovery records the rollback with one `broker.data_loss` record in `ops` and in each chain it
 * repaired. An attempt that claimed the rollback (rollback-claim.lua), wrote some of those records and then
 * failed (Redis failing mid-way) wrote all of them again at its next attempt, and the records of chains that
 * attempt no longer found changed (the first attempt repaired them) not at all. Each record is now written once:
 * the claim keeps what is to be recorded, and each record names its own identity, checked in the append's step.
 */
let redis: RedisStandalone;
let t: TestBroker;
beforeAll(async () => {
  redis = await startStandalone();
  t = await startTestBroker('rollback-retry', {
    prefix: uniquePrefix('rollback-retry'),
    config: { redis: { url: redis.url } },
    broker: { dataLossCheckMs: 600_000 },
  });
}, 60_000);
afterAll(async () => {
  await t?.broker.close().catch(() => {});
  await redis?.stop();
});

test('a rollback recovery that failed after writing part of its records writes each record exactly once on its next attempt', async () => {
  const { deps } = t.broker;
  const file = resolvePath(t.config.audit.export.file);
  const admin = redis.client();
  await admin.connect();
  // Redis goes back to a snapshot taken before a task was opened (a bucket chain) and a quarantine (ops), both exported.
  expect(await admin.call('SAVE')).toBe('OK');
  await openAgentTask(t, 'rb-retry', [{ role: 'demo-api' }]);
  const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: 'spiffe://dev.local/agent/rb-retry', reason: 'x' });
  expect(q.status).toBe(201);
  const exporter = new AuditExporter({
    redis: deps.redis,
    keys: deps.keys,
    logger: silentLogger,
    file,
    maxFileBytes: t.config.audit.export.maxFileBytes,
    retention: t.config.audit.retention,
    sealKey: undefined,
    audit: undefined,
    sealIntervalMs: 60_000,
    retentionIntervalMs: 60_000,
    now: Date.now,
  });
  await exporter.exportNow();
  await exporter.close();
  admin.disconnect();
  await redis.restart({ keepData: true });

  // The first attempt: the first broker.data_loss record lands, the next fails (Redis failing mid-way).
  const attempted: string[] = [];
  let failing = true;
  let firstWrite: Promise<unknown> | undefined;
  const flaky = new Proxy(deps.audit, {
    get(target, prop) {
      const v = Reflect.get(target, prop) as unknown;
      if (typeof v !== 'function') return v;
      if (prop !== 'appendTo' && prop !== 'appendOnce') return v.bind(target);
      return async (...args: [unknown, { action: string }, ...unknown[]]) => {
        if (args[1].action !== 'broker.data_loss' || !failing) return (v as (...a: unknown[]) => unknown).apply(target, args);
        attempted.push(String(args[0]));
        if (!firstWrite) {
          firstWrite = Promise.resolve((v as (...a: unknown[]) => unknown).apply(target, args));
          return firstWrite;
        }
        await firstWrite;
        throw new Error('Redis failed mid-way (injected)');
      };
    },
  });
  const monitor = new DataLossMonitor({
    redis: deps.redis,
    keys: deps.keys,
    logger: silentLogger,
    signing: deps.signing,
    audit: flaky as AuditLog,
    readArchive: () => readArchive(file, deps.keys.prefix),
    restoreQuarantines: (entries) => deps.quarantine.restore(entries),
    clearCaches: () => {},
    restoreSecrets: async () => {},
    metrics: deps.metrics,
    exportFile: file,
    reapply: async () => ({ tasks: 0, leases: 0, quarantines: 0 }),
  });
  await monitor.init();
  expect(monitor.ready).toBe(false);
  await expect(monitor.check()).rejects.toThrow(/injected/);
  expect(monitor.ready).toBe(false);
  // Two chains to record (ops and the task's bucket), one written.
  const bucket = deps.keys.bucketOfTask('rb-retry');
  expect(new Set(attempted)).toEqual(new Set(['ops', String(bucket)]));

  failing = false;
  await monitor.check();
  expect(monitor.ready).toBe(true);
  await deps.audit.flush?.();
  const losses = (await auditRecords(deps.redis, deps.keys)).filter((r) => r.action === 'broker.data_loss');
  // Before: the record written at the first attempt twice (ops), and the bucket's missing (its chain repaired already).
  expect(losses.map((r) => String(r.chain)).sort()).toEqual(['ops', String(bucket)].sort());
  expect(losses.every((r) => r.reason === 'redis_rolled_back')).toBe(true);
}, 60_000);

test('a record with an identity is written once per chain, whether sent twice at once or again later; an outbox member shaped like one is poison', async () => {
  const { audit, keys, redis } = t.broker.deps;
  const event = { action: 'broker.data_loss' as const, actor: 'broker', decision: 'ok' as const, reason: 'once-test' };
  expect(await Promise.all([audit.appendOnce('ops', event, 'once-test'), audit.appendOnce('ops', event, 'once-test')])).toEqual([
    true,
    false,
  ]);
  expect(await audit.appendOnce('ops', event, 'once-test')).toBe(false);
  // Another chain keeps its own identities.
  expect(await audit.appendOnce(1, event, 'once-test')).toBe(true);
  const written = (await auditRecords(redis, keys)).filter((r) => r.reason === 'once-test');
  expect(written.map((r) => String(r.chain)).sort()).toEqual(['1', 'ops']);
  expect(parseOutboxMember(`once:x ${JSON.stringify({ action: 'task.open', actor: 'a', decision: 'allow' })}`)).toBeUndefined();
});
