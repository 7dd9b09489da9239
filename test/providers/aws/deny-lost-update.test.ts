import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import calculateSlot from 'cluster-key-slot';
import type { RevokeContext } from '../../../src/providers/types.ts';
import { AGENT, ORCH, call, startTestBroker, waitFor, type TestBroker } from '../../helpers/broker.ts';
import { awsForBroker, awsWorld, callerIdentityAs, issueSession, roleConfig, task, type AwsWorld } from './helpers.ts';

/**
 * Found by a red-team pass: the role's deny policy is read, merged and written whole (PutRolePolicy), one
 * writer at a time under a Redis lock. The lock orders the writers that are alive, not the requests on the
 * wire: an attempt that timed out (the writer retried it and went on) can still land at IAM after a later
 * writer's document, and put back a document without that writer's deny. The revoked session worked again
 * until its own expiry. IAM has no conditional write, so this is caught after the fact: Redis keeps every
 * deny written (the ledger, as long as the latest of them must last) and the sweeper's reconcile pass
 * re-reads each role's policy and writes back any deny missing from it.
 */
const caller: RevokeContext = { reason: 'revoked_by_caller' };
const completed: RevokeContext = { reason: 'task_completed' };
const killSwitch: RevokeContext = { reason: 'revoked_by_admin', adminScope: 'agent' };

describe("two writers on one role, the first one's timed-out PutRolePolicy landing last", () => {
  let w: AwsWorld;
  beforeAll(async () => {
    w = await awsWorld('deny-lost-update');
  });
  afterAll(async () => {
    await w.close();
  });

  it.each([
    ['a revoke after a revoke', caller],
    ['a kill switch after a revoke', killSwitch],
    ["a task's end after a revoke", completed],
  ] as const)(
    '%s: the later deny is re-added by the reconcile pass',
    async (_name, second) => {
      const role = w.emu.createRole(`r-lost-${second.reason}`.replaceAll('_', '-'), { maxSessionDuration: 3600 });
      // Two workers; the first one's IAM calls time out after 300 ms (then retried, as configured).
      const first = w.makeProvider({ requestTimeoutMs: 300 });
      const other = w.makeProvider();
      const a = await issueSession(w.provider, role.arn, task({ taskId: 't-first', agent: 'spiffe://example.org/agent/first' }));
      const b = await issueSession(w.provider, role.arn, task({ taskId: 't-second', agent: 'spiffe://example.org/agent/second' }));
      const verdict = (s: { accessKeyId: string }) => w.emu.evaluate(s.accessKeyId, 's3:GetObject', 'arn:aws:s3:::reports/x');
      expect(verdict(b)).toBe('allow');

      // The first writer's first PutRolePolicy is stuck on its way: it times out, is sent again and lands.
      const stuck = w.emu.holdRequest('PutRolePolicy');
      await first.revoke(a.lease, roleConfig(role.arn), caller);
      expect(verdict(a)).toBe('explicit-deny');
      // The second writer reads that, adds its deny, writes: both are denied.
      await other.revoke(b.lease, roleConfig(role.arn), second);
      expect(verdict(b)).toBe('explicit-deny');
      // Now the stuck attempt lands: the document of before the second writer's.
      stuck.release();
      await stuck.landed;
      expect(verdict(b)).toBe('allow'); // the lost update, as IAM holds it
      // Before: nothing ever looked again; the revoked session worked until its own expiry.
      await other.reconcile?.();
      expect(verdict(b)).toBe('explicit-deny');
      expect(verdict(a)).toBe('explicit-deny');
      // IAM holds the whole ledger now: the next look writes nothing.
      const puts = w.emu.requests('PutRolePolicy').length;
      expect(await w.makeProvider().denyList.verify(role.arn)).toBe('ok');
      expect(w.emu.requests('PutRolePolicy').length).toBe(puts);
      // One look per role per revocationVerifySeconds, whichever worker's pass comes first.
      const reads = w.emu.requests('GetRolePolicy').length;
      await first.reconcile?.();
      expect(w.emu.requests('GetRolePolicy').length).toBe(reads);
    },
    30_000,
  );

  it("keeps the ledger in its lock's slot (a Redis Cluster runs the fenced write on one node), under the prefix", () => {
    const k = w.provider.denyList.keys('arn:aws:iam::123456789012:role/path/agent-reports');
    expect(calculateSlot(k.ledger)).toBe(calculateSlot(k.lock));
    expect(k.ledger.startsWith(`${w.prefix}:`)).toBe(true);
  });

  it('stops looking at a role deleted meanwhile: nothing is left to deny there', async () => {
    const role = w.emu.createRole('r-lost-deleted', { maxSessionDuration: 3600 });
    const a = await issueSession(w.provider, role.arn, task({ taskId: 't-deleted' }));
    await w.provider.revoke(a.lease, roleConfig(role.arn), caller);
    expect(await w.provider.denyList.verify(role.arn)).toBe('ok');
    w.emu.deleteRole(role.roleName);
    // IAM holds nothing: written again, and IAM says there is no such role (nothing was missing after all).
    expect(await w.provider.denyList.verify(role.arn)).toBe('ok');
    const calls = w.emu.requests().length;
    // Else every look would write again (and be refused) until the ledger expired, up to 12 h later.
    expect(await w.provider.denyList.verify(role.arn)).toBe('none');
    expect(w.emu.requests().length).toBe(calls);
  });
});

