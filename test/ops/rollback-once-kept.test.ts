import type { AuditLog } from '../../src/audit/audit-log.ts';
import { AuditExporter } from '../../src/audit/export.ts';
import { readArchive } from '../../src/audit/restore.ts';
import { resolvePath } from '../../src/config/load.ts';
import { silentLogger } from '../../src/logger.ts';
import { DataLossMonitor } from '../../src/ops/recovery.ts';
import { ADMIN, ORCH, auditRecords, call } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';

/**
 * The identities of records written once (`<base>audit-once`, audit-append.lua) expire a week after the last.
 * A rollback repair kept in a chain's slot (`<base>rollback-repair`) waits for its recovery's next attempt or
 * for an instance to start, which may be longer (the claimant died and nothing restarted it): by then the ids
 * of the records it had appended again were gone, and they were appended a second time. While a repair is kept
 * the ids do not expire; once it is dropped, they do again.
 */
const own = brokerOnOwnRedis('rollback-once-kept', { broker: { dataLossCheckMs: 600_000 } });

type Fn = (...a: unknown[]) => unknown;
type Rec = Record<string, unknown>;

test('the identities written while a rollback repair is kept do not expire until the repair is dropped', async () => {
  const { redis, t } = own;
  const { deps } = t.broker;
  const file = resolvePath(t.config.audit.export.file);
  const admin = redis.client();
  await admin.connect();
  expect(await admin.call('SAVE')).toBe('OK');
  const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: 'spiffe://dev.local/agent/rb-once-kept', reason: 'x' });
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
  // A denial on the rolled-back ops chain: it clashes with the export, is taken off and appended again once.
  expect((await call(t.url, 'GET', '/v1/admin/quarantine', t.as(ORCH))).status).toBe(403);
  await deps.audit.flush();

  // The recovery appends the clashing record again, then fails recording the rollback (it dies).
  let failing = true;
  const flaky = new Proxy(deps.audit, {
    get(target, prop) {
      const v = Reflect.get(target, prop) as unknown;
      if (typeof v !== 'function') return v;
      if (prop !== 'appendOnce') return v.bind(target);
      return async (...args: [unknown, Rec, ...unknown[]]) => {
        if (failing && args[1].action === 'broker.data_loss') throw new Error('died (injected)');
        return (v as Fn).apply(target, args);
      };
    },
  }) as AuditLog;
  const a = new DataLossMonitor({
    redis: deps.redis,
    keys: deps.keys,
    logger: silentLogger,
    signing: deps.signing,
    audit: flaky,
    readArchive: () => readArchive(file, deps.keys.prefix),
    restoreQuarantines: (entries) => deps.quarantine.restore(entries),
    clearCaches: () => {},
    restoreSecrets: async () => {},
    metrics: deps.metrics,
    exportFile: file,
    reapply: async () => ({ tasks: 0, leases: 0, quarantines: 0 }),
  });
  await a.init();
  await expect(a.check()).rejects.toThrow(/injected/);
  expect(await deps.redis.exists(deps.keys.rollbackRepair('ops'))).toBe(1);
  expect(await deps.redis.scard(deps.keys.auditOnce('ops'))).toBe(1);
  // Before: a week (604800000 ms), however long the kept repair waits.
  expect(await deps.redis.pttl(deps.keys.auditOnce('ops'))).toBe(-1);

  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  await deps.audit.flush();
  expect(await deps.redis.exists(deps.keys.rollbackRepair('ops'))).toBe(0);
  // Dropped with the repair: they expire again.
  expect(await deps.redis.pttl(deps.keys.auditOnce('ops'))).toBeGreaterThan(604_000_000);
  const recorded = (await auditRecords(deps.redis, deps.keys)).filter(
    (r) => r.action === 'broker.data_loss' && r.reason === 'redis_rolled_back',
  );
  expect(recorded).toHaveLength(1);
  await a.stop();
}, 60_000);
