import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { GetCallerIdentityCommand, type STSClient } from '@aws-sdk/client-sts';
import { PutRolePolicyCommand, IAMClient } from '@aws-sdk/client-iam';
import { RetryableUpstreamError } from '../../../src/errors.ts';
import type { DenyFallbackEvent } from '../../../src/providers/aws/deny-list.ts';
import type { AwsProvider } from '../../../src/providers/aws/provider.ts';
import { awsWorld, issueRequest, leaseFor, roleConfig, stsAs, type AwsWorld } from './helpers.ts';

let w: AwsWorld;
const POLICY = 'jit-broker-revoked-sessions';

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

async function issue(provider: AwsProvider, role: ReturnType<typeof freshRole>, ttlSeconds = 900) {
  const req = issueRequest(role.config, { ttlSeconds });
  const out = await provider.issue(req);
  return {
    req,
    out,
    lease: leaseFor(req, out.handle, out.expiresAt),
    client: stsAs(w.emu, out.credentials),
    userId: `${role.roleId}:jit-${req.leaseId}`,
  };
}

async function code(client: STSClient): Promise<string> {
  try {
    await client.send(new GetCallerIdentityCommand({}));
    return 'ok';
  } catch (err) {
    return (err as { Code?: string; name: string }).Code ?? (err as Error).name;
  }
}

const deniedIds = (roleName: string): string[] => {
  const doc = w.emu.rolePolicy(roleName, POLICY) as
    | { Statement: { Sid: string; Condition: Record<string, Record<string, string[]>> }[] }
    | undefined;
  return doc?.Statement.find((s) => s.Sid === 'DenyRevokedSessions')?.Condition.StringEquals?.['aws:userid'] ?? [];
};

