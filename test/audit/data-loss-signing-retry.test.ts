import { AuditExporter } from '../../src/audit/export.ts';
import { readArchive } from '../../src/audit/restore.ts';
import { resolvePath } from '../../src/config/load.ts';
import { silentLogger } from '../../src/logger.ts';
import { DataLossMonitor } from '../../src/ops/recovery.ts';
import { auditRecords, openAgentTask } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';

/**
 * A data-loss recovery creates a signing key (it signs at once: contract section 4) and records that with a
 * `signing.recreated` record, with the loss's records. An attempt that created the key and failed before the
 * records were stored (reading the export, continuing the chains) left the key in Redis: its next attempt, and
 * every other instance, found a key and created none, so the record was never written.
 */
const own = brokerOnOwnRedis('loss-signing-retry', { broker: { dataLossCheckMs: 600_000 } });

test('a recovery that created the signing key and failed before recording it records it at its next attempt, once', async () => {
  const { redis, t } = own;
  const { deps } = t.broker;
  const file = resolvePath(t.config.audit.export.file);
  await openAgentTask(t, 'loss-signing', [{ role: 'demo-api' }]);
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
  const admin = redis.client();
  await admin.connect();
  await admin.flushall();
  admin.disconnect();

  let failing = true;
  const a = new DataLossMonitor({
    redis: deps.redis,
    keys: deps.keys,
    logger: silentLogger,
    signing: deps.signing,
    audit: deps.audit,
    // The first attempt fails reading the export (after the key was created).
    readArchive: () => (failing ? Promise.reject(new Error('export unreadable (injected)')) : readArchive(file, deps.keys.prefix)),
    restoreQuarantines: (entries) => deps.quarantine.restore(entries),
    clearCaches: () => {},
    restoreSecrets: async () => {},
    metrics: deps.metrics,
    exportFile: file,
    reapply: async () => ({ tasks: 0, leases: 0, quarantines: 0 }),
  });
  await expect(a.init()).rejects.toThrow(/injected/);
  expect(await deps.redis.hlen(deps.keys.signingKeys())).toBe(1);
  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  await a.check();
  await deps.audit.flush();
  const recreated = (await auditRecords(deps.redis, deps.keys)).filter((r) => r.action === 'signing.recreated');
  // Before: none (the next attempt found the key and created none).
  expect(recreated).toHaveLength(1);
  expect(recreated[0]!.chain).toBe('ops');
  await a.stop();
}, 60_000);
