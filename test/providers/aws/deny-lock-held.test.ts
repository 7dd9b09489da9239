import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AwsProvider } from '../../../src/providers/aws/provider.ts';
import type { RevokeContext } from '../../../src/providers/types.ts';
import type { TaskRecord } from '../../../src/tasks/types.ts';
import { awsWorld, issueRequest, leaseFor, roleConfig, task, type AwsWorld } from './helpers.ts';

/**
 * Red team of the deny-list lock set for 10 s and kept extended while a write runs (not set for 60 s): two
 * writers on one role must not lose a deny to each other.
 * - A holder whose PutRolePolicy takes longer than the 10 s keeps the lock (extended): the next writer waits for
 *   it rather than reading the policy without the first deny and writing beside it.
 * - A holder whose lock lapsed under it anyway (its event loop stalled, or it was cut off from Redis, past the
 *   10 s) has its late write land over the next holder's: its ledger write is refused (fenced), so it merges the
 *   next holder's ledger and writes again: both denied, before any read-back.
 */
const caller: RevokeContext = { reason: 'revoked_by_caller' };
const HOLD_MS = 10_000;

describe("the deny list's role lock under a slow or stalled writer", () => {
  let w: AwsWorld;
  beforeAll(async () => {
    w = await awsWorld('deny-lock-held');
  });
  afterAll(async () => {
    await w.close();
  });

  async function issue(provider: AwsProvider, roleArn: string, t: TaskRecord) {
    const req = issueRequest(roleConfig(roleArn), { task: t });
    const out = await provider.issue(req);
    return { lease: leaseFor(req, out.handle, out.expiresAt), accessKeyId: String(out.credentials.AccessKeyId) };
  }
  const verdict = (s: { accessKeyId: string }) => w.emu.evaluate(s.accessKeyId, 's3:GetObject', 'arn:aws:s3:::reports/x');
  const puts = (roleName: string) => w.emu.requests('PutRolePolicy').filter((r) => r.params.RoleName === roleName).length;

  it('a PutRolePolicy slower than the lock’s 10 s: the lock stays the writer’s, the next writer waits, both denied', async () => {
    const role = w.emu.createRole('r-held-slow', { maxSessionDuration: 3600 });
    // IAM calls may take 30 s here: the held write is not timed out and retried under the test.
    const first = w.makeProvider({ requestTimeoutMs: 30_000 });
    const other = w.makeProvider({ requestTimeoutMs: 30_000 });
    const a = await issue(w.provider, role.arn, task({ taskId: 't-slow-a', agent: 'spiffe://example.org/agent/a' }));
    const b = await issue(w.provider, role.arn, task({ taskId: 't-slow-b', agent: 'spiffe://example.org/agent/b' }));
    const lock = first.denyList.keys(role.arn).lock;

    const stuck = w.emu.holdRequest('PutRolePolicy');
    const one = first.revoke(a.lease, roleConfig(role.arn), caller);
    await stuck.arrived;
    const token = await w.redis.get(lock);
    expect(token).not.toBeNull();
    await sleep(HOLD_MS + 1500);
    // Without the extension the lock lapsed at 10 s and the next writer wrote beside this one.
    expect(await w.redis.get(lock)).toBe(token);
    expect(await w.redis.pttl(lock)).toBeLessThanOrEqual(HOLD_MS);
    const two = other.revoke(b.lease, roleConfig(role.arn), caller);
    await sleep(1000);
    expect(await w.redis.get(lock)).toBe(token);
    expect(puts(role.roleName)).toBe(0); // the held one is logged once it is answered
    expect(verdict(b)).toBe('allow');

    stuck.release();
    await Promise.all([one, two]);
    expect([verdict(a), verdict(b)]).toEqual(['explicit-deny', 'explicit-deny']);
    // One write each: nothing was lost and written again.
    expect(puts(role.roleName)).toBe(2);
  }, 40_000);

  it('a writer whose lock lapsed mid-write (stalled, cut off from Redis): its late write erases the next one’s deny, and it writes it back', async () => {
    const role = w.emu.createRole('r-held-lapsed', { maxSessionDuration: 3600 });
    const first = w.makeProvider({ requestTimeoutMs: 30_000 });
    const other = w.makeProvider();
    const a = await issue(w.provider, role.arn, task({ taskId: 't-lapse-a', agent: 'spiffe://example.org/agent/a' }));
    const b = await issue(w.provider, role.arn, task({ taskId: 't-lapse-b', agent: 'spiffe://example.org/agent/b' }));
    const lock = first.denyList.keys(role.arn).lock;

    const stuck = w.emu.holdRequest('PutRolePolicy');
    const one = first.revoke(a.lease, roleConfig(role.arn), caller);
    await stuck.arrived;
    // What a stall past the TTL comes to: the lock lapsed while the write was on the wire.
    await w.redis.del(lock);
    await other.revoke(b.lease, roleConfig(role.arn), caller);
    expect([verdict(a), verdict(b)]).toEqual(['allow', 'explicit-deny']);
    // The first write lands now, with a document read before the second: b's deny is gone from IAM.
    stuck.release();
    await stuck.landed;
    await one;
    // Its ledger write was refused (the lock was not its own): merged with b's ledger, written again.
    expect([verdict(a), verdict(b)]).toEqual(['explicit-deny', 'explicit-deny']);
    expect(await w.makeProvider().denyList.verify(role.arn)).toBe('ok');
  }, 40_000);
});
