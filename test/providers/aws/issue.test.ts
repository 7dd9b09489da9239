import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { GetCallerIdentityCommand } from '@aws-sdk/client-sts';
import { BrokerError } from '../../../src/errors.ts';
import {
  agentKeyFor,
  sessionNameFor,
  sourceIdentityFor,
  tagValue,
  taskKeyFor,
  taskTagValue,
} from '../../../src/providers/aws/session-name.ts';
import { awsWorld, issueRequest, roleConfig, stsAs, type AwsWorld } from './helpers.ts';

let w: AwsWorld;

beforeAll(async () => {
  w = await awsWorld('issue');
});
afterAll(async () => {
  await w.close();
});

async function brokerError(p: Promise<unknown>): Promise<BrokerError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(BrokerError);
    return err as BrokerError;
  }
  throw new Error('expected a BrokerError');
}

describe('issue', () => {
  it('an STS that takes the call and never answers is given up after requestTimeoutMs, not waited on', async () => {
    const p = w.makeProvider({ requestTimeoutMs: 300, maxAttempts: 1 });
    w.emu.holdAnswer('AssumeRole', 6000);
    // The emulator logs a request as it answers: 6 s after it was carried out.
    const answered = () => w.emu.requests('AssumeRole').length;
    const before = answered();
    const err = await brokerError(p.issue(issueRequest(roleConfig(w.role.arn), { scopes: ['s3:GetObject'] })));
    // Given up before the answer came (before: the SDK only warned past its requestTimeout and waited the whole
    // 6 s for it). Judged by that order, not by a time bound a loaded machine can break: the 300-ms timeout
    // and the 6-s hold are timers of this one process, and the shorter fires first however late both run.
    expect(answered()).toBe(before);
    expect(err.status).toBeGreaterThanOrEqual(500);
  });

  it('assumes the role with a scoped-down session policy, lease-named session, tags and source identity', async () => {
    const role = roleConfig(w.role.arn, { resources: ['arn:aws:s3:::reports', 'arn:aws:s3:::reports/*'] });
    const req = issueRequest(role, { scopes: ['s3:ListBucket', 's3:GetObject'], ttlSeconds: 1200 });
    const before = w.emu.requests('AssumeRole').length;
    const out = await w.provider.issue(req);

    const sent = w.emu.requests('AssumeRole').slice(before);
    expect(sent).toHaveLength(1);
    const p = sent[0]!.params;
    expect(JSON.parse(p.Policy!)).toEqual({
      Version: '2012-10-17',
      Statement: [
        {
          Effect: 'Allow',
          Action: ['s3:GetObject', 's3:ListBucket'],
          Resource: ['arn:aws:s3:::reports', 'arn:aws:s3:::reports/*'],
          // The latest the session could live as planned, plus the skew margin (300 s by default).
          Condition: { DateLessThan: { 'aws:CurrentTime': expect.any(String) } },
        },
      ],
    });
    const notAfter = Date.parse(JSON.parse(p.Policy!).Statement[0].Condition.DateLessThan['aws:CurrentTime']);
    expect(notAfter).toBeGreaterThanOrEqual(out.expiresAt + 300_000);
    expect(notAfter).toBeLessThanOrEqual(Number(w.provider.intent(req).handle.expiresAt) + 301_000);
    expect(p).toMatchObject({
      RoleArn: w.role.arn,
      RoleSessionName: sessionNameFor(req.leaseId, req.agent, req.task.taskId),
      DurationSeconds: '1200',
      SourceIdentity: 'example.org@agent@support',
      'Tags.member.1.Key': 'task',
      'Tags.member.1.Value': 't-4711',
      'Tags.member.2.Key': 'tenant',
      'Tags.member.2.Value': 'acme',
      'Tags.member.3.Key': 'agent',
      'Tags.member.3.Value': 'spiffe://example.org/agent/support',
      'TransitiveTagKeys.member.1': 'task',
      'TransitiveTagKeys.member.2': 'tenant',
      'TransitiveTagKeys.member.3': 'agent',
    });
    expect(p.ExternalId).toBeUndefined();

    // The client gets keys; the lease gets only what revoke needs.
    const c = out.credentials;
    expect(Object.keys(c).sort()).toEqual(['AccessKeyId', 'Expiration', 'SecretAccessKey', 'SessionToken']);
    expect(c.AccessKeyId).toMatch(/^ASIA/);
    expect(out.handle).toEqual({
      roleArn: w.role.arn,
      sessionName: sessionNameFor(req.leaseId, req.agent, req.task.taskId),
      expiresAt: Date.parse(c.Expiration as string),
      tokenIssuedAt: Date.parse(c.Expiration as string) - 1_200_000,
      taskDeadline: req.task.expiresAt,
      taskTag: 't-4711',
      sourceIdentity: 'example.org@agent@support',
    });
    // The lease ends on the broker's clock, at least as late as the session (here the clocks agree).
    expect(out.expiresAt).toBeGreaterThanOrEqual(Date.parse(c.Expiration as string));
    expect(out.expiresAt).toBeLessThanOrEqual(Date.parse(c.Expiration as string) + 3000);
    // What STS was told about the session is exactly what revocation will deny.
    const session = w.emu.sessions().find((s) => s.accessKeyId === c.AccessKeyId)!;
    expect(Math.floor(session.issuedAt / 1000) * 1000).toBe(out.handle.tokenIssuedAt);
    expect(JSON.stringify(out.handle)).not.toContain(String(c.SecretAccessKey));
    expect(Math.abs(out.expiresAt - (w.emu.now() + 1_200_000))).toBeLessThan(2000);

    // The session works, and can do what the scopes allow on the role's resources, nothing more.
    const who = await stsAs(w.emu, c).send(new GetCallerIdentityCommand({}));
    expect(who.UserId).toBe(`${w.role.roleId}:${sessionNameFor(req.leaseId, req.agent, req.task.taskId)}`);
    expect(w.emu.evaluate(String(c.AccessKeyId), 's3:GetObject', 'arn:aws:s3:::reports/q3.csv')).toBe('allow');
    expect(w.emu.evaluate(String(c.AccessKeyId), 's3:PutObject', 'arn:aws:s3:::reports/q3.csv')).toBe('implicit-deny');
    expect(w.emu.evaluate(String(c.AccessKeyId), 's3:GetObject', 'arn:aws:s3:::payroll/x')).toBe('implicit-deny');
  });

  it("clamps DurationSeconds to the IAM role's MaxSessionDuration and to STS's 900 s minimum", async () => {
    const short = w.emu.createRole('short-role', { maxSessionDuration: 3600 });
    const role = roleConfig(short.arn, { maxTtlSeconds: 7200 });
    const long = await w.provider.issue(issueRequest(role, { ttlSeconds: 7200 }));
    expect(w.emu.requests('AssumeRole').at(-1)!.params.DurationSeconds).toBe('3600');
    expect(Math.abs(long.expiresAt - (w.emu.now() + 3_600_000))).toBeLessThan(2000);
    await w.provider.issue(issueRequest(role, { ttlSeconds: 60 }));
    expect(w.emu.requests('AssumeRole').at(-1)!.params.DurationSeconds).toBe('900');
  });

  it("sends the role's ExternalId, and can leave out tags and source identity", async () => {
    const guarded = w.emu.createRole('guarded-role', { externalId: 'ext-4711' });
    const plain = w.makeProvider({ sessionTags: false, sourceIdentity: false });
    await plain.issue(issueRequest(roleConfig(guarded.arn, { externalId: 'ext-4711' })));
    const p = w.emu.requests('AssumeRole').at(-1)!.params;
    expect(p.ExternalId).toBe('ext-4711');
    expect(Object.keys(p).filter((k) => k.startsWith('Tags') || k.startsWith('Transitive') || k === 'SourceIdentity')).toEqual([]);
  });

  it('a session policy that fits STS only without its deadline is still issued, without it (found in review)', async () => {
    // Just under 2048 characters without the ~70-character deadline: it was issued before the deadline existed.
    const scopes: string[] = [];
    const plain = () =>
      JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: [...scopes].sort(), Resource: ['*'] }] });
    for (let i = 0; plain().length <= 2048 - 24; i++) scopes.push(`s3:GetObjectV${String(i).padStart(4, '0')}`);
    expect(plain().length).toBeLessThanOrEqual(2048);
    const req = issueRequest(roleConfig(w.role.arn), { scopes });
    const before = w.emu.requests('AssumeRole').length;
    await w.provider.issue({ ...req, intent: w.provider.intent(req).handle });
    const sent = JSON.parse(w.emu.requests('AssumeRole').slice(before)[0]!.params.Policy!);
    expect(sent.Statement[0].Condition).toBeUndefined();
    expect(sent.Statement[0].Action).toHaveLength(scopes.length);
  });

  it('with revocation.orphanMs above the call allowance, a session answered within it is not cut short (found in review)', async () => {
    const req = issueRequest(roleConfig(w.role.arn), { ttlSeconds: 900 });
    const { handle } = w.provider.intent(req, { orphanMs: 10 * 60_000 }); // the core hands out answers within 10 minutes
    w.emu.advanceTime(8 * 60_000);
    const made = await w.provider.issue({ ...req, intent: handle });
    w.emu.advanceTime(made.expiresAt - 60_000 - w.emu.now()); // a minute before the Expiration the caller was given
    // Before: implicit-deny, the deadline counted only the call allowance.
    expect(w.emu.evaluate(String(made.credentials.AccessKeyId), 's3:GetObject', 'arn:aws:s3:::reports/q3.csv')).toBe('allow');
  });

  it('refuses a session policy over 2048 chars with 400 policy_too_large before calling STS', async () => {
    const resources = Array.from({ length: 50 }, (_, i) => `arn:aws:s3:::bucket-${i}/some/long/prefix/*`);
    const before = w.emu.requests().length;
    const err = await brokerError(
      w.provider.issue(issueRequest(roleConfig(w.role.arn, { resources }), { scopes: ['s3:GetObject', 's3:PutObject'] })),
    );
    expect(err).toMatchObject({ status: 400, code: 'policy_too_large' });
    expect(
      w.emu
        .requests()
        .slice(before)
        .map((r) => r.action),
    ).not.toContain('AssumeRole');
  });

  it('refuses scopes that are not IAM actions, and an empty scope list', async () => {
    expect(await brokerError(w.provider.issue(issueRequest(roleConfig(w.role.arn), { scopes: ['tickets read'] })))).toMatchObject({
      status: 400,
      code: 'invalid_scope',
    });
    expect(await brokerError(w.provider.issue(issueRequest(roleConfig(w.role.arn), { scopes: [] })))).toMatchObject({
      status: 400,
      code: 'scopes_empty',
    });
  });

  it('maps a role STS refuses to 502 upstream_denied and an ARN STS rejects to 502 upstream_rejected', async () => {
    const missing = await brokerError(w.provider.issue(issueRequest(roleConfig('arn:aws:iam::123456789012:role/does-not-exist'))));
    expect(missing).toMatchObject({ status: 502, code: 'upstream_denied' });
    expect(missing.message).not.toContain('does-not-exist'); // the AWS message stays in the log
    const foreign = await brokerError(w.provider.issue(issueRequest(roleConfig('arn:aws-cn:iam::123456789012:role/agent-reports'))));
    expect(foreign).toMatchObject({ status: 502, code: 'upstream_rejected' });
  });

  it('retries throttling and 5xx with backoff and succeeds', async () => {
    w.emu.setThrottle(1, 'AssumeRole');
    w.emu.failNext(1, { action: 'AssumeRole' });
    const before = w.emu.requests('AssumeRole').length;
    await expect(w.provider.issue(issueRequest(roleConfig(w.role.arn)))).resolves.toBeDefined();
    expect(
      w.emu
        .requests('AssumeRole')
        .slice(before)
        .map((r) => r.code ?? r.status),
    ).toEqual(['Throttling', 'InternalFailure', 200]);
  });

  it('gives up after maxAttempts: 502 upstream_throttled, and 502 upstream_unavailable when STS is down', async () => {
    w.emu.setThrottle(3, 'AssumeRole');
    expect(await brokerError(w.provider.issue(issueRequest(roleConfig(w.role.arn))))).toMatchObject({
      status: 502,
      code: 'upstream_throttled',
    });
    w.emu.setDown();
    try {
      expect(await brokerError(w.provider.issue(issueRequest(roleConfig(w.role.arn))))).toMatchObject({
        status: 502,
        code: 'upstream_unavailable',
      });
    } finally {
      w.emu.setDown(false);
    }
  });

  it('is revocable only with revocation: iam-deny', async () => {
    expect(await w.provider.revocable(roleConfig(w.role.arn))).toBe(true);
    expect(await w.makeProvider({ revocation: 'none' }).revocable(roleConfig(w.role.arn))).toBe(false);
    expect(w.provider.minTtlSeconds).toBe(900);
  });

  it('is not revocable for a role of another account than its credentials, asked before anything else', async () => {
    // IAM writes a role's deny by name, in the caller's account: a cross-account role's sessions cannot be denied.
    // Nothing taught the provider its account (no ready(), no revocation): it asks STS rather than guess.
    const p = w.makeProvider();
    const foreign = roleConfig(w.role.arn.replace(`::${w.emu.accountId}:`, '::999999999999:'));
    expect(await p.revocable(foreign)).toBe(false);
    expect(await p.revocable(roleConfig(w.role.arn))).toBe(true);
  });
});

