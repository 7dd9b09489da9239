import { Redis } from 'ioredis';
import { AuditExporter } from '../../src/audit/export.ts';
import { deriveSealKey } from '../../src/audit/seal.ts';
import { verifyAudit } from '../../src/audit/verify.ts';
import { readSecret, resolvePath } from '../../src/config/load.ts';
import { silentLogger } from '../../src/logger.ts';
import { call, dropPrefix, ORCH, REDIS_URL, startTestBroker, type TestBroker, uniquePrefix, waitFor } from '../helpers/broker.ts';

/**
 * Found by a newcomer following docs/audit.md after a Redis data loss: `npm run audit:verify` said BROKEN
 * ("sealing has stopped") on every chain that had been idle for longer than audit.sealMaxAgeSeconds before the
 * loss. Idle chains are resealed in Redis only, so after the loss the newest seal left was the export's old one,
 * and the `broker.data_loss` record recovery writes behind it stayed unsealed until the next seal pass (up to
 * audit.sealIntervalSeconds later). Recovery now runs a seal pass at once.
 */
let b: TestBroker;
let conn: Redis;
const prefix = uniquePrefix('loss-seal');

beforeAll(async () => {
  // The broker's own periodic pass (every 60 s) does not run during the test: every seal is the test's or recovery's.
  b = await startTestBroker('loss-seal', {
    prefix,
    config: { audit: { sealIntervalSeconds: 60, sealMaxAgeSeconds: 180 } },
    broker: { dataLossCheckMs: 100 },
  });
  conn = new Redis(REDIS_URL);
}, 30_000);
afterAll(async () => {
  conn?.disconnect();
  await b?.close();
});

test('right after recovering from a data loss, every chain verifies as intact, idle ones included', async () => {
  const { deps } = b.broker;
  const exportFile = resolvePath(b.config.audit.export.file);
  const sealKey = deriveSealKey(readSecret(b.config.secrets.kek!, 'secrets.kek'));
  const r = await call(b.url, 'POST', '/v1/tasks', b.as(ORCH), {
    taskId: `t-loss-seal-${Date.now()}`,
    agent: 'spiffe://dev.local/agent/support',
    tenant: 'acme',
    purpose: 'seal after loss',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
  });
  expect(r.status).toBe(201);
  await deps.audit.flush();
  // One pass, as the broker's periodic one would: every record in the file, each chain sealed there.
  const exporter = new AuditExporter({
    redis: conn,
    keys: deps.keys,
    logger: silentLogger,
    file: exportFile,
    maxFileBytes: b.config.audit.export.maxFileBytes,
    retention: b.config.audit.retention,
    sealKey,
    sealIntervalMs: 60_000,
    sealMaxAgeMs: 180_000,
    audit: async () => {},
    retentionIntervalMs: 60_000,
    now: () => Date.now(),
  });
  await exporter.exportNow();
  await exporter.close();
  // Then the chains stay idle for longer than the bound the verify below holds them to.
  const bound = 1500;
  await new Promise((res) => setTimeout(res, bound + 300));

  await dropPrefix(prefix);
  await waitFor(async () => (await deps.redis.get(deps.keys.epoch())) !== null && (await fetch(`${b.url}/readyz`)).status === 200, 10_000);
  // Well within the bound of the recovery: the broker.data_loss records are sealed, not "sealing has stopped".
  const verified = async () => verifyAudit(deps.redis, deps.keys, { exportFile, sealKey, maxSealAgeMs: bound });
  const reports = await waitFor(async () => {
    const rs = await verified();
    return rs.every((c) => c.ok) ? rs : undefined;
  }, 1000).catch(() => verified());
  expect(reports.flatMap((c) => c.problems.map((p) => `chain ${c.chain}: ${p.problem}`))).toEqual([]);
  // Each chain with records went on after a broker.data_loss record.
  expect(reports.filter((c) => c.records > 0).every((c) => c.losses.length === 1)).toBe(true);
});
