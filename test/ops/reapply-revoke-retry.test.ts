import { expect, test } from '@jest/globals';
import type { AuditLog } from '../../src/audit/audit-log.ts';
import type { AuditEvent } from '../../src/audit/record.ts';
import { reapplyEndings } from '../../src/ops/reapply.ts';
import { ADMIN, AGENT, call, openAgentTask } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';
import { exportAuditNow, quarantine, records, recoveryMonitor, rollBack, snapshot } from '../helpers/recovery-harness.ts';

/**
 * A rollback recovery applies again the endings Redis lost (src/ops/reapply.ts): a lease revoked after the
 * snapshot is revoked again, its `lease.revoke` record (the intent) appended before the lease is ended. An
 * attempt that appended the record and failed before ending the lease (Redis failing mid-way) left the lease
 * live: the next attempt appended a second record for the same revocation. Likewise a quarantine lifted again
 * (`quarantine.remove`, appended before the quarantine is dropped). Each is now written once per ending told
 * again (AuditLog.appendOnce), still before the side effect.
 */
const own = brokerOnOwnRedis('reapply-revoke-retry', { broker: { dataLossCheckMs: 600_000 } });

const reapplied = (e: { action?: unknown; detail?: unknown } | undefined, action: string): boolean =>
  e?.action === action && (e.detail as { reapplied?: unknown } | undefined)?.reapplied === 'redis_rolled_back';

/**
 * The audit log: the first append (of any kind) of a record `matching` lands, then fails (its answer lost,
 * Redis failing mid-way), once; `appended` counts the appends of such records.
 */
function failingOnceAfter(audit: AuditLog, matching: (e: AuditEvent | undefined) => boolean, appended: { n: number }): AuditLog {
  let failed = false;
  return new Proxy(audit, {
    get(target, prop) {
      const v = Reflect.get(target, prop) as unknown;
      if (typeof v !== 'function') return v;
      if (prop !== 'append' && prop !== 'appendTo' && prop !== 'appendOnce') return v.bind(target);
      return async (...args: unknown[]) => {
        const event = (prop === 'append' ? args[0] : args[1]) as AuditEvent | undefined;
        const out = await (v as (...a: unknown[]) => unknown).apply(target, args);
        if (matching(event)) {
          appended.n += 1;
          if (!failed) {
            failed = true;
            throw new Error('Redis failed mid-way (injected)');
          }
        }
        return out;
      };
    },
  });
}

test('a lease revoked again after a rollback, its record appended and the attempt failed before ending it, is recorded once', async () => {
  const { redis, t } = own;
  const { deps, services } = t.broker;
  await openAgentTask(t, 'rr-lease', [{ role: 'demo-api' }]);
  const issued = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'rr-lease', role: 'demo-api' });
  expect(issued.status).toBe(201);
  const leaseId = issued.body.leaseId as string;
  await deps.audit.flush();
  // Redis goes back to a snapshot taken before the lease was revoked (the export holds the revocation).
  await snapshot(redis);
  expect((await call(t.url, 'DELETE', `/v1/leases/${leaseId}`, t.as(AGENT))).status).toBe(202);
  await deps.audit.flush();
  await exportAuditNow(t);
  await rollBack(redis);
  expect((await deps.leases.get(leaseId))?.status).toBe('active');

  const appended = { n: 0 };
  const audit = failingOnceAfter(deps.audit, (e) => reapplied(e, 'lease.revoke'), appended);
  const a = recoveryMonitor(t, {
    reapply: (recs) => reapplyEndings({ ...deps, audit }, { tasks: services.tasks, admin: services.admin }, recs),
  });
  await a.init();
  await expect(a.check()).rejects.toThrow(/injected/);
  // The record landed, the lease was not ended.
  expect(appended.n).toBe(1);
  expect((await deps.leases.get(leaseId))?.status).toBe('active');
  await a.check();
  expect(a.ready).toBe(true);
  expect(['revoked', 'revoking']).toContain((await deps.leases.get(leaseId))?.status);
  const again = (await records(t)).filter((r) => r.leaseId === leaseId && reapplied(r, 'lease.revoke'));
  // Before: 2 (the retry appended it again).
  expect(again).toHaveLength(1);
  expect(again[0]).toMatchObject({ actor: 'broker', decision: 'ok', reason: 'revoked_by_caller' });
  await a.stop();
}, 60_000);

test('a quarantine lifted again after a rollback, its record appended and the attempt failed before lifting it, is recorded once', async () => {
  const { redis, t } = own;
  const { deps, services } = t.broker;
  const pattern = 'spiffe://dev.local/agent/rr-lifted';
  await quarantine(t, 'rr-lifted');
  await deps.audit.flush();
  await exportAuditNow(t);
  // Redis goes back to a snapshot taken before the quarantine was lifted (the export holds the lift).
  await snapshot(redis);
  expect((await call(t.url, 'DELETE', `/v1/admin/quarantine/${encodeURIComponent(pattern)}`, t.as(ADMIN))).status).toBe(200);
  await deps.audit.flush();
  await exportAuditNow(t);
  await rollBack(redis);
  expect(await deps.redis.hexists(deps.keys.quarantine(), pattern)).toBe(1);

  const appended = { n: 0 };
  const audit = failingOnceAfter(deps.audit, (e) => reapplied(e, 'quarantine.remove'), appended);
  const a = recoveryMonitor(t, {
    reapply: (recs) => reapplyEndings({ ...deps, audit }, { tasks: services.tasks, admin: services.admin }, recs),
  });
  await a.init();
  await expect(a.check()).rejects.toThrow(/injected/);
  expect(appended.n).toBe(1);
  expect(await deps.redis.hexists(deps.keys.quarantine(), pattern)).toBe(1);
  await a.check();
  expect(a.ready).toBe(true);
  expect(await deps.redis.hexists(deps.keys.quarantine(), pattern)).toBe(0);
  const again = (await records(t)).filter(
    (r) => (r.detail as { pattern?: unknown } | undefined)?.pattern === pattern && reapplied(r, 'quarantine.remove'),
  );
  // Before: 2.
  expect(again).toHaveLength(1);
  await a.stop();
}, 60_000);
