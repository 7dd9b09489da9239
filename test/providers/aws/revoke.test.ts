import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { AssumeRoleCommand, STSClient } from '@aws-sdk/client-sts';
import { IAMClient, PutRolePolicyCommand } from '@aws-sdk/client-iam';
import { RetryableUpstreamError } from '../../../src/errors.ts';
import type { DenyFallbackEvent, DenyFoldEvent } from '../../../src/providers/aws/deny-list.ts';
import type { AwsProvider } from '../../../src/providers/aws/provider.ts';
import type { RevokeContext } from '../../../src/providers/types.ts';
import type { TaskRecord } from '../../../src/tasks/types.ts';
import { awsWorld, issueRequest, leaseFor, nameOf, roleConfig, stsAs, task, type AwsWorld, sessionCode as code } from './helpers.ts';

let w: AwsWorld;
const POLICY = 'jit-broker-revoked-sessions';
const SKEW_MS = 300_000; // clockSkewSeconds default
const WINDOW_MS = 900_000;
const H12 = 43_200_000;
const AGENT_A = 'spiffe://example.org/agent/a';
const AGENT_B = 'spiffe://example.org/agent/b';

const caller: RevokeContext = { reason: 'revoked_by_caller' };
const completed: RevokeContext = { reason: 'task_completed' };
const admin: RevokeContext = { reason: 'revoked_by_admin', adminScope: 'agent' }; // the kill switch, or quarantining the agent

beforeAll(async () => {
  w = await awsWorld('revoke');
});
afterAll(async () => {
  await w.close();
});

/** A fresh role per test, so deny lists do not interfere. */
function freshRole(name: string, maxSessionDuration = 3600) {
  const r = w.emu.createRole(name, { maxSessionDuration });
  return { ...r, config: roleConfig(r.arn) };
}
type TestRole = ReturnType<typeof freshRole>;

async function issue(provider: AwsProvider, role: TestRole, o: { ttlSeconds?: number; task?: TaskRecord } = {}) {
  const req = issueRequest(role.config, { ttlSeconds: o.ttlSeconds ?? 900, ...(o.task ? { task: o.task } : {}) });
  const out = await provider.issue(req);
  return {
    req,
    out,
    lease: leaseFor(req, out.handle, out.expiresAt),
    client: stsAs(w.emu, out.credentials),
    accessKeyId: String(out.credentials.AccessKeyId),
  };
}
type Issued = Awaited<ReturnType<typeof issue>>;

interface Stmt {
  Sid: string;
  Effect: string;
  Action: string;
  Resource: string;
  Condition: Record<string, Record<string, string[] | string>>;
}
const statements = (roleName: string): Stmt[] => (w.emu.rolePolicy(roleName, POLICY) as { Statement: Stmt[] } | undefined)?.Statement ?? [];
const untilOf = (ms: number) => Math.ceil(ms / WINDOW_MS) * (WINDOW_MS / 1000);
const iamCalls = () => w.emu.requests().filter((r) => r.service === 'iam').length;
const puts = () => w.emu.requests('PutRolePolicy').length;
/** IAM's verdict for a session (no HTTP round trip): what a request with it would get. */
const verdict = (s: Issued) => w.emu.evaluate(s.accessKeyId, 's3:GetObject', 'arn:aws:s3:::reports/x');

/** Runs `fn` with the emulator (AWS's clock, and the providers' injected clock) moved by `ms`, then moves it back. */
async function later<T>(ms: number, fn: () => Promise<T>): Promise<T> {
  w.emu.advanceTime(ms);
  try {
    return await fn();
  } finally {
    w.emu.advanceTime(-ms);
  }
}

