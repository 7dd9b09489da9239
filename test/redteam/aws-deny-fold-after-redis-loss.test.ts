import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { DenyFallbackEvent, DenyFoldEvent } from '../../src/providers/aws/deny-list.ts';
import type { AwsProvider } from '../../src/providers/aws/provider.ts';
import { agentKeyFor } from '../../src/providers/aws/session-name.ts';
import type { TaskRecord } from '../../src/tasks/types.ts';
import { awsWorld, issueRequest, leaseFor, roleConfig, stsAs, task, type AwsWorld, sessionCode as code } from '../providers/aws/helpers.ts';

/**
 * Red team: the owners of ended tasks' `task` tag entries lived only in
 * Redis (deny-owners.ts). After a Redis data loss the tags could no longer be
 * counted to their agent nor folded, so an agent ending many sub-tasks (long
 * ids: 255-char tags) overflowed the deny list into the role-wide
 * `aws:TokenIssueTime` cut-off, which cuts off every agent on the role.
 *
 * Now an ended task is denied by the wildcard on its session names
 * (`*:jit-<agent key>-<task key>-*`): the policy text says whose it is, so
 * the agent is folded with or without Redis. Here the broker's Redis keys are
 * wiped after every revocation (IAM keeps every deny). Expected: no role-wide
 * cut-off, the busy agent's entries folded into its own wildcard, every ended
 * session denied, and a bystander's live session keeps working.
 */
let w: AwsWorld;
const AGENT = 'spiffe://example.org/agent/busy';
const BYSTANDER = 'spiffe://example.org/agent/bystander';
/** A depth-2 sub-task id over 256 chars: before the fix, its task tag was the 255-char hashed form. */
const longId = (i: number) => `t-root~${'m'.repeat(128)}~${'x'.repeat(120)}${String(i).padStart(8, '0')}`;
/** Overflows the default 10,240-char budget with wildcards (some 30 chars each); tags did after about 40. */
const ENDED = 380;
const POLICY = 'jit-broker-revoked-sessions';

beforeAll(async () => {
  w = await awsWorld('rt-deny-fold-redis-loss');
});
afterAll(async () => {
  await w.close();
});

async function issue(p: AwsProvider, roleArn: string, t: TaskRecord) {
  const req = issueRequest(roleConfig(roleArn), { task: t, agent: t.agent });
  const out = await p.issue(req);
  return { lease: leaseFor(req, out.handle, out.expiresAt), client: stsAs(w.emu, out.credentials) };
}

const wipeRedis = async () => {
  const keys = await w.redis.keys(`${w.prefix}:*`);
  if (keys.length > 0) await w.redis.del(...keys);
};

describe('ended sub-tasks after a Redis data loss', () => {
  it('folds the busy agent from the policy text alone: no role-wide cut-off, the bystander keeps working', async () => {
    const role = w.emu.createRole('rt-fold-redis-loss', { maxSessionDuration: 3600 });
    const fallbacks: DenyFallbackEvent[] = [];
    const folds: DenyFoldEvent[] = [];
    const p = w.makeProvider({}, { onDenyFallback: (e) => void fallbacks.push(e), onDenyFold: (e) => void folds.push(e) });
    const live = await issue(p, role.arn, task({ taskId: 't-bystander', agent: BYSTANDER }));
    // The bystander has a revoked session of its own (an entry in the list), and a live one.
    const gone = await issue(p, role.arn, task({ taskId: 't-bystander', agent: BYSTANDER }));
    await p.revoke(gone.lease, roleConfig(role.arn), { reason: 'revoked_by_caller' });

    const ended: Awaited<ReturnType<typeof issue>>[] = [];
    for (let i = 0; i < ENDED; i++) {
      const s = await issue(p, role.arn, task({ taskId: longId(i), agent: AGENT, depth: 2 }));
      await p.revoke(s.lease, roleConfig(role.arn), { reason: 'task_completed' });
      await wipeRedis(); // Redis lost its data: IAM keeps every deny, Redis nothing
      ended.push(s);
    }

    expect(fallbacks).toEqual([]);
    expect(await code(live.client)).toBe('ok'); // before: the bystander was folded (`*:jit-<its key>-*`) and cut off
    expect(JSON.stringify(w.emu.rolePolicy(role.roleName, POLICY) ?? {})).not.toContain('JitCutoffUntil');
    expect(folds.length).toBeGreaterThan(0);
    expect(folds.every((f) => f.agentKey === agentKeyFor(AGENT))).toBe(true);

    const working = [];
    for (const [i, s] of ended.entries()) if ((await code(s.client)) === 'ok') working.push(i);
    expect(working).toEqual([]);
    expect(await code(gone.client)).toBe('AccessDenied');
  }, 120_000);
});
