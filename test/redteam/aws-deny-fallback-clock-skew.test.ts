import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { DenyFallbackEvent } from '../../src/providers/aws/deny-list.ts';
import type { AwsProvider } from '../../src/providers/aws/provider.ts';
import type { TaskRecord } from '../../src/tasks/types.ts';
import { awsWorld, issueRequest, leaseFor, roleConfig, stsAs, task, type AwsWorld, sessionCode as code } from '../providers/aws/helpers.ts';

/**
 * Red team (after the fix-aws merge): when the deny list collapses into the
 * role-wide `aws:TokenIssueTime` cut-off, sessions that were revoked become
 * usable again if the broker's clock is behind AWS's, by less than the
 * configured tolerance (`providers.aws.clockSkewSeconds`, default 300 s).
 *
 * `DenyList.fit()` puts the role-wide cut-off at broker-now + 5 s and drops
 * every session and task entry, reasoning that "every entry is a session
 * issued before now". The folds right above it put their cut-off at
 * now + max(5 s, clockSkewSeconds) precisely because the broker's clock (its
 * Redis-time estimate) may be behind AWS's; the fallback does not. With the
 * broker 60 s behind AWS, every session revoked in the last ~55 s (AWS time)
 * has a TokenIssueTime after the cut-off, and its own entry is gone: it works
 * again until it expires (up to 12 h).
 *
 * Here: an agent's tasks end (`task_completed`, one task-tag entry each, long
 * sub-task ids as any agent can make; see aws-deny-task-tags-overflow.test.ts)
 * until the list overflows into the fallback. Impact: credentials of ended
 * tasks, held by the agent, work again ("nothing outlives the task" broken),
 * and it can be triggered by the same agent. Expected: a revoked session stays
 * denied (the fallback cut-off also leads by clockSkewSeconds, or keeps the
 * entries of sessions issued after it).
 *
 * Since the fix of aws-deny-task-tags-overflow.test.ts the broker remembers
 * whose task each tag is (in Redis) and folds the agent's tags into its own
 * wildcards instead; without that memory (Redis lost its data, simulated here
 * after every revocation; IAM keeps every deny) the tags cannot be folded and
 * the list still overflows into the fallback, which must then hold.
 *
 * Ended tasks are now denied by the wildcard on their session names, which
 * folds without Redis (aws-deny-fold-after-redis-loss.test.ts); tags are
 * still written for sessions named by earlier versions (`jit-<leaseId>`, no
 * keys), which is how these sessions are revoked here, so the fallback is
 * still reached and must still hold.
 */
let w: AwsWorld;
/** The broker's clock (Redis time) 60 s behind AWS's: within the default clockSkewSeconds of 300. */
const BEHIND_MS = 60_000;
const AGENT = 'spiffe://example.org/agent/busy';
/** A depth-2 sub-task id over 256 chars: its task tag is the 255-char hashed form. */
const longId = (i: number) => `t-root~${'m'.repeat(128)}~${'x'.repeat(120)}${String(i).padStart(8, '0')}`;

beforeAll(async () => {
  w = await awsWorld('rt-deny-fallback-skew');
});
afterAll(async () => {
  await w.close();
});

async function issue(p: AwsProvider, roleArn: string, t: TaskRecord) {
  const req = issueRequest(roleConfig(roleArn), { task: t, agent: t.agent });
  const out = await p.issue(req);
  return { lease: leaseFor(req, out.handle, out.expiresAt), client: stsAs(w.emu, out.credentials) };
}

describe('role-wide fallback with the broker clock behind AWS', () => {
  it('sessions of ended tasks stay denied after the list collapses into the role-wide cut-off', async () => {
    const role = w.emu.createRole('rt-fallback-skew', { maxSessionDuration: 3600 });
    const fallbacks: DenyFallbackEvent[] = [];
    const p = w.makeProvider({}, { onDenyFallback: (e) => void fallbacks.push(e) }, { clock: () => w.emu.now() - BEHIND_MS });
    const ended: Awaited<ReturnType<typeof issue>>[] = [];
    for (let i = 0; i < 45 && fallbacks.length === 0; i++) {
      const s = await issue(p, role.arn, task({ taskId: longId(i), agent: AGENT, depth: 2 }));
      // Revoked as a session named by an earlier version: its task is denied by its `task` tag (which it carries).
      const legacy = { ...s.lease, handle: { ...s.lease.handle, sessionName: `jit-${s.lease.leaseId}` } };
      await p.revoke(legacy, roleConfig(role.arn), { reason: 'task_completed' });
      const lost = await w.redis.keys(`${w.prefix}:*`);
      if (lost.length > 0) await w.redis.del(...lost);
      // Denied at once, by its task's tag (until the overflow: see below).
      ended.push(s);
    }
    expect(fallbacks.length).toBe(1); // the overflow happened

    // Every one of these sessions was revoked (its task completed); none may work again.
    const working = [];
    for (const [i, s] of ended.entries()) if ((await code(s.client)) === 'ok') working.push(i);
    expect(working).toEqual([]);
  }, 120_000);
});