describe('names STS accepts', () => {
  const NAME = /^[\w+=,.@-]{2,64}$/;
  const TAG = /^[\p{L}\p{Z}\p{N}_.:/=+\-@]{0,256}$/u;
  it.each([
    ['spiffe://example.org/agent/support', 'example.org@agent@support'],
    ['spiffe://example.org/agent/x-y', 'example.org@agent@x-y'],
    ['spiffe://example.org/agent-x/y', 'example.org@agent-x@y'],
    ['https://token.actions.githubusercontent.com#repo:acme/app', /^[\w.-]{1,47}githubusercontent\.com-repo-acme-app=[0-9a-f]{16}$/],
    ['https://token.actions.githubusercontent.com#repo:acme/app:ref:refs/heads/main', /^[\w.-]{1,47}=[0-9a-f]{16}$/],
    ['x', /^x=[0-9a-f]{16}$/],
    [`spiffe://example.org/${'deep/'.repeat(30)}agent`, /^[\w.@-]{1,47}=[0-9a-f]{16}$/],
  ])('source identity for %s', (agent, expected) => {
    const s = sourceIdentityFor(agent);
    expect(s).toMatch(NAME);
    if (typeof expected === 'string') expect(s).toBe(expected);
    else expect(s).toMatch(expected);
  });

  it('source identities are one-to-one: revoking one agent never denies another', () => {
    const agents = [
      'spiffe://example.org/agent/x-y',
      'spiffe://example.org/agent-x/y',
      'spiffe://example.org/agent/x/y',
      'spiffe://example.org-agent/x/y',
      'https://issuer.example#example.org@agent@x@y',
      'http://issuer.example#sub',
      'https://issuer.example#sub',
      `spiffe://example.org/${'a'.repeat(70)}`,
      `spiffe://example.org/${'a'.repeat(69)}b`,
    ];
    const ids = agents.map(sourceIdentityFor);
    expect(new Set(ids).size).toBe(agents.length);
  });

  it('task tags are one-to-one for every task id the broker makes, sub-tasks and 512-char ids included', () => {
    const parent = 'T'.repeat(128);
    const ids = [
      't-4711',
      't-4711~a',
      't-4711~a~b',
      't-4711~a.b',
      't-4711.a~b',
      'a:b.c-d_e',
      `${parent}~${'x'.repeat(127)}`, // 256: still readable
      `${parent}~${'x'.repeat(128)}`, // 257: hashed
      `${parent}~${'x'.repeat(128)}~${'y'.repeat(128)}~${'z'.repeat(125)}`, // 512
      `${parent}~${'x'.repeat(128)}~${'y'.repeat(128)}~${'z'.repeat(124)}Z`,
    ];
    const tags = ids.map(taskTagValue);
    for (const t of tags) expect(t).toMatch(TAG);
    expect(new Set(tags).size).toBe(ids.length);
    expect(taskTagValue('t-4711~a~b')).toBe('t-4711/a/b');
    expect(taskTagValue(`${parent}~${'x'.repeat(127)}`)).toBe(`${parent}/${'x'.repeat(127)}`);
    expect(taskTagValue(ids[7]!)).toMatch(/^T{128}\/x{61}=[0-9a-f]{64}$/);
  });

  it('session names are unique per lease, carry the agent and task keys, and are valid even for odd lease ids', () => {
    const lease = '0123456789abcdef0123456789abcdef';
    const name = sessionNameFor(lease, 'spiffe://example.org/agent/a', 't-1');
    expect(name).toBe(`jit-${agentKeyFor('spiffe://example.org/agent/a')}-${taskKeyFor('t-1')}-${lease}`);
    expect(name).toMatch(/^jit-[a-z2-7]{10}-[a-z2-7]{8}-[0-9a-f]{32}$/);
    expect(agentKeyFor('spiffe://example.org/agent/b')).not.toBe(agentKeyFor('spiffe://example.org/agent/a'));
    expect(taskKeyFor('t-1~sub')).not.toBe(taskKeyFor('t-1'));
    const long1 = sessionNameFor('a'.repeat(100), 'x', 't');
    const long2 = sessionNameFor(`b${'a'.repeat(99)}`, 'x', 't');
    expect(long1).toMatch(NAME);
    expect(long1).toHaveLength(64);
    expect(long1).not.toBe(long2);
    expect(sessionNameFor('lease with spaces/and#marks', 'x', 't')).toMatch(NAME);
  });

  it('tenant and agent tag values are kept when STS takes them as they are, else hashed (session-bounds.test.ts)', () => {
    expect(tagValue('spiffe://example.org/agent/x')).toBe('spiffe://example.org/agent/x');
    expect(tagValue('a#b"c')).toMatch(/^a_b_c=[0-9a-f]{64}$/);
    expect(tagValue('v'.repeat(300))).toMatch(/^v{190}=[0-9a-f]{64}$/);
  });
});