describe('one lease (DELETE, interrupted issuance): that session, by name', () => {
  it('denies exactly the revoked session by aws:userid *:jit-<leaseId>, without the RoleId; revoking again calls nothing', async () => {
    const role = freshRole('r-basic');
    const a = await issue(w.provider, role);
    const b = await issue(w.provider, role);
    expect(await code(a.client)).toBe('ok');

    await w.provider.revoke(a.lease, role.config, caller);
    expect(await code(a.client)).toBe('AccessDenied');
    expect(await code(b.client)).toBe('ok');
    expect(w.emu.rolePolicy(role.roleName, POLICY)).toEqual({
      Version: '2012-10-17',
      Statement: [
        {
          Sid: `JitSessionsUntil${untilOf(a.out.expiresAt)}`,
          Effect: 'Deny',
          Action: '*',
          Resource: '*',
          Condition: { StringLike: { 'aws:userid': [`*:${nameOf(a.req)}`] } },
        },
      ],
    });

    const calls = iamCalls();
    await w.provider.revoke(a.lease, role.config, caller);
    await w.makeProvider().revoke(a.lease, role.config, caller);
    expect(iamCalls()).toBe(calls);
  });

  it('revokes with only the handle known before STS was called (the issuing process died mid-call)', async () => {
    const role = freshRole('r-intent');
    const req = issueRequest(role.config, { ttlSeconds: 1200 });
    const before = w.emu.requests().length;
    const { handle: intent, orphanMs } = w.provider.intent(req);
    expect(orphanMs).toBeGreaterThan(0);
    expect(w.emu.requests()).toHaveLength(before); // nothing asked of AWS to know it
    expect(intent).toEqual({
      roleArn: role.arn,
      sessionName: nameOf(req),
      expiresAt: expect.any(Number),
      taskDeadline: req.task.expiresAt,
      taskTag: 't-4711',
      sourceIdentity: 'example.org@agent@support',
    });
    const out = await w.provider.issue(req); // STS answers, but the answer is never recorded
    expect(intent.expiresAt).toBeGreaterThanOrEqual(out.expiresAt);
    const sibling = await issue(w.provider, role); // same task, recorded normally

    const p = w.makeProvider(); // the worker that finds the orphan
    await p.revoke(leaseFor(req, intent, Number(intent.expiresAt)), role.config, { reason: 'issuance_interrupted' });
    expect(await code(stsAs(w.emu, out.credentials))).toBe('AccessDenied');
    expect(await code(sibling.client)).toBe('ok');
    expect(statements(role.roleName).map((s) => s.Condition.StringLike?.['aws:userid'])).toEqual([[`*:${nameOf(req)}`]]);
  });

  it('a session STS makes after its issuance was given up holds nothing once the deny on its name lapses', async () => {
    // Found from outside: a process that stalled (a frozen container) between recording its intent and
    // calling STS for longer than the call allowance made its session after the worker had given the
    // issuance up. The worker's deny lasted only until the intent's expiry; the late session outlived it
    // (a 15-minute session after a 40-minute stall), held by a lease ended `failed` that nothing revokes.
    const role = freshRole('r-late-session');
    const req = issueRequest(role.config, { ttlSeconds: 900 });
    const { handle: intent } = w.provider.intent(req);
    const worker = w.makeProvider(); // gives the unanswered issuance up and revokes by the intent's handle
    await worker.revoke(leaseFor(req, intent, Number(intent.expiresAt)), role.config, { reason: 'issuance_interrupted' });
    w.emu.advanceTime(40 * 60_000); // the issuing process resumes and calls STS, then dies before recording anything
    const late = await w.provider.issue({ ...req, intent });
    const key = String(late.credentials.AccessKeyId);
    const resource = 'arn:aws:s3:::reports/q3.csv';
    expect(w.emu.evaluate(key, 's3:GetObject', resource)).toBe('explicit-deny');
    // A minute before STS's own expiry, the deny's end of life and its margins have passed: the entry is pruned.
    w.emu.advanceTime(late.expiresAt - 60_000 - w.emu.now());
    await worker.denyList.prune(role.arn);
    expect(statements(role.roleName)).toEqual([]);
    // Before: 'allow' for another ~15 minutes. Now the session policy itself ends at the intent's deadline.
    expect(w.emu.evaluate(key, 's3:GetObject', resource)).toBe('implicit-deny');
    // A session made in time is not cut short by that deadline (it ends no earlier than STS's Expiration).
    // Its task ends in an hour on the broker's clock (the emulator's, now 40 minutes ahead of the process's):
    // the session policy also ends at the task's deadline plus the margin.
    const inTime = issueRequest(role.config, { ttlSeconds: 900, task: task({ expiresAt: w.emu.now() + 3_600_000 }) });
    const made = await w.provider.issue({ ...inTime, intent: w.provider.intent(inTime).handle });
    w.emu.advanceTime(made.expiresAt - w.emu.now() - 1000);
    expect(w.emu.evaluate(String(made.credentials.AccessKeyId), 's3:GetObject', resource)).toBe('allow');
  });

  it('refuses an empty scope list before anything is recorded', () => {
    const role = freshRole('r-intent-empty');
    expect(() => w.provider.intent(issueRequest(role.config, { scopes: [] }))).toThrow(
      expect.objectContaining({ status: 400, code: 'scopes_empty' }),
    );
  });

  it('does nothing upstream for a lease expired even by a clock behind AWS, or never issued', async () => {
    const role = freshRole('r-expired');
    const a = await issue(w.provider, role);
    const calls = iamCalls();
    await w.provider.revoke({ ...a.lease, handle: { ...a.lease.handle, expiresAt: w.emu.now() - SKEW_MS - 1 } }, role.config, caller);
    await w.provider.revoke({ ...a.lease, handle: {} }, role.config, caller);
    expect(iamCalls()).toBe(calls);
    // Expired by our clock but not by more than the skew: AWS may still honour it, so it is denied.
    await w.provider.revoke({ ...a.lease, handle: { ...a.lease.handle, expiresAt: w.emu.now() - 1000 } }, role.config, caller);
    expect(await code(a.client)).toBe('AccessDenied');
  });
});

