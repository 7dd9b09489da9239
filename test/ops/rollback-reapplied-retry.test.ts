import { AuditExporter } from '../../src/audit/export.ts';
import { readArchive } from '../../src/audit/restore.ts';
import { resolvePath } from '../../src/config/load.ts';
import { silentLogger } from '../../src/logger.ts';
import { DataLossMonitor } from '../../src/ops/recovery.ts';
import type { RedisClient } from '../../src/redis/scripts.ts';
import { ADMIN, auditRecords, call } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';

/**
 * A rollback recovery applies again the endings Redis lost, then claims the rollback with its records, which
 * say how many it applied again. An attempt that applied them and failed before the claim left them applied:
 * its next attempt found nothing left to apply (each step is idempotent) and recorded 0, though the first had
 * applied them.
 */
const own = brokerOnOwnRedis('rollback-reapplied-retry', { broker: { dataLossCheckMs: 600_000 } });

test("a rollback recovery that applied the lost endings and failed before its claim records what it applied, not its retry's nothing", async () => {
  const { redis, t } = own;
  const { deps } = t.broker;
  const file = resolvePath(t.config.audit.export.file);
  const admin = redis.client();
  await admin.connect();
  // Redis goes back to a snapshot taken before a quarantine (an ending) the export holds.
  expect(await admin.call('SAVE')).toBe('OK');
  const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: 'spiffe://dev.local/agent/rb-reapplied', reason: 'x' });
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

  // Applying again is idempotent: what the first call applied, a second finds applied.
  const applied = new Set<string>();
  const reapply = async (records: { hash: string }[]) => {
    const fresh = records.filter((r) => !applied.has(r.hash));
    for (const r of fresh) applied.add(r.hash);
    return { tasks: 0, leases: 0, quarantines: fresh.length };
  };
  // The claim fails once (Redis failing mid-way), after the endings were applied.
  let failing = true;
  const claimFails = new Proxy(deps.redis, {
    get(target, prop) {
      const v = Reflect.get(target, prop) as unknown;
      if (typeof v !== 'function') return v;
      if (prop !== 'evalsha' && prop !== 'eval') return v.bind(target);
      return (...args: unknown[]) =>
        failing && args.includes(deps.keys.rollbackRecoveries())
          ? Promise.reject(new Error('Redis failed mid-way (injected)'))
          : (v as (...a: unknown[]) => unknown).apply(target, args);
    },
  }) as RedisClient;
  const a = new DataLossMonitor({
    redis: claimFails,
    keys: deps.keys,
    logger: silentLogger,
    signing: deps.signing,
    audit: deps.audit,
    readArchive: () => readArchive(file, deps.keys.prefix),
    restoreQuarantines: (entries) => deps.quarantine.restore(entries),
    clearCaches: () => {},
    restoreSecrets: async () => {},
    metrics: deps.metrics,
    exportFile: file,
    reapply: reapply as never,
  });
  await a.init();
  await expect(a.check()).rejects.toThrow(/injected/);
  expect(applied.size).toBe(1);
  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  await deps.audit.flush();
  const recorded = (await auditRecords(deps.redis, deps.keys)).filter(
    (r) => r.action === 'broker.data_loss' && r.reason === 'redis_rolled_back',
  );
  expect(recorded).toHaveLength(1);
  // Before: 0 (the retry's count).
  expect(recorded[0]!.detail).toMatchObject({ quarantinesAppliedAgain: 1 });
  await a.stop();
}, 60_000);
