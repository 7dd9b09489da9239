import { expect } from '@jest/globals';
import { AuditLog } from '../../src/audit/audit-log.ts';
import { AuditExporter } from '../../src/audit/export.ts';
import { readArchive } from '../../src/audit/restore.ts';
import { deriveSealKey } from '../../src/audit/seal.ts';
import { verifyAudit } from '../../src/audit/verify.ts';
import { readSecret, resolvePath } from '../../src/config/load.ts';
import { silentLogger } from '../../src/logger.ts';
import { DataLossMonitor, type RecoveryDeps } from '../../src/ops/recovery.ts';
import { ADMIN, ORCH, auditRecords, call, type TestBroker } from './broker.ts';
import type { OwnRedisBroker } from './own-redis-broker.ts';
import type { RedisStandalone } from './redis-topology.ts';

/**
 * What the data-loss and rollback recovery tests share: a broker on a redis-server of its own
 * (own-redis-broker.ts) whose Redis is wiped or rolled back to a snapshot, a recovery (DataLossMonitor) run
 * beside the broker's own on the same deps, an audit append made to fail, and the records read back.
 */

export type Rec = Record<string, unknown>;
type Fn = (...a: unknown[]) => unknown;

/** The export file the broker's config names. */
export function exportFile(t: TestBroker): string {
  return resolvePath(t.config.audit.export.file);
}

/** A recovery on the broker's deps (with `over` in place of some), as another instance's would be; not started. */
export function recoveryMonitor(t: TestBroker, over: Partial<RecoveryDeps> = {}): DataLossMonitor {
  const { deps } = t.broker;
  const file = exportFile(t);
  return new DataLossMonitor({
    redis: deps.redis,
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
    reapply: async () => ({ tasks: 0, leases: 0, quarantines: 0 }),
    ...over,
  });
}

/** Exports the audit chains to the export file now, as the worker's exporter does on its interval. */
export async function exportAuditNow(t: TestBroker): Promise<void> {
  const { deps } = t.broker;
  const exporter = new AuditExporter({
    redis: deps.redis,
    keys: deps.keys,
    logger: silentLogger,
    file: exportFile(t),
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
}

/**
 * One export pass as the broker's periodic one, sealing too (every chain exported and sealed), after writing out
 * what `t` and `others` (instances on the same Redis) still hold in memory.
 */
export async function exportSealedNow(t: TestBroker, ...others: TestBroker[]): Promise<void> {
  const { deps } = t.broker;
  for (const x of [t, ...others]) await x.broker.deps.audit.flush();
  const exporter = new AuditExporter({
    redis: deps.redis,
    keys: deps.keys,
    logger: silentLogger,
    file: resolvePath(t.config.audit.export.file),
    maxFileBytes: t.config.audit.export.maxFileBytes,
    retention: t.config.audit.retention,
    sealKey: deriveSealKey(readSecret(t.config.secrets.kek!, 'secrets.kek')),
    sealIntervalMs: 60_000,
    sealMaxAgeMs: 180_000,
    audit: async () => {},
    retentionIntervalMs: 60_000,
    now: () => Date.now(),
  });
  await exporter.exportNow();
  await exporter.close();
}

/** Runs `fn` with a client of its own on the server, closed after. */
async function withAdmin(redis: RedisStandalone, fn: (admin: ReturnType<RedisStandalone['client']>) => Promise<void>): Promise<void> {
  const admin = redis.client();
  await admin.connect();
  try {
    await fn(admin);
  } finally {
    admin.disconnect();
  }
}

/** Saves the server's data to disk: what `rollBack` goes back to. */
export async function snapshot(redis: RedisStandalone): Promise<void> {
  await withAdmin(redis, async (admin) => {
    expect(await admin.call('SAVE')).toBe('OK');
  });
}

/** Redis goes back to the last `snapshot` (a restart that loads it). */
export async function rollBack(redis: RedisStandalone): Promise<void> {
  await redis.restart({ keepData: true });
}

/** Redis loses everything. */
export async function wipe(redis: RedisStandalone): Promise<void> {
  await withAdmin(redis, async (admin) => {
    await admin.flushall();
  });
}

/**
 * `ms` pass for what Redis keeps with an expiry (a week of a recovery left waiting, without waiting): each key's
 * time to live is shortened by `ms`, and a key whose time is up is deleted, as Redis would have expired it.
 */
export async function timePasses(redis: RedisStandalone, ms: number): Promise<void> {
  await withAdmin(redis, async (admin) => {
    for await (const keys of admin.scanStream({ count: 1000 }) as AsyncIterable<string[]>)
      for (const key of keys) {
        const ttl = await admin.pttl(key);
        if (ttl < 0) continue;
        if (ttl <= ms) await admin.del(key);
        else await admin.pexpire(key, ttl - ms);
      }
  });
}

/**
 * The chains are exported, then Redis loses everything, and an instance without the epoch guard writes a denial
 * by `actor` on a fresh ops chain before any recovery: a record written after the loss, which recovery takes off
 * the chain and appends again behind the export's end.
 */
export async function loseThenWriteLate(own: OwnRedisBroker, actor: string): Promise<void> {
  const { redis, t } = own;
  const { deps } = t.broker;
  await exportAuditNow(t);
  await deps.audit.flush();
  await wipe(redis);
  const careless = new AuditLog({ redis: deps.redis, keys: deps.keys, logger: silentLogger, taskIndexMs: 60_000 });
  await careless.append({ action: 'access.deny', actor, decision: 'deny', reason: 'task_not_found' });
  await careless.flush();
}

/** Quarantines `agent` (an ops record, an ending) as the admin. */
export async function quarantine(t: TestBroker, agent: string): Promise<void> {
  const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: `spiffe://dev.local/agent/${agent}`, reason: 'x' });
  expect(q.status).toBe(201);
}