describe('IAM is the record: nothing is forgotten', () => {
  it('keeps a deny written before Redis lost its data (regression: the next write rebuilt the policy from an empty Redis set)', async () => {
    const role = freshRole('r-wipe');
    const a = await issue(w.provider, role);
    await w.provider.revoke(a.lease, role.config, caller);
    expect(await code(a.client)).toBe('AccessDenied');

    const keys = await w.redis.keys(`${w.prefix}:*`);
    if (keys.length) await w.redis.del(...keys);

    const b = await issue(w.provider, role);
    await w.makeProvider().revoke(b.lease, role.config, caller);
    expect(await code(b.client)).toBe('AccessDenied');
    expect(await code(a.client)).toBe('AccessDenied');
    expect(statements(role.roleName).flatMap((s) => s.Condition.StringLike?.['aws:userid'])).toEqual(
      expect.arrayContaining([`*:${nameOf(a.req)}`, `*:${nameOf(b.req)}`]),
    );
  });

  it('after a wipe, a revocation IAM already covers reads IAM and writes nothing', async () => {
    const role = freshRole('r-wipe-covered');
    const t = task({ taskId: 't-wiped' });
    const [a, b] = [await issue(w.provider, role, { task: t }), await issue(w.provider, role, { task: t })];
    await w.provider.revoke(a.lease, role.config, completed);
    const keys = await w.redis.keys(`${w.prefix}:*`);
    if (keys.length) await w.redis.del(...keys);
    const before = puts();
    await w.provider.revoke(b.lease, role.config, completed);
    expect(puts()).toBe(before);
    expect(await code(b.client)).toBe('AccessDenied');
  });

  it("keeps statements it does not own, and converts an earlier version's policy without losing its denies", async () => {
    const role = freshRole('r-legacy');
    const sts = new STSClient({
      region: 'us-east-1',
      endpoint: w.emu.url,
      maxAttempts: 1,
      credentials: { accessKeyId: w.user.accessKeyId, secretAccessKey: w.user.secretAccessKey },
    });
    const old = (await sts.send(new AssumeRoleCommand({ RoleArn: role.arn, RoleSessionName: 'jit-legacy', DurationSeconds: 900 })))
      .Credentials!;
    sts.destroy();
    const oldClient = stsAs(w.emu, { AccessKeyId: old.AccessKeyId, SecretAccessKey: old.SecretAccessKey, SessionToken: old.SessionToken });
    const manual = { Sid: 'OpsManual', Effect: 'Deny', Action: 's3:DeleteBucket', Resource: '*' };
    const iam = new IAMClient({
      region: 'us-east-1',
      endpoint: w.emu.url,
      maxAttempts: 1,
      credentials: { accessKeyId: w.user.accessKeyId, secretAccessKey: w.user.secretAccessKey },
    });
    await iam.send(
      new PutRolePolicyCommand({
        RoleName: role.roleName,
        PolicyName: POLICY,
        PolicyDocument: JSON.stringify({
          Version: '2012-10-17',
          Statement: [
            {
              Sid: 'DenyRevokedSessions',
              Effect: 'Deny',
              Action: '*',
              Resource: '*',
              Condition: { StringEquals: { 'aws:userid': [`${role.roleId}:jit-legacy`] } },
            },
            manual,
          ],
        }),
      }),
    );
    iam.destroy();
    expect(await code(oldClient)).toBe('AccessDenied');

    const a = await issue(w.provider, role);
    await w.provider.revoke(a.lease, role.config, caller);
    expect(await code(a.client)).toBe('AccessDenied');
    expect(await code(oldClient)).toBe('AccessDenied');
    const st = statements(role.roleName);
    expect(st).toContainEqual(manual);
    // Without its expiry on record, the old entry is kept as long as any session can live.
    expect(st).toContainEqual(
      expect.objectContaining({
        Sid: `JitSessionsUntil${untilOf(w.emu.now() + H12)}`,
        Condition: { StringLike: { 'aws:userid': [`${role.roleId}:jit-legacy`] } },
      }),
    );
    expect(st.map((s) => s.Sid)).not.toContain('DenyRevokedSessions');
  });

  it('loses no entry when many workers revoke on the same role at once', async () => {
    const role = freshRole('r-concurrent');
    const workers = [w.provider, w.makeProvider(), w.makeProvider()];
    const reasons: RevokeContext[] = [caller, completed, admin];
    const sessions = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        issue(w.provider, role, { task: task({ taskId: `t-c${i % 4}`, agent: `spiffe://example.org/agent/c${i % 3}` }) }),
      ),
    );
    await Promise.all(sessions.map((s, i) => workers[i % workers.length]!.revoke(s.lease, role.config, reasons[i % 3]!)));
    for (const s of sessions) expect(verdict(s)).toBe('explicit-deny');
    for (const s of sessions.slice(0, 3)) expect(await code(s.client)).toBe('AccessDenied');
  });
});

