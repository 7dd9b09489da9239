import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { DenyFallbackEvent, DenyFoldEvent } from '../../src/providers/aws/deny-list.ts';
import type { AwsProvider } from '../../src/providers/aws/provider.ts';
import type { RevokeContext } from '../../src/providers/types.ts';
import type { TaskRecord } from '../../src/tasks/types.ts';
import { awsWorld, issueRequest, leaseFor, roleConfig, stsAs, task, type AwsWorld, sessionCode as code } from '../providers/aws/helpers.ts';

/**
 * Red team: a role's revocation deny list lives in one inline IAM policy
 * (10,240 characters for all of a role's inline policies). An agent that
 * opened a few hundred sessions and had them revoked (DELETE /v1/leases, or
 * `jit exec` in a loop) overflowed it, and the broker fell back to a
 * role-wide `aws:TokenIssueTime` cut-off: every agent on the role lost its
 * live sessions, including agents that did nothing. The list now folds the
 * busy agent's entries (one task's, then the agent's, by wildcards on session
 * names) and keeps everyone else working; the role-wide cut-off is the last
 * resort. Checked against the strict IAM/STS emulator through the real SDK.
 */
let w: AwsWorld;
const POLICY = 'jit-broker-revoked-sessions';
const SKEW_MS = 300_000;
const BUSY = 'spiffe://example.org/agent/busy';
const OTHER = 'spiffe://example.org/agent/other';
const QUIET = 'spiffe://example.org/agent/quiet';
const caller: RevokeContext = { reason: 'revoked_by_caller' };
/** Enough to overflow 10,240 characters whatever the session names look like (about 245 on the old format). */
const SESSIONS = 260;

beforeAll(async () => {
  w = await awsWorld('rt-deny-overflow');
});
afterAll(async () => {
  await w.close();
});

async function issue(p: AwsProvider, roleArn: string, t: TaskRecord) {
  const req = issueRequest(roleConfig(roleArn), { task: t, agent: t.agent });
  const out = await p.issue(req);
  return {
    req,
    out,
    lease: leaseFor(req, out.handle, out.expiresAt),
    client: stsAs(w.emu, out.credentials),
    key: String(out.credentials.AccessKeyId),
  };
}
type Issued = Awaited<ReturnType<typeof issue>>;

const verdict = (s: Issued) => w.emu.evaluate(s.key, 's3:GetObject', 'arn:aws:s3:::reports/x');
const policyChars = (roleName: string) => JSON.stringify(w.emu.rolePolicy(roleName, POLICY) ?? {}).length;

/** A role with bystanders: `quiet` never revoked anything, `other` had one session revoked and has one live. */
async function scene(name: string) {
  const role = w.emu.createRole(name, { maxSessionDuration: 3600 });
  const folds: DenyFoldEvent[] = [];
  const fallbacks: DenyFallbackEvent[] = [];
  const p = w.makeProvider({}, { onDenyFold: (e) => void folds.push(e), onDenyFallback: (e) => void fallbacks.push(e) });
  const quiet = await issue(p, role.arn, task({ taskId: 't-quiet', agent: QUIET }));
  const otherRevoked = await issue(p, role.arn, task({ taskId: 't-other', agent: OTHER }));
  const otherLive = await issue(p, role.arn, task({ taskId: 't-other', agent: OTHER }));
  await p.revoke(otherRevoked.lease, roleConfig(role.arn), caller);
  return { role, p, folds, fallbacks, quiet, otherRevoked, otherLive };
}

/** What must hold after the overflow: bystanders work, every revoked session is denied, nothing role-wide. */
async function everyoneElseWorks(s: Awaited<ReturnType<typeof scene>>, revoked: Issued[]) {
  expect(s.fallbacks).toEqual([]);
  expect(await code(s.quiet.client)).toBe('ok');
  expect(await code(s.otherLive.client)).toBe('ok');
  expect(await code(s.otherRevoked.client)).toBe('AccessDenied');
  for (const r of revoked) expect(verdict(r)).toBe('explicit-deny');
  expect(await code(revoked[0]!.client)).toBe('AccessDenied');
  expect(await code(revoked.at(-1)!.client)).toBe('AccessDenied');
  expect(policyChars(s.role.roleName)).toBeLessThanOrEqual(10_240);
}

describe('a busy agent overflows the deny list of a shared role', () => {
  it('many revoked sessions of one task: the task is folded, the agent’s other task and every other agent keep working', async () => {
    const s = await scene('rt-overflow-task');
    const noisy = task({ taskId: 't-noisy', agent: BUSY });
    const busyElsewhere = await issue(s.p, s.role.arn, task({ taskId: 't-busy-other', agent: BUSY }));
    const revoked: Issued[] = [];
    for (let i = 0; i < SESSIONS; i++) {
      const r = await issue(s.p, s.role.arn, noisy);
      await s.p.revoke(r.lease, roleConfig(s.role.arn), caller);
      revoked.push(r);
    }
    await everyoneElseWorks(s, revoked);
    expect(await code(busyElsewhere.client)).toBe('ok'); // a task fold, not an agent fold
    expect(s.folds.length).toBeGreaterThan(0);
    expect(s.folds.every((f) => f.scope === 'task' && f.agent === BUSY && f.taskId === 't-noisy')).toBe(true);

    // Sessions of the folded task issued after the cut-off work, and are denied one by one again.
    await later(SKEW_MS + 10_000, async () => {
      const next = await issue(s.p, s.role.arn, noisy);
      expect(await code(next.client)).toBe('ok');
      await s.p.revoke(next.lease, roleConfig(s.role.arn), caller);
      expect(await code(next.client)).toBe('AccessDenied');
      expect(await code(s.quiet.client)).toBe('ok');
    });
  }, 120_000);

  it('one revoked session in each of many tasks: the agent is folded, every other agent keeps working', async () => {
    const s = await scene('rt-overflow-agent');
    const revoked: Issued[] = [];
    for (let i = 0; i < SESSIONS; i++) {
      const r = await issue(s.p, s.role.arn, task({ taskId: `t-spray-${i}`, agent: BUSY }));
      await s.p.revoke(r.lease, roleConfig(s.role.arn), caller);
      revoked.push(r);
    }
    await everyoneElseWorks(s, revoked);
    const agentFolds = s.folds.filter((f) => f.scope === 'agent');
    expect(agentFolds.length).toBeGreaterThan(0);
    expect(agentFolds.every((f) => f.agent === BUSY && f.patterns.length === 1)).toBe(true);

    await later(SKEW_MS + 10_000, async () => {
      const next = await issue(s.p, s.role.arn, task({ taskId: 't-spray-next', agent: BUSY }));
      expect(await code(next.client)).toBe('ok');
    });
  }, 120_000);
});

/** Runs `fn` with the emulator (AWS's clock, and the providers' injected clock) moved by `ms`, then moves it back. */
async function later<T>(ms: number, fn: () => Promise<T>): Promise<T> {
  w.emu.advanceTime(ms);
  try {
    return await fn();
  } finally {
    w.emu.advanceTime(-ms);
  }
}
