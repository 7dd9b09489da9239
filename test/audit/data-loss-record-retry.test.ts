import type { AuditLog } from '../../src/audit/audit-log.ts';
import { AuditExporter } from '../../src/audit/export.ts';
import { readArchive } from '../../src/audit/restore.ts';
import { deriveSealKey } from '../../src/audit/seal.ts';
import { verifyAudit } from '../../src/audit/verify.ts';
import { readSecret, resolvePath } from '../../src/config/load.ts';
import { silentLogger } from '../../src/logger.ts';
import { DataLossMonitor, type RecoveryDeps } from '../../src/ops/recovery.ts';
import { ADMIN, auditRecords, call, openAgentTask } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';

/**
 * A data-loss recovery sets the epoch marker (SET NX: one recovery records the loss) and then writes one
 * `broker.data_loss` record in `ops` and in each chain it continued from the export. An attempt that set the
 * marker and failed part-way through the records (Redis failing mid-way, the instance killed) left the rest
 * unwritten for good: the next attempt, and every other instance, found the marker and wrote nothing. The
 * records are now stored with the marker in the same step and written from there, each once, by whichever
 * attempt or instance gets through.
 */
const own = brokerOnOwnRedis('loss-record-retry', { broker: { dataLossCheckMs: 600_000 } });

type Fn = (...a: unknown[]) => unknown;

test('a data-loss recovery that failed after the marker and part of its records: each record is written exactly once, by its next attempt or another instance', async () => {
  const { redis, t } = own;
  const { deps } = t.broker;
  const file = resolvePath(t.config.audit.export.file);
  // Records in two chains (the task's bucket and ops), exported; then Redis loses everything.
  await openAgentTask(t, 'loss-retry', [{ role: 'demo-api' }]);
  const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: 'spiffe://dev.local/agent/loss-retry', reason: 'x' });
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
  await deps.audit.flush();
  const admin = redis.client();
  await admin.connect();
  await admin.flushall();
  admin.disconnect();

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
        if (args[1].action !== 'broker.data_loss' || !failing) return (v as Fn).apply(target, args);
        attempted.push(String(args[0]));
        if (!firstWrite) {
          firstWrite = Promise.resolve((v as Fn).apply(target, args));
          return firstWrite;
        }
        await firstWrite;
        throw new Error('Redis failed mid-way (injected)');
      };
    },
  });
  const monitorDeps = (audit: AuditLog): RecoveryDeps => ({
    redis: deps.redis,
    keys: deps.keys,
    logger: silentLogger,
    signing: deps.signing,
    audit,
    readArchive: () => readArchive(file, deps.keys.prefix),
    restoreQuarantines: (entries) => deps.quarantine.restore(entries),
    clearCaches: () => {},
    restoreSecrets: async () => {},
    metrics: deps.metrics,
    exportFile: file,
    reapply: async () => ({ tasks: 0, leases: 0, quarantines: 0 }),
  });
  const a = new DataLossMonitor(monitorDeps(flaky as AuditLog));
  await expect(a.init()).rejects.toThrow(/injected/);
  expect(a.ready).toBe(false);
  const bucket = deps.keys.bucketOfTask('loss-retry');
  expect(new Set(attempted)).toEqual(new Set(['ops', String(bucket)]));
  expect(await deps.redis.get(deps.keys.epoch())).not.toBeNull();

  const losses = async () => {
    await deps.audit.flush();
    return (await auditRecords(deps.redis, deps.keys)).filter((r) => r.action === 'broker.data_loss').map((r) => String(r.chain));
  };
  expect(await losses()).toHaveLength(1);

  // Another instance starting now (it never saw the data) writes the rest.
  const b = new DataLossMonitor(monitorDeps(deps.audit));
  await b.init();
  expect(b.ready).toBe(true);
  // Before: only the record the first attempt wrote (the marker was set, so nobody wrote the others).
  expect((await losses()).sort()).toEqual(['ops', String(bucket)].sort());

  // The first instance's next attempt writes none of them again.
  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  expect((await losses()).sort()).toEqual(['ops', String(bucket)].sort());
  const sealKey = deriveSealKey(readSecret(t.config.secrets.kek!, 'secrets.kek'));
  const reports = await verifyAudit(deps.redis, deps.keys, { exportFile: file, sealKey });
  for (const r of reports) expect({ chain: r.chain, problems: r.problems }).toEqual({ chain: r.chain, problems: [] });
  // Nothing kept once written.
  expect(await deps.redis.exists(deps.keys.lossRecords())).toBe(0);
  await a.stop();
  await b.stop();
}, 60_000);

test('a data-loss recovery whose attempt failed after the marker writes the rest at its own next attempt, once', async () => {
  const { redis, t } = own;
  const { deps } = t.broker;
  const file = resolvePath(t.config.audit.export.file);
  await openAgentTask(t, 'loss-retry-2', [{ role: 'demo-api' }]);
  await deps.audit.flush();
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
  const lossesBefore = (await auditRecords(deps.redis, deps.keys)).filter((r) => r.action === 'broker.data_loss').length;
  expect(lossesBefore).toBeGreaterThan(0);
  const admin = redis.client();
  await admin.connect();
  await admin.flushall();
  admin.disconnect();

  let failing = true;
  let firstWrite: Promise<unknown> | undefined;
  const flaky = new Proxy(deps.audit, {
    get(target, prop) {
      const v = Reflect.get(target, prop) as unknown;
      if (typeof v !== 'function') return v;
      if (prop !== 'appendTo' && prop !== 'appendOnce') return v.bind(target);
      return async (...args: [unknown, { action: string }, ...unknown[]]) => {
        if (args[1].action !== 'broker.data_loss' || !failing) return (v as Fn).apply(target, args);
        if (!firstWrite) {
          firstWrite = Promise.resolve((v as Fn).apply(target, args));
          return firstWrite;
        }
        await firstWrite;
        throw new Error('Redis failed mid-way (injected)');
      };
    },
  });
  const a = new DataLossMonitor({
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
  await expect(a.init()).rejects.toThrow(/injected/);
  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  await a.check();
  await deps.audit.flush();
  // Only this loss's records are in Redis now (the earlier ones went with the wipe): one in ops, one in the bucket.
  const bucket = deps.keys.bucketOfTask('loss-retry-2');
  const losses = (await auditRecords(deps.redis, deps.keys)).filter((r) => r.action === 'broker.data_loss').map((r) => String(r.chain));
  expect(losses.sort()).toEqual([...new Set(['ops', String(bucket), String(deps.keys.bucketOfTask('loss-retry'))])].sort());
  const sealKey = deriveSealKey(readSecret(t.config.secrets.kek!, 'secrets.kek'));
  const reports = await verifyAudit(deps.redis, deps.keys, { exportFile: file, sealKey });
  for (const r of reports) expect({ chain: r.chain, problems: r.problems }).toEqual({ chain: r.chain, problems: [] });
  await a.stop();
}, 60_000);