describe('the clock', () => {
  it("decides expiry on the injected clock, not the process's (regression: a worker 60 s fast dropped a deny 60 s early)", async () => {
    const role = freshRole('r-clock');
    // This process's clock runs with AWS's, 60 s ahead; the injected clock (the broker's Redis-time estimate) is right.
    const fast = jest.spyOn(Date, 'now').mockImplementation(() => w.emu.now() + 60_000);
    try {
      const p = w.makeProvider(); // a worker started on that clock
      const s = await issue(p, role, { ttlSeconds: 900 });
      await p.revoke(s.lease, role.config, caller);
      await later(900_000 - 30_000, async () => {
        // 30 s before the session expires at AWS, that worker writes and sweeps.
        const other = await issue(p, role, { ttlSeconds: 900 });
        await p.revoke(other.lease, role.config, caller);
        await p.expire!(s.lease, role.config);
        expect(await code(s.client)).toBe('AccessDenied');
      });
    } finally {
      fast.mockRestore();
    }
  });

  it('keeps a margin for skew between the broker and AWS, and prunes once end of life plus margin has passed', async () => {
    const role = freshRole('r-skew');
    // The broker's estimate of the time is 2 minutes ahead of AWS's.
    const ahead = w.makeProvider({}, {}, { clock: () => w.emu.now() + 120_000 });
    const s = await issue(ahead, role, { ttlSeconds: 900 });
    await ahead.revoke(s.lease, role.config, caller);
    const end = untilOf(s.out.expiresAt) * 1000;
    await later(900_000 - 30_000, async () => {
      const other = await issue(ahead, role);
      await ahead.revoke(other.lease, role.config, caller);
      await ahead.expire!(s.lease, role.config);
      expect(await code(s.client)).toBe('AccessDenied');
      expect(statements(role.roleName).flatMap((x) => x.Condition.StringLike!['aws:userid'])).toContain(`*:${nameOf(s.req)}`);
    });
    // Long after both sessions ended (by any clock within the margin), the policy goes.
    await later(end - w.emu.now() + 900_000 + SKEW_MS, async () => {
      await ahead.expire!(s.lease, role.config);
      expect(w.emu.rolePolicyNames(role.roleName)).not.toContain(POLICY);
    });
  });
});

