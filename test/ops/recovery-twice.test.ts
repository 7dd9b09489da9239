import { readArchive } from '../../src/audit/restore.ts';
import { resolvePath } from '../../src/config/load.ts';
import { silentLogger } from '../../src/logger.ts';
import { DataLossMonitor } from '../../src/ops/recovery.ts';
import { ADMIN, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team (locks at a 10-s hold): recovery after a data loss records one `broker.data_loss` per loss. A
 * recovering instance stalled under the recovery lock past its hold (the lock lapsed, another instance took
 * it and recovered, writing the marker) went on, found the marker written (SET NX refused), and still
 * recorded the loss a second time.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('recovery-twice', { broker: { dataLossCheckMs: 600_000 } });
}, 60_000);
afterAll(async () => {
  await t?.close();
});

test('a recovery whose lock lapsed mid-way records no second data loss (found by red team)', async () => {
  const { deps } = t.broker;
  // Something in the export, so that an empty Redis reads as a data loss.
  const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: 'spiffe://dev.local/agent/rt3-q', reason: 'x' });
  expect(q.status).toBeLessThan(300);
  const file = resolvePath(t.config.audit.export.file);
  let stalled = false;
  const monitor = (onRestore: () => Promise<void>) =>
    new DataLossMonitor({
      redis: deps.redis,
      keys: deps.keys,
      logger: silentLogger,
      signing: deps.signing,
      audit: deps.audit,
      readArchive: () => readArchive(file, deps.keys.prefix),
      restoreQuarantines: async (entries) => {
        await deps.quarantine.restore(entries);
        await onRestore();
      },
      clearCaches: () => {},
      restoreSecrets: async () => {},
      metrics: deps.metrics,
      exportFile: file,
      reapply: async () => ({ tasks: 0, leases: 0, quarantines: 0 }),
    });
  const b = monitor(async () => {});
  // A stalls past its hold after restoring the quarantines: its lock lapses and B recovers meanwhile.
  const a = monitor(async () => {
    if (stalled) return;
    stalled = true;
    await deps.redis.del(deps.keys.lock('recovery'));
    await b.init();
  });
  const before = (await deps.redis.xlen(deps.keys.auditStream('ops'))) as number;
  await deps.redis.del(deps.keys.epoch());
  await a.init().catch(() => {});
  await deps.audit.flush?.();
  expect(stalled).toBe(true);
  const records = (await deps.redis.xrange(deps.keys.auditStream('ops'), '-', '+')).slice(before);
  const losses = records.filter(([, f]) => (f[f.indexOf('r') + 1] ?? '').includes('"broker.data_loss"'));
  // Before: 2 (B's, then A's once it went on).
  expect(losses.length).toBe(1);
});