describe('a broker: the sweeper re-adds a deny a late write erased', () => {
  let t: TestBroker;
  let aws: Awaited<ReturnType<typeof awsForBroker>>;
  beforeAll(async () => {
    aws = await awsForBroker();
    t = await startTestBroker('deny-lost-update', {
      config: {
        providers: { aws: { ...aws.providers.aws, revocation: 'iam-deny', requestTimeoutMs: 300, revocationVerifySeconds: 1 } },
        roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
        revocation: {
          backoffMs: 50,
          maxBackoffMs: 200,
          reconcileIntervalMs: 200,
          concurrency: 4,
          lockMs: 1000,
          stalledCheckMs: 500,
          sweepMs: 20,
        },
      },
    });
  }, 60_000);
  afterAll(async () => {
    await t?.close();
    await aws?.emu.stop();
  });

  async function credential(taskId: string): Promise<{ leaseId: string; credentials: Record<string, string> }> {
    const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
      taskId,
      agent: `spiffe://dev.local${AGENT}`,
      tenant: 'acme',
      purpose: 'lost update',
      ttlSeconds: 3600,
      grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
    });
    expect(open.status).toBe(201);
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'reports-bucket' });
    expect(r.status).toBe(201);
    return r.body;
  }
  const whoAmI = (c: Record<string, string>) =>
    callerIdentityAs(aws.emu.url, { accessKeyId: c.AccessKeyId!, secretAccessKey: c.SecretAccessKey!, sessionToken: c.SessionToken! });
  const revoked = async (leaseId: string) => {
    expect((await call(t.url, 'DELETE', `/v1/leases/${leaseId}`, t.as(AGENT))).status).toBe(202);
    await waitFor(async () => (await t.broker.deps.leases.get(leaseId))?.status === 'revoked', 15_000);
  };

  it("two DELETEs on one role, the first one's timed-out write landing last: the second session is denied again", async () => {
    const a = await credential('t-lu-a');
    const b = await credential('t-lu-b');
    const stuck = aws.emu.holdRequest('PutRolePolicy');
    await revoked(a.leaseId);
    await revoked(b.leaseId);
    expect(await whoAmI(b.credentials)).toBe('AccessDenied');
    stuck.release();
    await stuck.landed;
    // Before: `ok` until the session's own expiry (an hour).
    await waitFor(async () => (await whoAmI(b.credentials)) === 'AccessDenied', 10_000, 100);
    expect(await whoAmI(a.credentials)).toBe('AccessDenied');
  }, 60_000);
});