describe('a task ended: one entry on its session names, however many sessions', () => {
  it('denies 300 sessions of a task with one statement and one write; other tasks keep working (regression: overflow at ~160 cut off every agent)', async () => {
    const role = freshRole('r-task-300');
    const events: DenyFallbackEvent[] = [];
    const p = w.makeProvider({}, { onDenyFallback: (e) => void events.push(e) });
    const big = task({ taskId: 't-big' });
    const sessions: Issued[] = [];
    for (let i = 0; i < 300; i++) sessions.push(await issue(p, role, { task: big }));
    const bystander = await issue(p, role, { task: task({ taskId: 't-other' }) });
    const sub = await issue(p, role, { task: task({ taskId: 't-big~sub' }) });

    const before = puts();
    const calls = iamCalls();
    await p.revoke(sessions[0]!.lease, role.config, completed);
    expect(puts()).toBe(before + 1);
    for (const s of sessions.slice(1)) await p.revoke(s.lease, role.config, completed);
    expect(iamCalls()).toBe(calls + 2); // one GetRolePolicy, one PutRolePolicy: the rest were already denied

    expect(events).toEqual([]);
    for (const s of sessions) expect(verdict(s)).toBe('explicit-deny');
    expect(await code(sessions[0]!.client)).toBe('AccessDenied');
    expect(await code(sessions[299]!.client)).toBe('AccessDenied');
    expect(await code(bystander.client)).toBe('ok');
    expect(await code(sub.client)).toBe('ok'); // a sub-task has its own tag, ended with its own revocations
    // The wildcard on the task's session names (it says whose task it is: foldable without Redis).
    expect(statements(role.roleName)).toEqual([
      {
        Sid: expect.stringMatching(/^JitSessionsUntil\d+$/),
        Effect: 'Deny',
        Action: '*',
        Resource: '*',
        Condition: { StringLike: { 'aws:userid': [`*:${nameOf(sessions[0]!.req).split('-').slice(0, 3).join('-')}-*`] } },
      },
    ]);
  }, 60_000);

  it("keeps the task's statement until no session of the task can be valid: its deadline + 900 s, plus the margin", async () => {
    const role = freshRole('r-task-eol');
    const t = task({ taskId: 't-eol', expiresAt: w.emu.now() + 1_800_000 });
    const s = await issue(w.provider, role, { task: t, ttlSeconds: 900 });
    await w.provider.revoke(s.lease, role.config, completed);
    const end = untilOf(t.expiresAt + 900_000) * 1000;
    expect(statements(role.roleName).map((x) => x.Sid)).toEqual([`JitSessionsUntil${end / 1000}`]);

    await later(end + SKEW_MS - 5000 - w.emu.now(), async () => {
      await w.provider.expire!(s.lease, role.config);
      expect(statements(role.roleName)).toHaveLength(1);
    });
    await later(end + SKEW_MS + 5000 - w.emu.now(), async () => {
      await w.provider.expire!(s.lease, role.config);
      expect(w.emu.rolePolicyNames(role.roleName)).not.toContain(POLICY);
    });
  });

  it('extends the statement when a later lease of the task outlives it', async () => {
    const role = freshRole('r-task-late', 7200);
    const t = task({ taskId: 't-late', expiresAt: w.emu.now() + 600_000 });
    const first = await issue(w.provider, role, { task: t, ttlSeconds: 900 });
    await w.provider.revoke(first.lease, role.config, completed);
    const [st] = statements(role.roleName);
    // A lease recorded with a later expiry than the statement covers (e.g. one issued by an older version).
    const straggler = await issue(w.provider, role, { task: { ...t, expiresAt: w.emu.now() + 7_200_000 }, ttlSeconds: 7200 });
    await w.provider.revoke(straggler.lease, role.config, completed);
    const [after] = statements(role.roleName);
    expect(Number(after!.Sid.replace(/\D/g, ''))).toBeGreaterThan(Number(st!.Sid.replace(/\D/g, '')));
    expect(Number(after!.Sid.replace(/\D/g, '')) * 1000).toBeGreaterThanOrEqual(straggler.out.expiresAt);
  });

  it('without session tags, falls back to one entry per session', async () => {
    const role = freshRole('r-task-notags');
    const p = w.makeProvider({ sessionTags: false });
    const t = task({ taskId: 't-notags' });
    const [a, b] = [await issue(p, role, { task: t }), await issue(p, role, { task: t })];
    await p.revoke(a.lease, role.config, completed);
    expect(await code(a.client)).toBe('AccessDenied');
    expect(await code(b.client)).toBe('ok');
    expect(statements(role.roleName).map((s) => Object.keys(s.Condition))).toEqual([['StringLike']]);
  });
});

