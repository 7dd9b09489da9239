import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { createHash } from 'node:crypto';
import { GetRoleCommand, IAMClient, PutRolePolicyCommand } from '@aws-sdk/client-iam';
import { tagValue } from '../../../src/providers/aws/session-name.ts';
import { awsWorld, callerIdentityAs, issueRequest, roleConfig, task, type AwsWorld } from './helpers.ts';

/**
 * What an AWS session carries beyond its scopes, judged on the STS + IAM
 * emulator through the real @aws-sdk/client-sts and client-iam: `tenant` and
 * `agent` tags that never meet for two different tenants or agents (an
 * operator may grant by them), and a session policy that ends with the task.
 */

let w: AwsWorld;
beforeAll(async () => {
  w = await awsWorld('bounds');
});
afterAll(async () => {
  await w.close();
});

const TAG = /^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$/u;
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** Issues one session for `tenant` and `agent` and returns the tags STS recorded on it, and its keys. */
async function sessionOf(tenant: string, agent: string) {
  const req = issueRequest(roleConfig(w.role.arn), { task: task({ tenant, agent }) });
  const out = await w.provider.issue(req);
  const c = out.credentials as Record<string, string>;
  const session = w.emu.sessions().find((s) => s.accessKeyId === c.AccessKeyId)!;
  const tag = (k: string) => session.tags.find((t) => t.Key === k)!.Value;
  return {
    tenant: tag('tenant'),
    agent: tag('agent'),
    keys: { accessKeyId: c.AccessKeyId!, secretAccessKey: c.SecretAccessKey!, sessionToken: c.SessionToken! },
  };
}

describe('tenant and agent tags', () => {
  it('two distinct tenants or agents never get the same tag, and STS takes every one', async () => {
    const long = 'x'.repeat(300);
    // Each pair collided before: refused characters became `_`, and values were cut at 256.
    const tenants = [
      'acme!prod',
      'acme_prod',
      'acme#prod',
      'acme=prod',
      `acme_prod=${sha256('acme!prod')}`, // a tenant named like another's hashed tag
      long,
      `${long}y`,
      'x'.repeat(256),
      '😀'.repeat(200), // astral characters: two UTF-16 units each
      '😁'.repeat(200),
      'Zürich ops',
      '',
    ];
    const agents = ['https://issuer.example#sub-1', 'https://issuer.example_sub-1', 'spiffe://example.org/agent/a'];
    const tenantTags = new Map<string, string>();
    for (const t of tenants) tenantTags.set(t, (await sessionOf(t, agents[2]!)).tenant);
    const agentTags = new Map<string, string>();
    for (const a of agents) agentTags.set(a, (await sessionOf('acme', a)).agent);

    expect(new Set(tenantTags.values()).size).toBe(tenants.length);
    expect(new Set(agentTags.values()).size).toBe(agents.length);
    for (const v of [...tenantTags.values(), ...agentTags.values()]) {
      expect(v).toMatch(TAG);
      expect(v.length).toBeLessThanOrEqual(256);
    }
    // A value STS takes as it is, without `=`, is kept: the tags an operator already grants by do not move.
    for (const t of ['acme_prod', 'x'.repeat(256), 'Zürich ops', '']) expect(tenantTags.get(t)).toBe(t);
    expect(agentTags.get('spiffe://example.org/agent/a')).toBe('spiffe://example.org/agent/a');
    // Anything else: a readable head, `=`, and the hash of the whole value.
    expect(tenantTags.get('acme!prod')).toBe(`acme_prod=${sha256('acme!prod')}`);
    expect(tenantTags.get(long)).toBe(`${'x'.repeat(190)}=${sha256(long)}`);
    expect(agentTags.get('https://issuer.example#sub-1')).toBe(`https://issuer.example_sub-1=${sha256('https://issuer.example#sub-1')}`);
  });

  it('a grant or deny by tenant tag reaches that tenant only', async () => {
    const iam = new IAMClient({
      region: 'us-east-1',
      endpoint: w.emu.url,
      maxAttempts: 1,
      credentials: { accessKeyId: w.user.accessKeyId, secretAccessKey: w.user.secretAccessKey },
    });
    try {
      const victim = await sessionOf('acme_prod', 'spiffe://example.org/agent/v');
      const other = await sessionOf('acme!prod', 'spiffe://example.org/agent/o');
      // An operator's condition on the tenant `acme_prod` (a Deny here, so the emulator's GetCallerIdentity shows it).
      await iam.send(
        new PutRolePolicyCommand({
          RoleName: w.role.roleName,
          PolicyName: 'abac-tenant',
          PolicyDocument: JSON.stringify({
            Version: '2012-10-17',
            Statement: [
              { Effect: 'Deny', Action: '*', Resource: '*', Condition: { StringEquals: { 'aws:PrincipalTag/tenant': 'acme_prod' } } },
            ],
          }),
        }),
      );
      expect(await callerIdentityAs(w.emu.url, victim.keys)).toBe('AccessDenied');
      // Before: `acme!prod` was tagged `acme_prod` too, and the condition took it for that tenant.
      expect(await callerIdentityAs(w.emu.url, other.keys)).toBe('ok');
    } finally {
      iam.destroy();
    }
  });

  it('tagValue keeps the forms apart whatever the input', () => {
    expect(tagValue('a=b')).toBe(`a=b=${sha256('a=b')}`);
    expect(tagValue('\ud800x')).toBe(`_x=${sha256('\ud800x')}`); // a lone surrogate is not a character STS takes
    expect(tagValue('😀'.repeat(200))).toHaveLength(190 + 1 + 64);
  });
});

