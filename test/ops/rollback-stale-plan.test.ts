import type { AuditLog } from '../../src/audit/audit-log.ts';
import { AuditExporter } from '../../src/audit/export.ts';
import { readArchive } from '../../src/audit/restore.ts';
import { resolvePath } from '../../src/config/load.ts';
import { silentLogger } from '../../src/logger.ts';
import { DataLossMonitor } from '../../src/ops/recovery.ts';
import type { RedisClient } from '../../src/redis/scripts.ts';
import { ADMIN, ORCH, auditRecords, call } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';

/**
 * A rollback recovery drops the repairs it kept (Keys.rollbackRepair) once recorded, then the records stored
 * with its claim (Keys.rollbackPlans). An instance that died between the two left the claim's records stored,
 * all written. An instance that later found a repair kept by another rollback's recovery (one that died before
 * it claimed) took every recovery with stored records for the claimant of that repair: its claim went to the
 * old recovery, whose records were all written, and the second rollback was recorded nowhere.
 */
const own = brokerOnOwnRedis('rollback-stale-plan', { broker: { dataLossCheckMs: 600_000 } });

type Fn = (...a: unknown[]) => unknown;
type Rec = Record<string, unknown>;

/** Redis goes back to a snapshot taken before a quarantine the export holds; a denial clashes with it on ops. */
async function rollBackWithClash(agent: string): Promise<(r: Rec) => boolean> {
  const { redis, t } = own;
  const { deps } = t.broker;
  const admin = redis.client();
  await admin.connect();
  expect(await admin.call('SAVE')).toBe('OK');
  const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: `spiffe://dev.local/agent/${agent}`, reason: 'x' });
  expect(q.status).toBe(201);
  const exporter = new AuditExporter({
    redis: deps.redis,
    keys: deps.keys,
    logger: silentLogger,
    file: resolvePath(t.config.audit.export.file),
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
  expect((await call(t.url, 'GET', '/v1/admin/quarantine', t.as(ORCH))).status).toBe(403);
  await deps.audit.flush();
  const head = (await deps.redis.get(deps.keys.auditHead('ops')))!;
  const clashing = (await auditRecords(deps.redis, deps.keys)).find((r) => r.chain === 'ops' && `${r.seq}:${r.hash}` === head)!;
  expect(clashing.decision).toBe('deny');
  return (r) => r.action === clashing.action && r.time === clashing.time && r.actor === clashing.actor;
}

function monitor(opts: { redis?: RedisClient; audit?: AuditLog } = {}): DataLossMonitor {
  const { deps } = own.t.broker;
  const file = resolvePath(own.t.config.audit.export.file);
  return new DataLossMonitor({
    redis: opts.redis ?? deps.redis,
    keys: deps.keys,
    logger: silentLogger,
    signing: deps.signing,
    audit: opts.audit ?? deps.audit,
    readArchive: () => readArchive(file, deps.keys.prefix),
    restoreQuarantines: (entries) => deps.quarantine.restore(entries),
    clearCaches: () => {},
    restoreSecrets: async () => {},
    metrics: deps.metrics,
    exportFile: file,
    reapply: async () => ({ tasks: 0, leases: 0, quarantines: 0 }),
  });
}

async function rollbackRecords(): Promise<Rec[]> {
  const { deps } = own.t.broker;
  await deps.audit.flush();
  return (await auditRecords(deps.redis, deps.keys)).filter((r) => r.action === 'broker.data_loss' && r.reason === 'redis_rolled_back');
}

test("a repair kept by a recovery that died before it claimed is recorded, not taken for an earlier recovery's left-over records", async () => {
  const { deps } = own.t.broker;
  // The first rollback: its recovery records it, drops its kept repair, and dies before it drops its stored records.
  await rollBackWithClash('stale-1');
  const diesBeforePlansDropped = new Proxy(deps.redis, {
    get(target, prop) {
      const v = Reflect.get(target, prop) as unknown;
      if (typeof v !== 'function') return v;
      if (prop !== 'hdel') return v.bind(target);
      return (key: string, ...fields: string[]) =>
        key === deps.keys.rollbackPlans() ? Promise.reject(new Error('died (injected)')) : (v as Fn).apply(target, [key, ...fields]);
    },
  }) as RedisClient;
  const a = monitor({ redis: diesBeforePlansDropped });
  await a.init();
  await expect(a.check()).rejects.toThrow(/injected/);
  await a.stop();
  expect(await rollbackRecords()).toHaveLength(1);
  expect(await deps.redis.exists(deps.keys.rollbackRepair('ops'))).toBe(0);
  expect(await deps.redis.hlen(deps.keys.rollbackPlans())).toBe(1);

  // The second rollback: a recovery repairs ops (kept) and dies before it appends the clashing record again.
  const isClashing = await rollBackWithClash('stale-2');
  const failingReappend = new Proxy(deps.audit, {
    get(target, prop) {
      const v = Reflect.get(target, prop) as unknown;
      if (typeof v !== 'function') return v;
      if (prop !== 'appendOnce') return v.bind(target);
      return async (...args: [unknown, Rec, string, string?]) => {
        if (isClashing({ ...args[1], time: args[3] })) throw new Error('died (injected)');
        return (v as Fn).apply(target, args);
      };
    },
  }) as AuditLog;
  const b = monitor({ audit: failingReappend });
  await b.init();
  await expect(b.check()).rejects.toThrow(/injected/);
  await b.stop();
  expect(await deps.redis.exists(deps.keys.rollbackRepair('ops'))).toBe(1);

  // An instance that starts now finds the kept repair and recovers.
  const x = monitor();
  await x.init();
  expect(x.ready).toBe(false);
  await x.check();
  expect(x.ready).toBe(true);
  await deps.audit.flush();
  expect((await auditRecords(deps.redis, deps.keys)).filter(isClashing)).toHaveLength(1);
  // Before: still one (the claim went to the first recovery, whose records were all written).
  const recorded = await rollbackRecords();
  expect(recorded).toHaveLength(2);
  expect(recorded[1]!.detail).toMatchObject({ kind: 'rollback', rechained: 1 });
  expect(await deps.redis.exists(deps.keys.rollbackRepair('ops'))).toBe(0);
  await x.stop();
}, 60_000);
