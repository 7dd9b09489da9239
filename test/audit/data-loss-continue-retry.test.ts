import { AuditLog } from '../../src/audit/audit-log.ts';
import { AuditExporter } from '../../src/audit/export.ts';
import { readArchive } from '../../src/audit/restore.ts';
import { deriveSealKey } from '../../src/audit/seal.ts';
import { verifyAudit } from '../../src/audit/verify.ts';
import { readSecret, resolvePath } from '../../src/config/load.ts';
import { silentLogger } from '../../src/logger.ts';
import { DataLossMonitor } from '../../src/ops/recovery.ts';
import { ADMIN, auditRecords, call, openAgentTask } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';

/**
 * A data-loss recovery continues each chain from the export (continueChains). A chain that started over at seq 1
 * after the loss (records written before recovery) had its stream and head deleted there, before its records
 * were appended again behind the export's end and before the epoch marker was set. An attempt that failed in
 * between lost those records; and every chain it continued looked continued to the next attempt, which left it
 * out of its `broker.data_loss` records. Each chain is now continued in one step that keeps what it did
 * (loss-continue.lua), and a later attempt, of this instance or another, takes it from there: each record
 * appended once, each chain recorded.
 */
const own = brokerOnOwnRedis('loss-continue-retry', { broker: { dataLossCheckMs: 600_000 } });

type Fn = (...a: unknown[]) => unknown;
type Rec = Record<string, unknown>;

/** The buckets of the tasks opened so far: the export holds them all, so each is continued (and recorded) at every loss. */
const buckets = new Set<string>();

/** Records in ops and in the task's bucket, exported; Redis loses everything; an instance without the epoch guard writes on a fresh ops chain. */
async function loseWithLateRecord(agent: string, late: string): Promise<string[]> {
  const { redis, t } = own;
  const { deps } = t.broker;
  await openAgentTask(t, agent, [{ role: 'demo-api' }]);
  // Two ops records: the fresh chain (one record) is shorter than the export's, which is how it is told apart.
  for (const who of [agent, `${agent}-b`]) {
    const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: `spiffe://dev.local/agent/${who}`, reason: 'x' });
    expect(q.status).toBe(201);
  }
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
  await deps.audit.flush();
  const admin = redis.client();
  await admin.connect();
  await admin.flushall();
  admin.disconnect();
  const careless = new AuditLog({ redis: deps.redis, keys: deps.keys, logger: silentLogger, taskIndexMs: 60_000 });
  await careless.append({ action: 'access.deny', actor: late, decision: 'deny', reason: 'task_not_found' });
  await careless.flush();
  expect((await auditRecords(deps.redis, deps.keys)).map((r) => r.actor)).toEqual([late]);
  buckets.add(String(deps.keys.bucketOfTask(agent)));
  return ['ops', ...buckets];
}

/** The broker's audit log, failing while `failing()` when the late record is appended again. */
function failingReappend(late: string, failing: () => boolean, attempts: { n: number }): AuditLog {
  const { audit } = own.t.broker.deps;
  return new Proxy(audit, {
    get(target, prop) {
      const v = Reflect.get(target, prop) as unknown;
      if (typeof v !== 'function') return v;
      if (prop !== 'appendTo' && prop !== 'appendOnce') return v.bind(target);
      return async (...args: [unknown, Rec, ...unknown[]]) => {
        if (args[1].actor === late) {
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
  for (const chain of deps.keys.auditChains()) expect(await deps.redis.exists(`${deps.keys.auditBase(chain)}loss-continued`)).toBe(0);
  expect(await deps.redis.exists(deps.keys.lossRecords())).toBe(0);
}

function expectRecorded(after: Rec[], late: string, chains: string[]): void {
  // Before: the late record lost (taken off the chain, never appended again), and the bucket left unrecorded.
  expect(after.filter((r) => r.actor === late)).toHaveLength(1);
  const losses = after.filter((r) => r.action === 'broker.data_loss');
  expect(losses.map((r) => String(r.chain)).sort()).toEqual([...chains].sort());
  const ops = losses.find((r) => r.chain === 'ops')!;
  expect(ops.detail).toMatchObject({ rechained: 1 });
  expect((ops.detail as Rec).continuedFromSeq).toBeGreaterThan(0);
}

test('a data-loss recovery that failed after taking late records off a chain appends each once at its next attempt, and records every chain', async () => {
  const late = 'late-1';
  const chains = await loseWithLateRecord('loss-cont-1', late);
  let failing = true;
  const attempts = { n: 0 };
  const a = monitor(failingReappend(late, () => failing, attempts));
  await expect(a.init()).rejects.toThrow(/injected/);
  expect(attempts.n).toBe(1);
  expect(a.ready).toBe(false);
  // Taken off the chain, not yet appended again; the loss not yet recorded.
  expect((await records()).filter((r) => r.actor === late)).toHaveLength(0);
  expect(await own.t.broker.deps.redis.get(own.t.broker.deps.keys.epoch())).toBeNull();

  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  await a.check();
  expectRecorded(await records(), late, chains);
  await expectVerified();
  await a.stop();
}, 60_000);

test('when the instance that took late records off a chain fails before appending them, another appends each once, and a later attempt of the first nothing twice', async () => {
  const late = 'late-2';
  const chains = await loseWithLateRecord('loss-cont-2', late);
  let failing = true;
  const attempts = { n: 0 };
  const a = monitor(failingReappend(late, () => failing, attempts));
  await expect(a.init()).rejects.toThrow(/injected/);
  expect((await records()).filter((r) => r.actor === late)).toHaveLength(0);

  // An instance started now (it never saw the data) recovers: the chains look continued, what was done is kept.
  const b = monitor(own.t.broker.deps.audit);
  await b.init();
  expect(b.ready).toBe(true);
  expectRecorded(await records(), late, chains);

  // A was only slow: its next attempt appends and records nothing twice.
  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  expectRecorded(await records(), late, chains);
  await expectVerified();
  await a.stop();
  await b.stop();
}, 60_000);
