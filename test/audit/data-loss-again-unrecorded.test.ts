import { isDeepStrictEqual } from 'node:util';
import type { AuditLog } from '../../src/audit/audit-log.ts';
import { AuditExporter } from '../../src/audit/export.ts';
import { readArchive } from '../../src/audit/restore.ts';
import { deriveSealKey } from '../../src/audit/seal.ts';
import { verifyAudit } from '../../src/audit/verify.ts';
import { readSecret, resolvePath } from '../../src/config/load.ts';
import { silentLogger } from '../../src/logger.ts';
import { DataLossMonitor } from '../../src/ops/recovery.ts';
import { ADMIN, AGENT, auditRecords, call, openAgentTask } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';

/**
 * A data-loss recovery stores its `broker.data_loss` records with the epoch marker (loss-mark.lua) and writes
 * them from there. When Redis loses its data again before they are all written, the stored records go with it:
 * the next recovery recorded only the second loss, which knew nothing of what the first had lost (the instance's
 * known heads were reset by the first recovery), so the audit trail said "none known" for a chain whose records
 * the first recovery knew were lost. The instance that stored them keeps those it has not seen written and writes
 * them once Redis lost them (each once, under the lost marker's identity).
 */
const own = brokerOnOwnRedis('loss-again', { broker: { dataLossCheckMs: 600_000 } });

type Fn = (...a: unknown[]) => unknown;
type Rec = Record<string, unknown>;

test('records of a data loss that Redis lost again before they were written are written after the next recovery, once', async () => {
  const { redis, t } = own;
  const { deps } = t.broker;
  const file = resolvePath(t.config.audit.export.file);
  await openAgentTask(t, 'loss-again', [{ role: 'demo-api' }]);
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
  // Records after the export (in ops and in the task's bucket): what this instance knows the loss took.
  // (the quarantine ends the task: a record in its bucket too).
  const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: `spiffe://dev.local${AGENT}`, reason: 'x' });
  expect(q.status).toBe(201);
  await deps.audit.flush();
  const admin = redis.client();
  await admin.connect();
  await admin.flushall();

  // The first recovery: the marker and its records are stored, one record lands, the rest fail.
  let failing = true;
  let firstWrite: Promise<unknown> | undefined;
  const tried: { chain: string; detail: Rec }[] = [];
  const flaky = new Proxy(deps.audit, {
    get(target, prop) {
      const v = Reflect.get(target, prop) as unknown;
      if (typeof v !== 'function') return v;
      if (prop !== 'appendTo' && prop !== 'appendOnce') return v.bind(target);
      return async (...args: [unknown, { action: string; detail?: Rec }, ...unknown[]]) => {
        if (args[1].action !== 'broker.data_loss' || !failing) return (v as Fn).apply(target, args);
        tried.push({ chain: String(args[0]), detail: args[1].detail ?? {} });
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
  const bucket = String(deps.keys.bucketOfTask('loss-again'));
  expect(new Set(tried.map((x) => x.chain))).toEqual(new Set(['ops', bucket]));
  // What the first recovery knew was lost (the bucket's record after the export).
  expect(tried.find((x) => x.chain === bucket)!.detail.lostFromSeq).toBeDefined();
  const unwritten = tried.slice(1);
  expect(unwritten).toHaveLength(1);

  // Redis loses its data again before anyone wrote the rest: the stored records go with it.
  await deps.audit.flush();
  await admin.flushall();
  admin.disconnect();
  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  // A later check writes nothing twice.
  await a.check();
  await deps.audit.flush();
  const losses = (await auditRecords(deps.redis, deps.keys)).filter((r) => r.action === 'broker.data_loss');
  // The second loss: one in ops and one in the bucket; and the first loss's record that was never written.
  // Before: only the second loss's, and what the first knew lost in that chain was recorded nowhere.
  const first = losses.filter((r) => String(r.chain) === unwritten[0]!.chain && isDeepStrictEqual(r.detail, unwritten[0]!.detail));
  expect(first).toHaveLength(1);
  expect(losses.map((r) => String(r.chain)).sort()).toEqual(['ops', bucket, unwritten[0]!.chain].sort());
  const sealKey = deriveSealKey(readSecret(t.config.secrets.kek!, 'secrets.kek'));
  const reports = await verifyAudit(deps.redis, deps.keys, { exportFile: file, sealKey });
  for (const r of reports) expect({ chain: r.chain, problems: r.problems }).toEqual({ chain: r.chain, problems: [] });
  expect(await deps.redis.exists(deps.keys.lossRecords())).toBe(0);
  await a.stop();
}, 60_000);
