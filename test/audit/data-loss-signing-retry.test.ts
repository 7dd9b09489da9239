import { readArchive } from '../../src/audit/restore.ts';
import { openAgentTask } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';
import { exportAuditNow, exportFile, records, recoveryMonitor, wipe } from '../helpers/recovery-harness.ts';

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
  await openAgentTask(t, 'loss-signing', [{ role: 'demo-api' }]);
  await deps.audit.flush();
  await exportAuditNow(t);
  await wipe(redis);

  let failing = true;
  const a = recoveryMonitor(t, {
    // The first attempt fails reading the export (after the key was created).
    readArchive: () => (failing ? Promise.reject(new Error('export unreadable (injected)')) : readArchive(exportFile(t), deps.keys.prefix)),
  });
  await expect(a.init()).rejects.toThrow(/injected/);
  expect(await deps.redis.hlen(deps.keys.signingKeys())).toBe(1);
  failing = false;
  await a.check();
  expect(a.ready).toBe(true);
  await a.check();
  const recreated = (await records(t)).filter((r) => r.action === 'signing.recreated');
  // Before: none (the next attempt found the key and created none).
  expect(recreated).toHaveLength(1);
  expect(recreated[0]!.chain).toBe('ops');
  await a.stop();
}, 60_000);