describe('an agent revoked by an admin: its SourceIdentity, issued before the revocation', () => {
  it("denies the agent's sessions across tasks with one statement; other agents and its later sessions work", async () => {
    const role = freshRole('r-agent');
    // The agent's cut-off is a whole second at least 2 s after a session's issue time: sessions issued
    // in one second share it. Issued across a second boundary, the second revoke must raise it (a second
    // PutRolePolicy, as it should), which made this test fail now and then. Start at the top of a second.
    const intoSecond = w.emu.now() % 1000;
    if (intoSecond > 100) await new Promise((r) => setTimeout(r, 1000 - intoSecond));
    const a1 = await issue(w.provider, role, { task: task({ taskId: 't-a1', agent: AGENT_A }) });
    const a2 = await issue(w.provider, role, { task: task({ taskId: 't-a2', agent: AGENT_A }) });
    const b1 = await issue(w.provider, role, { task: task({ taskId: 't-b1', agent: AGENT_B }) });
    const before = puts();
    await w.provider.revoke(a1.lease, role.config, admin);
    await w.provider.revoke(a2.lease, role.config, admin);
    expect(puts()).toBe(before + 1);
    expect(await code(a1.client)).toBe('AccessDenied');
    expect(await code(a2.client)).toBe('AccessDenied');
    expect(await code(b1.client)).toBe('ok');
    const [st] = statements(role.roleName);
    expect(st).toEqual({
      Sid: expect.stringMatching(/^JitAgentsUntil\d+$/),
      Effect: 'Deny',
      Action: '*',
      Resource: '*',
      Condition: {
        StringEquals: { 'aws:SourceIdentity': ['example.org@agent@a'] },
        DateLessThan: { 'aws:TokenIssueTime': expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/) },
      },
    });
    const cutoff = Date.parse(String(st!.Condition.DateLessThan!['aws:TokenIssueTime']));
    expect(Number(st!.Sid.replace(/\D/g, '')) * 1000).toBe(cutoff + H12);

    // The quarantine is lifted: the agent's new sessions work.
    await later(3000, async () => {
      const a3 = await issue(w.provider, role, { task: task({ taskId: 't-a3', agent: AGENT_A }) });
      expect(await code(a3.client)).toBe('ok');
      // A second kill switch later cuts that one off too.
      await w.provider.revoke(a3.lease, role.config, admin);
      expect(await code(a3.client)).toBe('AccessDenied');
      expect(await code(b1.client)).toBe('ok');
    });
  });

  it('cuts off at the time the revocation was asked for: a session issued after it keeps working (found in review)', async () => {
    // IAM failing made the worker's deny land seconds after the kill switch; the cut-off was taken then, so a
    // session of a task opened after the kill was denied while its lease stayed active.
    const role = freshRole('r-agent-late');
    const a1 = await issue(w.provider, role, { task: task({ taskId: 't-late-1', agent: AGENT_A }) });
    const killedAt = w.emu.now();
    w.emu.advanceTime(5_000);
    const a2 = await issue(w.provider, role, { task: task({ taskId: 't-late-2', agent: AGENT_A }) });
    await w.provider.revoke(a1.lease, role.config, { ...admin, requestedAt: killedAt });
    expect(await code(a1.client)).toBe('AccessDenied');
    expect(await code(a2.client)).toBe('ok');
  });

  it('agents revoked together share a statement', async () => {
    const role = freshRole('r-agents');
    const agents = Array.from({ length: 8 }, (_, i) => `spiffe://example.org/agent/bulk-${i}`);
    const sessions = [];
    for (const agent of agents) sessions.push(await issue(w.provider, role, { task: task({ taskId: `t-${agent.slice(-6)}`, agent }) }));
    for (const s of sessions) await w.provider.revoke(s.lease, role.config, admin);
    for (const s of sessions) expect(verdict(s)).toBe('explicit-deny');
    const st = statements(role.roleName);
    expect(st.length).toBeLessThanOrEqual(2); // a second boundary may fall between them
    expect(st.flatMap((s) => s.Condition.StringEquals!['aws:SourceIdentity']).sort()).toEqual(
      agents.map((a) => `example.org@agent@${a.split('/').pop()}`).sort(),
    );
  });

  it('without SourceIdentity, falls back to one entry per session', async () => {
    const role = freshRole('r-agent-nosi');
    const p = w.makeProvider({ sourceIdentity: false });
    const a1 = await issue(p, role, { task: task({ taskId: 't-n1', agent: AGENT_A }) });
    const a2 = await issue(p, role, { task: task({ taskId: 't-n2', agent: AGENT_A }) });
    await p.revoke(a1.lease, role.config, admin);
    expect(await code(a1.client)).toBe('AccessDenied');
    expect(await code(a2.client)).toBe('ok');
    expect(statements(role.roleName).map((s) => Object.keys(s.Condition))).toEqual([['StringLike']]);
  });
});

