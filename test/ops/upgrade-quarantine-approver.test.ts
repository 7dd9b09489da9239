import { expect } from '@jest/globals';
import { Redis } from 'ioredis';
import { Keys } from '../../src/redis/keys.ts';
import { ADMIN, AGENT, auditRecords, call, ORCH, REDIS_URL, testRawConfig, UNLIMITED_SERVER, waitFor } from '../helpers/broker.ts';
import { extractPreviousRelease, previousReleaseTest, writeReleaseConfigs } from '../helpers/old-release.ts';
import { START_TIMEOUT_MS, processFixture } from '../helpers/process.ts';

/**
 * Quarantining an approver revokes the live leases issued under its approvals, found in the index of approved
 * leases that lease-create.lua writes (Keys.approvedLeases). The previous release (dd78339) writes no such entry, and
 * names neither the approval nor its approver in the lease: a credential it issued under a now-quarantined
 * approver's approval (before the upgrade, or during a rolling one) was not found and lived to its TTL. Found now
 * from the approval's side (src/admin/legacy-approved.ts). Here an API of the previous release issues them, beside
 * an API of this one (a rolling upgrade; an in-place one leaves the same records behind).
 */
const maybe = previousReleaseTest('test/ops/upgrade-quarantine-approver.test.ts');

const fx = processFixture();
const { issuer, as } = fx;
const prefix = fx.prefix('upgrade-qa');
const id = (p: string) => `spiffe://dev.local${p}`;

maybe(
  "the previous release's credentials issued under a quarantined approver's approvals are revoked too, and only those",
  async () => {
    const old = extractPreviousRelease();
    fx.onCleanup(old.remove);
    const raw = testRawConfig(issuer, prefix, { server: UNLIMITED_SERVER });
    const { oldFile, newFile } = writeReleaseConfigs(old.dir, raw, 'jit-upgrade-qa');
    const keys = new Keys(prefix);
    const r = new Redis(REDIS_URL);
    try {
      const [oldApi, fresh] = await Promise.all([
        fx.start(oldFile, { cwd: old.dir, args: ['--api'] }),
        fx.startBroker('upgrade-qa', newFile),
      ]);
      const [O, N] = [oldApi.url, fresh.url];
      const BOB = '/ops/up/bob';
      const CAROL = '/ops/carol-up';

      const open = async (taskId: string) => {
        const res = await call(N, 'POST', '/v1/tasks', as(ORCH), {
          taskId,
          agent: id(AGENT),
          tenant: 'acme',
          purpose: 'deploy',
          ttlSeconds: 600,
          grants: [{ role: 'prod-deploy' }, { role: 'demo-api' }],
        });
        expect(res.status).toBe(201);
      };
      /** A prod-deploy credential issued through `url`, approved by `approver`: its lease id. */
      const approved = async (url: string, taskId: string, approver: string, ttlSeconds: number) => {
        const ask = () => call(url, 'POST', '/v1/credentials', as(AGENT), { taskId, role: 'prod-deploy', ttlSeconds });
        const pending = await ask();
        expect(pending.status).toBe(202);
        expect((await call(url, 'POST', `/v1/approvals/${pending.body.approvalId}`, as(approver), { decision: 'approve' })).status).toBe(
          200,
        );
        const issued = await ask();
        expect(issued.status).toBe(201);
        return issued.body.leaseId as string;
      };

      await open('t-a');
      await open('t-b');
      // Issued by the previous release: under Bob's approvals (two tasks), under Carol's (same task, role and scopes
      // as one of Bob's, approved before Bob's was), and one needing no approval.
      const carolOld = await approved(O, 't-a', CAROL, 120);
      const bobOld = await approved(O, 't-a', BOB, 60);
      const bobOld2 = await approved(O, 't-b', BOB, 60);
      const plainOld = (await call(O, 'POST', '/v1/credentials', as(AGENT), { taskId: 't-a', role: 'demo-api' })).body.leaseId as string;
      // And by this release, under Bob's approval.
      const bobNew = await approved(N, 't-b', BOB, 90);
      // What the previous release left: no approval named in the lease, no entry in the index.
      for (const leaseId of [bobOld, bobOld2, carolOld])
        expect(JSON.parse((await r.hget(keys.lease(leaseId), 'd'))!).approvalId).toBeUndefined();

      const q = await call(N, 'POST', '/v1/admin/quarantine', as(ADMIN), { agent: id(BOB), reason: 'approver key leaked' });
      expect(q.status).toBe(201);
      // Before: approvedLeases 1 (this release's only), the previous release's two left `active` until their TTL.
      expect(q.body).toMatchObject({ tasks: 0, approvedLeases: 3 });
      const status = (leaseId: string) => r.hmget(keys.lease(leaseId), 'status', 'reason');
      for (const leaseId of [bobOld, bobOld2, bobNew]) {
        await waitFor(async () => (await status(leaseId))[0] === 'revoked', 10_000, 50);
        expect(await status(leaseId)).toEqual(['revoked', 'revoked_by_admin']);
      }
      // Carol's (another TTL: another request) and the one needing no approval stay live; so do the tasks.
      for (const leaseId of [carolOld, plainOld]) expect((await status(leaseId))[0]).toBe('active');
      for (const taskId of ['t-a', 't-b']) expect((await call(N, 'GET', `/v1/tasks/${taskId}`, as(ORCH))).body.status).toBe('open');
      const revokes = (await auditRecords(r, keys)).filter((x) => x.action === 'lease.revoke');
      expect(revokes.map((x) => x.leaseId).sort()).toEqual([bobOld, bobOld2, bobNew].sort());

      // Told again (the same pattern's recovery or reapply): nothing is revoked twice.
      const again = await call(N, 'POST', '/v1/admin/quarantine', as(ADMIN), { agent: id('/ops/up/*'), reason: 'again' });
      expect(again.body).toMatchObject({ approvedLeases: 0 });
    } finally {
      await r.quit();
    }
  },
  START_TIMEOUT_MS + 60_000,
);