/** The records now, once the writes under way landed. */
export async function records(t: TestBroker): Promise<Rec[]> {
  const { deps } = t.broker;
  await deps.audit.flush();
  return auditRecords(deps.redis, deps.keys);
}

/** The `broker.data_loss` records now. */
export async function lossRecords(t: TestBroker): Promise<Rec[]> {
  return (await records(t)).filter((r) => r.action === 'broker.data_loss');
}

/**
 * Redis goes back to a snapshot taken before a quarantine (an ops record) the export holds, and the broker writes
 * a denial on the rolled-back ops chain before the rollback is noticed: the record that clashes with the export.
 * Returns a test for that record (its time included: appended again, it keeps it).
 */
export async function rollBackWithClash(own: OwnRedisBroker, agent: string): Promise<(r: Rec) => boolean> {
  const { redis, t } = own;
  const { deps } = t.broker;
  await snapshot(redis);
  await quarantine(t, agent);
  await exportAuditNow(t);
  await rollBack(redis);
  expect((await call(t.url, 'GET', '/v1/admin/quarantine', t.as(ORCH))).status).toBe(403);
  await deps.audit.flush();
  const head = (await deps.redis.get(deps.keys.auditHead('ops')))!;
  const clashing = (await auditRecords(deps.redis, deps.keys)).find((r) => r.chain === 'ops' && `${r.seq}:${r.hash}` === head)!;
  expect(clashing.decision).toBe('deny');
  return (r) => r.action === clashing.action && r.time === clashing.time && r.actor === clashing.actor;
}

/** One append through the audit log: its chain, and its record with the time it was given (if any). */
export interface AppendCall {
  chain: string;
  record: Rec;
}

/**
 * The audit log with its appends (appendTo and appendOnce, or only `methods`) going through `intercept`, which
 * writes by calling `append` (or throws: a failure injected).
 */
export function interceptAppends(
  audit: AuditLog,
  intercept: (call: AppendCall, append: () => Promise<unknown>) => Promise<unknown>,
  methods: readonly ('appendTo' | 'appendOnce')[] = ['appendTo', 'appendOnce'],
): AuditLog {
  return new Proxy(audit, {
    get(target, prop) {
      const v = Reflect.get(target, prop) as unknown;
      if (typeof v !== 'function') return v;
      if (!(methods as readonly unknown[]).includes(prop)) return v.bind(target);
      return async (...args: [unknown, Rec, ...unknown[]]) => {
        const time = prop === 'appendTo' ? args[2] : args[3];
        const append = () => Promise.resolve((v as Fn).apply(target, args));
        return intercept({ chain: String(args[0]), record: { ...args[1], time } }, append);
      };
    },
  });
}

/** The audit log, failing while `failing()` when a record `matches` is appended (again); `attempts` counts those appends. */
export function failingReappend(
  audit: AuditLog,
  matches: (r: Rec) => boolean,
  failing: () => boolean,
  attempts: { n: number } = { n: 0 },
): AuditLog {
  return interceptAppends(audit, async ({ record }, append) => {
    if (matches(record)) {
      attempts.n += 1;
      if (failing()) throw new Error('Redis failed mid-way (injected)');
    }
    return append();
  });
}

/**
 * The audit log, while `failing()`: the first `broker.data_loss` record lands, each later one waits for it and
 * fails (Redis failing mid-way through a recovery's records). Each of those appends is pushed to `tried`.
 */
export function failingAfterFirstLoss(
  audit: AuditLog,
  failing: () => boolean,
  opts: { tried?: AppendCall[]; methods?: readonly ('appendTo' | 'appendOnce')[] } = {},
): AuditLog {
  let firstWrite: Promise<unknown> | undefined;
  return interceptAppends(
    audit,
    async (c, append) => {
      if (c.record.action !== 'broker.data_loss' || !failing()) return append();
      opts.tried?.push(c);
      if (!firstWrite) {
        firstWrite = append();
        return firstWrite;
      }
      await firstWrite;
      throw new Error('Redis failed mid-way (injected)');
    },
    opts.methods,
  );
}

/** Every chain verifies against the export, with its seals. */
export async function expectAuditVerified(t: TestBroker): Promise<void> {
  const { deps } = t.broker;
  const sealKey = deriveSealKey(readSecret(t.config.secrets.kek!, 'secrets.kek'));
  const reports = await verifyAudit(deps.redis, deps.keys, { exportFile: exportFile(t), sealKey });
  for (const r of reports) expect({ chain: r.chain, problems: r.problems }).toEqual({ chain: r.chain, problems: [] });
}

/** A rollback recovery is done: every chain verifies, and nothing it kept to finish (repair, records) is left. */
export async function expectRollbackRecovered(t: TestBroker): Promise<void> {
  const { deps } = t.broker;
  await expectAuditVerified(t);
  expect(await deps.redis.exists(deps.keys.rollbackRepair('ops'))).toBe(0);
  expect(await deps.redis.hlen(deps.keys.rollbackPlans())).toBe(0);
}