describe('size', () => {
  it('merges statements with close ends before anything else, and keeps each entry at least until its end', async () => {
    const role = freshRole('r-coarsen', 7200);
    const p = w.makeProvider({ revocationPolicyMaxChars: 700 });
    const events: DenyFallbackEvent[] = [];
    const q = w.makeProvider({ revocationPolicyMaxChars: 700 }, { onDenyFallback: (e) => void events.push(e) });
    const ttls = [900, 1800, 2700, 3600, 4500, 5400];
    const sessions = [];
    for (const ttl of ttls) sessions.push(await issue(p, role, { ttlSeconds: ttl }));
    for (const s of sessions) await q.revoke(s.lease, role.config, caller);
    expect(events).toEqual([]);
    const st = statements(role.roleName);
    expect(st.length).toBeLessThan(ttls.length);
    for (const s of sessions) {
      expect(verdict(s)).toBe('explicit-deny');
      const holding = st.find((x) => (x.Condition.StringLike!['aws:userid'] as string[]).includes(`*:${nameOf(s.req)}`))!;
      expect(Number(holding.Sid.replace(/\D/g, '')) * 1000).toBeGreaterThanOrEqual(s.out.expiresAt);
    }
  });

  it('falls back to a TokenIssueTime cut-off when even folding every agent does not fit, and says so', async () => {
    const role = freshRole('r-overflow');
    const events: DenyFallbackEvent[] = [];
    const folds: DenyFoldEvent[] = [];
    const small = w.makeProvider(
      { revocationPolicyMaxChars: 512 },
      { onDenyFallback: (e) => void events.push(e), onDenyFold: (e) => void folds.push(e) },
    );
    const bystander = await issue(small, role); // never revoked
    const revoked = [];
    // One session each of 30 agents: 30 agent folds alone take more than 512 characters.
    for (let i = 0; i < 30; i++) {
      const s = await issue(small, role, { task: task({ taskId: `t-o${i}`, agent: `spiffe://example.org/agent/o${i}` }) });
      await small.revoke(s.lease, role.config, caller);
      revoked.push(s);
    }
    expect(folds.length).toBeGreaterThan(0); // folding came first
    expect(folds.every((f) => f.scope === 'agent' || f.scope === 'regroup')).toBe(true);
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ roleArn: role.arn, reason: 'policy_size' });
    expect(events[0]!.droppedEntries).toBeGreaterThan(4);

    const cut = statements(role.roleName).find((s) => s.Sid.startsWith('JitCutoffUntil'))!;
    expect(cut.Condition.DateLessThan!['aws:TokenIssueTime']).toBe(events[0]!.cutoff);
    expect(statements(role.roleName).filter((s) => s.Sid.startsWith('JitFolds'))).toEqual([]); // the cut-off replaced them
    expect(JSON.stringify(w.emu.rolePolicy(role.roleName, POLICY)).length).toBeLessThanOrEqual(512);
    // Every revoked session is cut off, and so is the older unrevoked one: the documented price of the fallback.
    for (const s of revoked) expect(await code(s.client)).toBe('AccessDenied');
    expect(await code(bystander.client)).toBe('AccessDenied');

    // Sessions issued after the cut-off (at most the skew margin ahead: it covers the folds it replaced) work, and can still be revoked one by one.
    await later(Date.parse(events[0]!.cutoff) - w.emu.now() + 5000, async () => {
      const next = await issue(small, role);
      expect(await code(next.client)).toBe('ok');
      await small.revoke(next.lease, role.config, caller);
      expect(await code(next.client)).toBe('AccessDenied');
      expect(statements(role.roleName).flatMap((s) => s.Condition.StringLike?.['aws:userid'] ?? [])).toEqual([`*:${nameOf(next.req)}`]);
    });
  });

  it('measures the room other inline policies leave when IAM refuses the size, and folds into what is left', async () => {
    const role = freshRole('r-iam-limit');
    const filler = JSON.stringify({
      Version: '2012-10-17',
      Statement: [
        {
          Effect: 'Allow',
          Action: 's3:GetObject',
          Resource: Array.from({ length: 200 }, (_, i) => `arn:aws:s3:::filler-${String(i).padStart(20, '0')}`),
        },
      ],
    });
    const iam = new IAMClient({
      region: 'us-east-1',
      endpoint: w.emu.url,
      maxAttempts: 1,
      credentials: { accessKeyId: w.user.accessKeyId, secretAccessKey: w.user.secretAccessKey },
    });
    await iam.send(new PutRolePolicyCommand({ RoleName: role.roleName, PolicyName: 'app-permissions', PolicyDocument: filler }));
    iam.destroy();
    const events: DenyFallbackEvent[] = [];
    const folds: DenyFoldEvent[] = [];
    const p = w.makeProvider({}, { onDenyFallback: (e) => void events.push(e), onDenyFold: (e) => void folds.push(e) });
    const bystander = await issue(p, role, { task: task({ taskId: 't-by', agent: AGENT_B }) });
    const sessions = [];
    for (let i = 0; i < 60 && folds.length === 0; i++) {
      const s = await issue(p, role);
      await p.revoke(s.lease, role.config, caller);
      sessions.push(s);
    }
    expect(folds).toEqual([expect.objectContaining({ reason: 'iam_limit', scope: 'task', taskId: 't-4711' })]);
    expect(events).toEqual([]);
    expect(sessions.length).toBeGreaterThan(15); // the room was used before folding
    expect(w.emu.requests('ListRolePolicies').length).toBeGreaterThan(0);
    for (const s of sessions) expect(await code(s.client)).toBe('AccessDenied');
    expect(await code(bystander.client)).toBe('ok');
  });
});

