import { AuditLog } from '../../src/audit/audit-log.ts';
import { AuditExporter } from '../../src/audit/export.ts';
import { readArchive } from '../../src/audit/restore.ts';
import { deriveSealKey } from '../../src/audit/seal.ts';
import { verifyAudit } from '../../src/audit/verify.ts';
import { readSecret, resolvePath } from '../../src/config/load.ts';
import { silentLogger } from '../../src/logger.ts';
import { DataLossMonitor } from '../../src/ops/recovery.ts';
import { ADMIN, ORCH, auditRecords, call, waitFor } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';

/**
 * A recovery keeps its unfinished work in Redis (a rollback repair's records taken off a chain, a loss's or a
 * rollback's records to write) so that whoever gets there finishes it. Only an instance starting up looked for
 * it: when the recovering instance died (or its attempt failed and it was closed), an instance already running,
 * which had not noticed the rollback itself, left it for the next restart. Its periodic data-loss check now
 * notices the work kept (one EXISTS) and finishes it under the recovery lock.
 */
const own = brokerOnOwnRedis('recovery-left-unfinished', { broker: { dataLossCheckMs: 600_000 } });

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

test('a running instance finishes a rollback recovery whose instance failed after taking records off a chain and was closed, without restarting', async () => {
  // B runs from before the snapshot, with its own audit log; it writes nothing meanwhile, so it has no sign of the
  // rollback of its own.
  const { deps } = own.t.broker;
  const b = monitor(new AuditLog({ redis: deps.redis, keys: deps.keys, logger: silentLogger, taskIndexMs: 60_000 }));
  await b.init();
  expect(b.ready).toBe(true);
  const isClashing = await rollBackWithClash('left-1');
  const lossesBefore = (await records()).filter((r) => r.action === 'broker.data_loss').length;
  const attempts = { n: 0 };
  const a = monitor(failingReappend(isClashing, () => true, attempts));
  await a.init();
  expect(a.ready).toBe(false);
  await expect(a.check()).rejects.toThrow(/injected/);
  expect(attempts.n).toBe(1);
  // A is closed (taken for dead): the records it took off the chain are kept, not yet appended again.
  await a.stop();
  expect((await records()).filter(isClashing)).toHaveLength(0);

  b.start(200);
  // Before: nobody appended it again until an instance started (B's checks saw nothing of its own).
  const after = await waitFor(
    async () => {
      const now = await records();
      return now.filter(isClashing).length > 0 && now;
    },
    5_000,
    100,
  );
  await waitFor(async () => b.ready, 5_000, 50);
  expect(after.filter(isClashing)).toHaveLength(1);
  const losses = (await records()).filter((r) => r.action === 'broker.data_loss').slice(lossesBefore);
  expect(losses.map((r) => r.chain)).toEqual(['ops']);
  expect(losses[0]!.detail).toMatchObject({ kind: 'rollback', rechained: 1 });
  // Nothing is left over: the flag the check looks at goes too, and later checks write nothing more.
  await waitFor(async () => (await deps.redis.exists(deps.keys.recoveryUnfinished())) === 0, 5_000, 50);
  await new Promise((r) => setTimeout(r, 600));
  const later = await records();
  expect(later.filter(isClashing)).toHaveLength(1);
  expect(later.filter((r) => r.action === 'broker.data_loss').slice(lossesBefore)).toHaveLength(1);
  await expectVerified();
  await b.stop();
}, 60_000);