describe('the session policy ends with the task', () => {
  it('a session that outlives its task (STS minimum 900 s) is refused everything once the deadline plus the skew margin has passed', async () => {
    // The task ends in 60 s; STS's minimum gives the session 900 s. The broker's clock is the emulator's here.
    const deadline = w.emu.now() + 60_000;
    const req = issueRequest(roleConfig(w.role.arn), { task: task({ expiresAt: deadline }), scopes: ['iam:GetRole'] });
    const out = await w.provider.issue(req);
    const c = out.credentials as Record<string, string>;
    const session = w.emu.sessions().find((s) => s.accessKeyId === c.AccessKeyId)!;
    expect(session.expiresAt).toBeGreaterThanOrEqual(deadline + 800_000);
    const iam = new IAMClient({
      region: 'us-east-1',
      endpoint: w.emu.url,
      maxAttempts: 1,
      credentials: { accessKeyId: c.AccessKeyId!, secretAccessKey: c.SecretAccessKey!, sessionToken: c.SessionToken! },
    });
    const getRole = async () => {
      try {
        await iam.send(new GetRoleCommand({ RoleName: w.role.roleName }));
        return 'ok';
      } catch (err) {
        return (err as { name: string }).name;
      }
    };
    try {
      expect(await getRole()).toBe('ok');
      // Past the deadline, inside the skew margin (300 s): still allowed (the broker's clock may run ahead of AWS's).
      w.emu.advanceTime(deadline + 290_000 - w.emu.now());
      expect(await getRole()).toBe('ok');
      // Past the deadline plus the margin (rounded up to the second): denied, with the session itself still valid.
      // Before: the policy ran until the session's planned end plus the margin, ~20 minutes after the task.
      w.emu.advanceTime(deadline + 301_000 - w.emu.now());
      expect(w.emu.now()).toBeLessThan(session.expiresAt);
      expect(await getRole()).toBe('AccessDenied');
      const notAfter = JSON.parse(session.policyText!).Statement[0].Condition.DateLessThan['aws:CurrentTime'];
      expect(notAfter).toBe(new Date(Math.ceil((deadline + 300_000) / 1000) * 1000).toISOString().replace('.000Z', 'Z'));
    } finally {
      iam.destroy();
    }
  });
});