describe('failures', () => {
  it('throws RetryableUpstreamError for whatever IAM answers, and succeeds on the retry', async () => {
    const role = freshRole('r-retry');
    const a = await issue(w.provider, role);
    w.emu.setThrottle(3, 'PutRolePolicy');
    await expect(w.provider.revoke(a.lease, role.config, caller)).rejects.toBeInstanceOf(RetryableUpstreamError);
    w.emu.failNext(3, { action: 'PutRolePolicy' });
    await expect(w.provider.revoke(a.lease, role.config, caller)).rejects.toMatchObject({ code: 'upstream_unavailable' });
    w.emu.failNext(1, { action: 'PutRolePolicy', status: 403, code: 'AccessDenied' });
    const denied = w.provider.revoke(a.lease, role.config, caller);
    await expect(denied).rejects.toBeInstanceOf(RetryableUpstreamError);
    await expect(denied).rejects.toMatchObject({ code: 'upstream_denied' });
    w.emu.setThrottle(1, 'PutRolePolicy'); // one blip is absorbed by the provider's own retry
    await w.provider.revoke(a.lease, role.config, caller);
    expect(await code(a.client)).toBe('AccessDenied');
  });

  it('never writes a policy it could not read first', async () => {
    const role = freshRole('r-noread');
    const a = await issue(w.provider, role);
    const before = puts();
    w.emu.failNext(1, { action: 'GetRolePolicy', status: 403, code: 'AccessDenied' });
    await expect(w.provider.revoke(a.lease, role.config, caller)).rejects.toMatchObject({ code: 'upstream_denied' });
    expect(puts()).toBe(before);
  });

  it('with revocation: none, revoke is honest about doing nothing upstream', async () => {
    const role = freshRole('r-none');
    const p = w.makeProvider({ revocation: 'none' });
    const a = await issue(p, role);
    expect(await p.revocable(role.config)).toBe(false);
    // As the broker records it: issued `revocable: false` (one issued `true` before the switch is still denied).
    await p.revoke({ ...a.lease, revocable: false }, role.config, caller);
    expect(w.emu.rolePolicyNames(role.roleName)).toEqual([]);
    expect(await code(a.client)).toBe('ok');
  });
});