describe('revoke (iam-deny)', () => {
  it('cuts off the revoked session upstream and leaves the others working; revoking twice changes nothing', async () => {
    const role = freshRole('r-basic');
    const a = await issue(w.provider, role);
    const b = await issue(w.provider, role);
    expect(await code(a.client)).toBe('ok');

    await w.provider.revoke(a.lease, role.config, { reason: 'revoked_by_caller' });
    expect(await code(a.client)).toBe('AccessDenied');
    expect(await code(b.client)).toBe('ok');
    expect(w.emu.rolePolicy(role.roleName, POLICY)).toEqual({
      Version: '2012-10-17',
      Statement: [
        {
          Sid: 'DenyRevokedSessions',
          Effect: 'Deny',
          Action: '*',
          Resource: '*',
          Condition: { StringEquals: { 'aws:userid': [a.userId] } },
        },
      ],
    });

    await w.provider.revoke(a.lease, role.config, { reason: 'revoked_by_caller' });
    expect(deniedIds(role.roleName)).toEqual([a.userId]);
    expect(await w.provider.denyList.entries(role.arn)).toEqual([a.userId]);
  });

  it('loses no entry when many workers revoke on the same role at once', async () => {
    const role = freshRole('r-concurrent');
    const workers = [w.provider, w.makeProvider(), w.makeProvider()];
    const sessions = await Promise.all(Array.from({ length: 12 }, () => issue(w.provider, role)));
    await Promise.all(sessions.map((s, i) => workers[i % workers.length]!.revoke(s.lease, role.config, { reason: 'revoked_by_caller' })));
    expect(deniedIds(role.roleName).sort()).toEqual(sessions.map((s) => s.userId).sort());
    for (const s of sessions) expect(await code(s.client)).toBe('AccessDenied');
  });

  it('does nothing upstream for a lease that has already expired or was never issued', async () => {
    const role = freshRole('r-expired');
    const a = await issue(w.provider, role);
    const before = w.emu.requests('PutRolePolicy').length;
    await w.provider.revoke({ ...a.lease, handle: { ...a.lease.handle, expiresAt: w.emu.now() - 1 } }, role.config, {
      reason: 'revoked_by_caller',
    });
    await w.provider.revoke({ ...a.lease, handle: {} }, role.config, { reason: 'revoked_by_caller' });
    expect(w.emu.requests('PutRolePolicy').length).toBe(before);
  });

  it('prunes entries whose sessions have expired, and removes the policy once none are left', async () => {
    const role = freshRole('r-prune', 7200);
    const short = await issue(w.provider, role, 900);
    const long = await issue(w.provider, role, 3600);
    await w.provider.revoke(short.lease, role.config, { reason: 'revoked_by_caller' });
    await w.provider.revoke(long.lease, role.config, { reason: 'revoked_by_caller' });
    expect(deniedIds(role.roleName).sort()).toEqual([short.userId, long.userId].sort());

    w.emu.advanceTime(901_000);
    try {
      expect(await code(short.client)).toBe('ExpiredToken');
      // TTL expiry of the short lease: nothing upstream but pruning.
      await w.provider.expire!(short.lease, role.config);
      expect(deniedIds(role.roleName)).toEqual([long.userId]);
      expect(await code(long.client)).toBe('AccessDenied');

      w.emu.advanceTime(3600_000);
      await w.provider.expire!(long.lease, role.config);
      expect(w.emu.rolePolicyNames(role.roleName)).not.toContain(POLICY);
      expect(await w.provider.denyList.entries(role.arn)).toEqual([]);
    } finally {
      w.emu.advanceTime(-4501_000);
    }
  });

  it('falls back to a TokenIssueTime cut-off when the deny list outgrows its budget, and says so', async () => {
    const role = freshRole('r-overflow');
    const events: DenyFallbackEvent[] = [];
    const small = w.makeProvider({ revocationPolicyMaxChars: 512 }, { onDenyFallback: (e) => void events.push(e) });
    const bystander = await issue(small, role); // never revoked
    const revoked = [];
    for (let i = 0; i < 8; i++) {
      const s = await issue(small, role);
      await small.revoke(s.lease, role.config, { reason: 'revoked_by_caller' });
      revoked.push(s);
    }
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ roleArn: role.arn, reason: 'policy_size' });
    expect(events[0]!.droppedEntries).toBeGreaterThan(4);

    const doc = w.emu.rolePolicy(role.roleName, POLICY) as {
      Statement: { Sid: string; Condition: Record<string, Record<string, string>> }[];
    };
    const cut = doc.Statement.find((s) => s.Sid === 'DenyOlderSessions')!;
    expect(cut.Condition.DateLessThan!['aws:TokenIssueTime']).toBe(events[0]!.cutoff);
    expect(JSON.stringify(doc).length).toBeLessThanOrEqual(512);
    // Every revoked session is cut off, and so is the older unrevoked one: the documented price of the fallback.
    for (const s of revoked) expect(await code(s.client)).toBe('AccessDenied');
    expect(await code(bystander.client)).toBe('AccessDenied');

    // Sessions issued after the cut-off work, and can still be revoked one by one.
    w.emu.advanceTime(3000);
    try {
      const later = await issue(small, role);
      expect(await code(later.client)).toBe('ok');
      await small.revoke(later.lease, role.config, { reason: 'revoked_by_caller' });
      expect(await code(later.client)).toBe('AccessDenied');
      expect(deniedIds(role.roleName)).toContain(later.userId);
      expect(deniedIds(role.roleName).length).toBeLessThan(4); // the list started over after the cut-off
    } finally {
      w.emu.advanceTime(-3000);
    }
  });

  it("falls back too when IAM's per-role limit is hit because of other inline policies", async () => {
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
    const p = w.makeProvider({}, { onDenyFallback: (e) => void events.push(e) });
    const sessions = [];
    for (let i = 0; i < 40 && events.length === 0; i++) {
      const s = await issue(p, role);
      await p.revoke(s.lease, role.config, { reason: 'revoked_by_caller' });
      sessions.push(s);
    }
    expect(events).toEqual([expect.objectContaining({ reason: 'iam_limit' })]);
    for (const s of sessions) expect(await code(s.client)).toBe('AccessDenied');
  });

  it("throws RetryableUpstreamError while IAM throttles or fails, and succeeds on the worker's retry", async () => {
    const role = freshRole('r-retry');
    const a = await issue(w.provider, role);
    w.emu.setThrottle(3, 'PutRolePolicy');
    await expect(w.provider.revoke(a.lease, role.config, { reason: 'revoked_by_caller' })).rejects.toBeInstanceOf(RetryableUpstreamError);
    w.emu.failNext(3, { action: 'PutRolePolicy' });
    await expect(w.provider.revoke(a.lease, role.config, { reason: 'revoked_by_caller' })).rejects.toMatchObject({
      code: 'upstream_unavailable',
    });
    w.emu.setThrottle(1, 'PutRolePolicy'); // one blip is absorbed by the provider's own retry
    await w.provider.revoke(a.lease, role.config, { reason: 'revoked_by_caller' });
    expect(await code(a.client)).toBe('AccessDenied');
  });

  it('with revocation: none, revoke is honest about doing nothing upstream', async () => {
    const role = freshRole('r-none');
    const p = w.makeProvider({ revocation: 'none' });
    const a = await issue(p, role);
    await p.revoke(a.lease, role.config, { reason: 'revoked_by_caller' });
    expect(p.revocable(role.config)).toBe(false);
    expect(w.emu.rolePolicyNames(role.roleName)).toEqual([]);
    expect(await code(a.client)).toBe('ok');
  });
});
