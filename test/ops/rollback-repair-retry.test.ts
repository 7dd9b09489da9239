import type { AuditLog } from '../../src/audit/audit-log.ts';
import { AuditExporter } from '../../src/audit/export.ts';
import { readArchive } from '../../src/audit/restore.ts';
import { deriveSealKey } from '../../src/audit/seal.ts';
import { verifyAudit } from '../../src/audit/verify.ts';
import { readSecret, resolvePath } from '../../src/config/load.ts';
import { silentLogger } from '../../src/logger.ts';
import { DataLossMonitor } from '../../src/ops/recovery.ts';
import { ADMIN, ORCH, auditRecords, call } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';

/**
 * A rollback recovery moves each chain that clashes with the export onto the export's end and takes the records
 * Redis wrote on the rolled-back history off the chain (repairChains), to append them again behind the export's
 * end. An attempt that failed between the two (Redis failing mid-way, the instance killed) lost those records:
 * the next attempt found the chain repaired and nothing to append again, and its `broker.data_loss` records
 * said nothing of the repair. The repair now keeps what it took off (and what it found) in the same step, and a
 * later attempt, of this instance or another, appends each of those records once.
 */
const own = brokerOnOwnRedis('rollback-repair-retry', { broker: { dataLossCheckMs: 600_000 } });

type Fn = (...a: unknown[]) => unknown;
type Rec = Record<string, unknown>;

/**
 * Redis goes back to a snapshot taken before a quarantine (an ops record) the export holds, and the broker writes
 * a denial on the rolled-back ops chain before the rollback is noticed: the record that clashes with the export.
 */
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

/** The broker's audit log, failing while `failing()` when the clashing record is appended again. */
function failingReappend(isClashing: (r: Rec) => boolean, failing: () => boolean, attempts: { n: number }): AuditLog {
  const { audit } = own.t.broker.deps;
  return new Proxy(audit, {
    get(target, prop) {
      const v = Reflect.get(target, prop) as unknown;
      if (typeof v !== 'function') return v;
      if (prop !== 'appendTo' && prop !== 'appendOnce') return v.bind(target);
      return async (...args: [unknown, Rec, ...unknown[]]) => {
        const time = prop === 'appendTo' ? args[2] : args[3];
        if (isClashing({ ...args[1], time })) {
          attempts.n += 1;
          if (failing()) throw new Error('Redis failed mid-way (injected)');
        }
        return (v as Fn).apply(target, args);
      };
    },
  });
}

function monitor(audit: AuditLog): DataLossMonitor {
  const { deps } = own.t.broker;
  const file = resolvePath(own.t.config.audit.export.file);
  return new DataLossMonitor({
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
}

/** The records now, once the writes under way landed. */
async function records(): Promise<Rec[]> {
  const { deps } = own.t.broker;
  await deps.audit.flush();
  return auditRecords(deps.redis, deps.keys);
}

async function expectVerified(): Promise<void> {
  const { t } = own;
  const { deps } = t.broker;
  const sealKey = deriveSealKey(readSecret(t.config.secrets.kek!, 'secrets.kek'));
  const reports = await verifyAudit(deps.redis, deps.keys, { exportFile: resolvePath(t.config.audit.export.file), sealKey });
  for (const r of reports) expect({ chain: r.chain, problems: r.problems }).toEqual({ chain: r.chain, problems: [] });
  // Nothing kept once recorded.
  expect(await deps.redis.exists(deps.keys.rollbackRepair('ops'))).toBe(0);
  expect(await deps.redis.hlen(deps.keys.rollbackPlans())).toBe(0);
}

test('a rollback recovery that failed after taking clashing records off a chain appends each of them again exactly once at its next attempt', async () => {
  const isClashing = await rollBackWithClash('rb-repair');
  const lossesBefore = (await records()).filter((r) => r.action === 'broker.data_loss').length;
  let failing = true;
  const attempts = { n: 0 };
  const a = monitor(failingReappend(isClashing, () => failing, attempts));
  await a.init();
  expect(a.ready).toBe(false);
  await expect(a.check()).rejects.toThrow(/injected/);
  expect(attempts.n).toBe(1);
  // Taken off the chain, not yet appended again.
  expect((await records()).filter(isClashing)).toHaveLength(0);

  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  // A later check appends nothing twice.
  await a.check();
  const after = await records();
  // Before: the clashing record lost (the second attempt found the chain repaired and nothing to append again).
  expect(after.filter(isClashing)).toHaveLength(1);
  const losses = after.filter((r) => r.action === 'broker.data_loss').slice(lossesBefore);
  expect(losses.map((r) => r.chain)).toEqual(['ops']);
  expect(losses[0]!.detail).toMatchObject({ kind: 'rollback', rechained: 1 });
  await expectVerified();
  await a.stop();
}, 60_000);

test('when the instance that took clashing records off a chain dies before appending them again, another appends each once, and records the rollback once', async () => {
  const isClashing = await rollBackWithClash('rb-repair-2');
  const lossesBefore = (await records()).filter((r) => r.action === 'broker.data_loss').length;
  let failing = true;
  const attempts = { n: 0 };
  const a = monitor(failingReappend(isClashing, () => failing, attempts));
  await a.init();
  await expect(a.check()).rejects.toThrow(/injected/);
  expect((await records()).filter(isClashing)).toHaveLength(0);

  // An instance started now (A is taken for dead): Redis's chains look repaired, but the repair is kept.
  const b = monitor(own.t.broker.deps.audit);
  await b.init();
  expect(b.ready).toBe(false);
  await b.check();
  expect(b.ready).toBe(true);
  let after = await records();
  expect(after.filter(isClashing)).toHaveLength(1);
  const losses = after.filter((r) => r.action === 'broker.data_loss').slice(lossesBefore);
  expect(losses.map((r) => r.chain)).toEqual(['ops']);
  expect(losses[0]!.detail).toMatchObject({ kind: 'rollback', rechained: 1 });

  // A was only slow: its next attempt appends and records nothing twice.
  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  after = await records();
  expect(after.filter(isClashing)).toHaveLength(1);
  expect(after.filter((r) => r.action === 'broker.data_loss').slice(lossesBefore)).toHaveLength(1);
  await expectVerified();
  await a.stop();
  await b.stop();
}, 60_000);
