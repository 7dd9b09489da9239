import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RevokeContext } from '../../../src/providers/types.ts';
import { awsWorld, issueSession, roleConfig, task, type AwsWorld } from './helpers.ts';

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

  const verdict = (s: { accessKeyId: string }) => w.emu.evaluate(s.accessKeyId, 's3:GetObject', 'arn:aws:s3:::reports/x');
  const puts = (roleName: string) => w.emu.requests('PutRolePolicy').filter((r) => r.params.RoleName === roleName).length;
  /**
   * A role with a session each for agents a and b, a first writer (IAM calls may take 30 s: a held write is not
   * timed out and sent again under the test) whose PutRolePolicy IAM holds once it arrives, and another writer.
   */
  async function firstWriterHeld(name: string, other: Parameters<AwsWorld['makeProvider']>[0]) {
    const role = w.emu.createRole(name, { maxSessionDuration: 3600 });
    const first = w.makeProvider({ requestTimeoutMs: 30_000 });
    const a = await issueSession(w.provider, role.arn, task({ taskId: `${name}-a`, agent: 'spiffe://example.org/agent/a' }));
    const b = await issueSession(w.provider, role.arn, task({ taskId: `${name}-b`, agent: 'spiffe://example.org/agent/b' }));
    const stuck = w.emu.holdRequest('PutRolePolicy');
    const one = first.revoke(a.lease, roleConfig(role.arn), caller);
    await stuck.arrived;
    return { role, a, b, stuck, one, other: w.makeProvider(other), lock: first.denyList.keys(role.arn).lock };
  }

  it('a PutRolePolicy slower than the lock’s 10 s: the lock stays the writer’s, the next writer waits, both denied', async () => {
    const { role, a, b, stuck, one, other, lock } = await firstWriterHeld('r-held-slow', { requestTimeoutMs: 30_000 });
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
    const { role, a, b, stuck, one, other, lock } = await firstWriterHeld('r-held-lapsed', {});
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
