import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { AssumeRoleCommand, GetCallerIdentityCommand, STSClient, type AssumeRoleCommandInput } from '@aws-sdk/client-sts';
import {
  CreateAccessKeyCommand,
  DeleteAccessKeyCommand,
  DeleteRolePolicyCommand,
  GetRoleCommand,
  GetRolePolicyCommand,
  IAMClient,
  ListAccessKeysCommand,
  ListRolePoliciesCommand,
  PutRolePolicyCommand,
  UpdateAccessKeyCommand,
} from '@aws-sdk/client-iam';
import { startAwsEmulator, type AwsEmulator, type EmulatedUser } from './index.ts';

let emu: AwsEmulator;
let broker: EmulatedUser;
let role: { roleName: string; roleId: string; arn: string };
let sts: STSClient;
let iam: IAMClient;

const creds = (u: { accessKeyId: string; secretAccessKey: string; sessionToken?: string }) => ({
  accessKeyId: u.accessKeyId,
  secretAccessKey: u.secretAccessKey,
  ...(u.sessionToken ? { sessionToken: u.sessionToken } : {}),
});
const stsWith = (c: Parameters<typeof creds>[0]) =>
  new STSClient({ region: 'us-east-1', endpoint: emu.url, maxAttempts: 1, credentials: creds(c) });
const iamWith = (c: Parameters<typeof creds>[0]) =>
  new IAMClient({ region: 'us-east-1', endpoint: emu.url, maxAttempts: 1, credentials: creds(c) });

/** The awsQuery error code the SDK surfaced, and its HTTP status. */
async function failure(p: Promise<unknown>): Promise<{ code: string; status: number | undefined; message: string }> {
  try {
    await p;
  } catch (err) {
    const e = err as { Code?: string; name: string; message: string; $metadata?: { httpStatusCode?: number } };
    return { code: e.Code ?? e.name, status: e.$metadata?.httpStatusCode, message: e.message };
  }
  throw new Error('expected the call to fail');
}

async function assume(input: Partial<AssumeRoleCommandInput> = {}, client = sts) {
  return client.send(new AssumeRoleCommand({ RoleArn: role.arn, RoleSessionName: 'session-1', DurationSeconds: 900, ...input }));
}

beforeAll(async () => {
  emu = await startAwsEmulator();
  broker = emu.createUser('jit-broker');
  role = emu.createRole('agent-reports', { maxSessionDuration: 7200, trust: [broker.arn] });
  sts = stsWith(broker);
  iam = iamWith(broker);
});

afterAll(async () => {
  sts.destroy();
  iam.destroy();
  await emu.stop();
});

describe('transport and authentication', () => {
  it('answers a signed GetCallerIdentity with XML, the request id header and the caller', async () => {
    const out = await sts.send(new GetCallerIdentityCommand({}));
    expect(out).toMatchObject({ Arn: broker.arn, Account: '123456789012' });
    expect(out.UserId).toMatch(/^AIDA[A-Z2-7]{17}$/);
    expect(out.$metadata.requestId).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('rejects a wrong secret with SignatureDoesNotMatch (the signature is really verified)', async () => {
    const f = await failure(
      stsWith({ accessKeyId: broker.accessKeyId, secretAccessKey: 'not-the-secret' }).send(new GetCallerIdentityCommand({})),
    );
    expect(f).toMatchObject({ code: 'SignatureDoesNotMatch', status: 403 });
  });

  it('rejects an unknown access key with InvalidClientTokenId', async () => {
    const f = await failure(stsWith({ accessKeyId: 'AKIAUNKNOWNUNKNOWN12', secretAccessKey: 'x' }).send(new GetCallerIdentityCommand({})));
    expect(f).toMatchObject({ code: 'InvalidClientTokenId', status: 403 });
  });

  it('refuses unsigned requests, unknown actions, unknown versions and paths loudly, in the exact error shape', async () => {
    const post = (body: string, path = '/') =>
      fetch(`${emu.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body });
    const unsigned = await post('Action=GetCallerIdentity&Version=2011-06-15');
    expect(unsigned.status).toBe(403);
    expect(await unsigned.text()).toContain('<Code>MissingAuthenticationToken</Code>');

    const unknown = await post('Action=GetSessionToken&Version=2011-06-15');
    expect(unknown.status).toBe(400);
    expect(unknown.headers.get('content-type')).toBe('text/xml');
    expect(unknown.headers.get('x-amzn-requestid')).toMatch(/^[0-9a-f-]{36}$/);
    expect(await unknown.text()).toMatch(
      /^<ErrorResponse xmlns="https:\/\/sts\.amazonaws\.com\/doc\/2011-06-15\/"><Error><Type>Sender<\/Type><Code>InvalidAction<\/Code><Message>Could not find operation GetSessionToken for version 2011-06-15<\/Message><\/Error><RequestId>[0-9a-f-]{36}<\/RequestId><\/ErrorResponse>$/,
    );

    expect(await (await post('Action=AssumeRole&Version=2012-01-01')).text()).toContain('<Code>NoSuchVersion</Code>');
    expect(await (await post('Action=ListRoles&Version=2010-05-08')).text()).toContain('<Code>InvalidAction</Code>');
    expect((await post('Action=GetCallerIdentity&Version=2011-06-15', '/v1/other')).status).toBe(404);
  });

  it('serves STS and IAM from one endpoint, told apart by Version', async () => {
    const out = await iam.send(new GetRoleCommand({ RoleName: role.roleName }));
    expect(out.Role).toMatchObject({ RoleName: 'agent-reports', RoleId: role.roleId, Arn: role.arn, MaxSessionDuration: 7200 });
    expect(decodeURIComponent(out.Role!.AssumeRolePolicyDocument!)).toContain(broker.arn);
  });
});

describe('AssumeRole', () => {
  it('issues ASIA keys, a session token, Expiration and AROA…:<session>, which then work', async () => {
    const before = emu.now();
    const out = await assume({
      DurationSeconds: 1800,
      SourceIdentity: 'agent-x',
      Tags: [{ Key: 'task', Value: 't-1' }],
      TransitiveTagKeys: ['task'],
    });
    expect(out.Credentials!.AccessKeyId).toMatch(/^ASIA[A-Z2-7]{16}$/);
    expect(out.Credentials!.SessionToken!.length).toBeGreaterThan(100);
    expect(Math.abs(out.Credentials!.Expiration!.getTime() - (before + 1_800_000))).toBeLessThan(2000);
    expect(out.AssumedRoleUser).toEqual({
      AssumedRoleId: `${role.roleId}:session-1`,
      Arn: 'arn:aws:sts::123456789012:assumed-role/agent-reports/session-1',
    });
    expect(out.SourceIdentity).toBe('agent-x');
    expect(out.PackedPolicySize).toBeGreaterThan(0);
    const who = await stsWith({
      accessKeyId: out.Credentials!.AccessKeyId!,
      secretAccessKey: out.Credentials!.SecretAccessKey!,
      sessionToken: out.Credentials!.SessionToken!,
    }).send(new GetCallerIdentityCommand({}));
    expect(who).toMatchObject({ UserId: `${role.roleId}:session-1`, Arn: out.AssumedRoleUser!.Arn });
  });

  it('refuses a session key without its token, or with another token', async () => {
    const out = await assume();
    const c = out.Credentials!;
    expect(
      (await failure(stsWith({ accessKeyId: c.AccessKeyId!, secretAccessKey: c.SecretAccessKey! }).send(new GetCallerIdentityCommand({}))))
        .code,
    ).toBe('InvalidClientTokenId');
    expect(
      (
        await failure(
          stsWith({ accessKeyId: c.AccessKeyId!, secretAccessKey: c.SecretAccessKey!, sessionToken: 'forged' }).send(
            new GetCallerIdentityCommand({}),
          ),
        )
      ).code,
    ).toBe('InvalidClientTokenId');
  });

  const tooManyTags = Array.from({ length: 51 }, (_, i) => ({ Key: `k${i}`, Value: 'v' }));
  const cases: [string, Partial<AssumeRoleCommandInput>, string, RegExp][] = [
    ['session name too short', { RoleSessionName: 'a' }, 'ValidationError', /roleSessionName.*greater than or equal to 2/],
    ['session name too long', { RoleSessionName: 'a'.repeat(65) }, 'ValidationError', /roleSessionName.*less than or equal to 64/],
    [
      'session name with a space',
      { RoleSessionName: 'bad name' },
      'ValidationError',
      /roleSessionName.*regular expression pattern: \[\\w\+=,\.@-\]\*/,
    ],
    ['duration below 900', { DurationSeconds: 899 }, 'ValidationError', /durationSeconds.*greater than or equal to 900/],
    ['duration above 43200', { DurationSeconds: 43_201 }, 'ValidationError', /durationSeconds.*less than or equal to 43200/],
    ['duration above the role max', { DurationSeconds: 7201 }, 'ValidationError', /exceeds the MaxSessionDuration set for this role/],
    [
      'policy over 2048 chars',
      { Policy: `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"${'x'.repeat(2048)}"}]}` },
      'ValidationError',
      /policy.*less than or equal to 2048/,
    ],
    ['policy not JSON', { Policy: '{not json' }, 'MalformedPolicyDocument', /not in the valid JSON format/],
    [
      'policy without Resource',
      { Policy: '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject"}]}' },
      'MalformedPolicyDocument',
      /must contain resources/,
    ],
    ['51 tags', { Tags: tooManyTags }, 'ValidationError', /tags.*less than or equal to 50/],
    [
      'tag key of 129 chars',
      { Tags: [{ Key: 'k'.repeat(129), Value: 'v' }] },
      'ValidationError',
      /tags\.1\.member\.key.*less than or equal to 128/,
    ],
    [
      'tag value of 257 chars',
      { Tags: [{ Key: 'k', Value: 'v'.repeat(257) }] },
      'ValidationError',
      /tags\.1\.member\.value.*less than or equal to 256/,
    ],
    ['tag value with a bad char', { Tags: [{ Key: 'k', Value: 'a#b' }] }, 'ValidationError', /tags\.1\.member\.value.*regular expression/],
    [
      'duplicate tag keys (case-insensitive)',
      {
        Tags: [
          { Key: 'Task', Value: 'a' },
          { Key: 'task', Value: 'b' },
        ],
      },
      'ValidationError',
      /Duplicate tag keys/,
    ],
    [
      'transitive key not a tag',
      { Tags: [{ Key: 'task', Value: 'a' }], TransitiveTagKeys: ['tenant'] },
      'ValidationError',
      /transitive tag key tenant/,
    ],
    ['source identity too short', { SourceIdentity: 'a' }, 'ValidationError', /sourceIdentity.*greater than or equal to 2/],
    ['source identity aws:', { SourceIdentity: 'aws:me' }, 'ValidationError', /sourceIdentity.*regular expression/],
    ['external id too short', { ExternalId: 'x' }, 'ValidationError', /externalId.*greater than or equal to 2/],
    ['role ARN too short', { RoleArn: 'arn:aws:iam::1:r' }, 'ValidationError', /roleArn.*greater than or equal to 20/],
    ['malformed role ARN', { RoleArn: 'arn:aws:s3:::not-a-role-arn' }, 'ValidationError', /arn:aws:s3:::not-a-role-arn is invalid/],
    [
      'role that does not exist',
      { RoleArn: 'arn:aws:iam::123456789012:role/missing' },
      'AccessDenied',
      /not authorized to perform: sts:AssumeRole/,
    ],
    [
      'packed policy + tags too large',
      { Tags: Array.from({ length: 50 }, (_, i) => ({ Key: `key-${i}-${'k'.repeat(100)}`, Value: 'v'.repeat(200) })) },
      'PackedPolicyTooLarge',
      /% of the allowed limit/,
    ],
  ];
  it.each(cases)('rejects %s', async (_name, input, code, message) => {
    const f = await failure(assume(input));
    expect(f.code).toBe(code);
    expect(f.message).toMatch(message);
    expect(f.status).toBe(code === 'AccessDenied' ? 403 : 400);
  });

  it('enforces the trust policy and ExternalId', async () => {
    const other = emu.createUser('someone-else');
    expect((await failure(assume({}, stsWith(other)))).code).toBe('AccessDenied');
    const guarded = emu.createRole('guarded', { externalId: 'ext-123' });
    expect(await failure(assume({ RoleArn: guarded.arn }))).toMatchObject({ code: 'AccessDenied' });
    expect(await failure(assume({ RoleArn: guarded.arn, ExternalId: 'wrong-1' }))).toMatchObject({ code: 'AccessDenied' });
    await expect(assume({ RoleArn: guarded.arn, ExternalId: 'ext-123' })).resolves.toBeDefined();
  });

  it('evaluates the session policy (scoped down) for the issued session', async () => {
    const policy = JSON.stringify({
      Version: '2012-10-17',
      Statement: [{ Effect: 'Allow', Action: ['s3:GetObject'], Resource: ['arn:aws:s3:::reports/*'] }],
    });
    const out = await assume({ Policy: policy });
    const id = out.Credentials!.AccessKeyId!;
    expect(emu.evaluate(id, 's3:GetObject', 'arn:aws:s3:::reports/q3.csv')).toBe('allow');
    expect(emu.evaluate(id, 's3:PutObject', 'arn:aws:s3:::reports/q3.csv')).toBe('implicit-deny');
    expect(emu.evaluate(id, 's3:GetObject', 'arn:aws:s3:::payroll/x')).toBe('implicit-deny');
  });

  it("judges a session policy's aws:CurrentTime bound by the request's time, not its second", async () => {
    // A bound half a second into a second: judged by the request's second, a request 200 ms past it would pass.
    const bound = Math.ceil(emu.now() / 1000) * 1000 + 5500;
    const policy = JSON.stringify({
      Version: '2012-10-17',
      Statement: [
        {
          Effect: 'Allow',
          Action: ['s3:GetObject'],
          Resource: ['*'],
          Condition: { DateLessThan: { 'aws:CurrentTime': new Date(bound).toISOString() } },
        },
      ],
    });
    const id = (await assume({ Policy: policy })).Credentials!.AccessKeyId!;
    const start = emu.now();
    try {
      expect(emu.evaluate(id, 's3:GetObject', 'arn:aws:s3:::r/x')).toBe('allow');
      emu.advanceTime(bound + 200 - emu.now());
      expect(emu.evaluate(id, 's3:GetObject', 'arn:aws:s3:::r/x')).toBe('implicit-deny');
    } finally {
      emu.advanceTime(start - emu.now());
    }
  });

  it('expires sessions by the emulator clock', async () => {
    const out = await assume();
    const client = stsWith({
      accessKeyId: out.Credentials!.AccessKeyId!,
      secretAccessKey: out.Credentials!.SecretAccessKey!,
      sessionToken: out.Credentials!.SessionToken!,
    });
    await expect(client.send(new GetCallerIdentityCommand({}))).resolves.toBeDefined();
    emu.advanceTime(901_000);
    try {
      expect(await failure(client.send(new GetCallerIdentityCommand({})))).toMatchObject({ code: 'ExpiredToken', status: 400 });
    } finally {
      emu.advanceTime(-901_000);
    }
  });
});

describe('IAM inline policies and revocation by Deny', () => {
  const denyUserIds = (ids: string[]) =>
    JSON.stringify({
      Version: '2012-10-17',
      Statement: [{ Effect: 'Deny', Action: '*', Resource: '*', Condition: { StringEquals: { 'aws:userid': ids } } }],
    });

  it('puts, gets (URL-encoded, as IAM does), lists and deletes role policies', async () => {
    const doc = denyUserIds([`${role.roleId}:nobody`]);
    await iam.send(new PutRolePolicyCommand({ RoleName: role.roleName, PolicyName: 'p1', PolicyDocument: doc }));
    const got = await iam.send(new GetRolePolicyCommand({ RoleName: role.roleName, PolicyName: 'p1' }));
    expect(decodeURIComponent(got.PolicyDocument!)).toBe(doc);
    expect((await iam.send(new ListRolePoliciesCommand({ RoleName: role.roleName }))).PolicyNames).toEqual(['p1']);
    await iam.send(new DeleteRolePolicyCommand({ RoleName: role.roleName, PolicyName: 'p1' }));
    expect(await failure(iam.send(new GetRolePolicyCommand({ RoleName: role.roleName, PolicyName: 'p1' })))).toMatchObject({
      code: 'NoSuchEntity',
      status: 404,
    });
    expect(await failure(iam.send(new DeleteRolePolicyCommand({ RoleName: role.roleName, PolicyName: 'p1' })))).toMatchObject({
      code: 'NoSuchEntity',
    });
    expect(await failure(iam.send(new PutRolePolicyCommand({ RoleName: 'nope', PolicyName: 'p1', PolicyDocument: doc })))).toMatchObject({
      code: 'NoSuchEntity',
    });
    expect(
      await failure(
        iam.send(
          new PutRolePolicyCommand({
            RoleName: role.roleName,
            PolicyName: 'p1',
            PolicyDocument:
              '{"Statement":[{"Effect":"Deny","Action":"*","Resource":"*","Condition":{"IpAddress":{"aws:SourceIp":"1.2.3.4"}}}]}',
          }),
        ),
      ),
    ).toMatchObject({ code: 'MalformedPolicyDocument' });
  });

  it('enforces the 10,240-char aggregate inline policy size per role', async () => {
    const r = emu.createRole('size-limit');
    const big = (n: number) => denyUserIds(Array.from({ length: n }, (_, i) => `AROAEXAMPLEEXAMPLE00:s-${String(i).padStart(40, '0')}`));
    await iam.send(new PutRolePolicyCommand({ RoleName: r.roleName, PolicyName: 'a', PolicyDocument: big(80) }));
    expect(big(80).length).toBeGreaterThan(5000);
    expect(
      await failure(iam.send(new PutRolePolicyCommand({ RoleName: r.roleName, PolicyName: 'b', PolicyDocument: big(80) }))),
    ).toMatchObject({ code: 'LimitExceeded', status: 409 });
    // Replacing the same policy counts only the new version.
    await iam.send(new PutRolePolicyCommand({ RoleName: r.roleName, PolicyName: 'a', PolicyDocument: big(100) }));
  });

  it('cuts off exactly the denied session by aws:userid, and older sessions by aws:TokenIssueTime', async () => {
    const r = emu.createRole('revocation', { trust: [broker.arn] });
    const mk = async (name: string) => {
      const out = await assume({ RoleArn: r.arn, RoleSessionName: name });
      const c = out.Credentials!;
      return stsWith({ accessKeyId: c.AccessKeyId!, secretAccessKey: c.SecretAccessKey!, sessionToken: c.SessionToken! });
    };
    const a = await mk('revoked-a');
    const b = await mk('kept-b');
    await iam.send(
      new PutRolePolicyCommand({ RoleName: r.roleName, PolicyName: 'deny', PolicyDocument: denyUserIds([`${r.roleId}:revoked-a`]) }),
    );
    expect(await failure(a.send(new GetCallerIdentityCommand({})))).toMatchObject({ code: 'AccessDenied', status: 403 });
    await expect(b.send(new GetCallerIdentityCommand({}))).resolves.toBeDefined();

    const cutoff = new Date(emu.now() + 2000).toISOString().replace(/\.\d{3}Z$/, 'Z');
    await iam.send(
      new PutRolePolicyCommand({
        RoleName: r.roleName,
        PolicyName: 'deny',
        PolicyDocument: JSON.stringify({
          Version: '2012-10-17',
          Statement: [{ Effect: 'Deny', Action: '*', Resource: '*', Condition: { DateLessThan: { 'aws:TokenIssueTime': cutoff } } }],
        }),
      }),
    );
    expect(await failure(b.send(new GetCallerIdentityCommand({})))).toMatchObject({ code: 'AccessDenied' });
    emu.advanceTime(3000);
    const c = await mk('after-cutoff');
    await expect(c.send(new GetCallerIdentityCommand({}))).resolves.toBeDefined();
  });
});

describe('access keys', () => {
  it('creates (max two per user), deactivates and deletes keys; inactive or deleted keys are refused', async () => {
    const u = emu.createUser('rotating');
    const admin = iamWith(u);
    const created = (await admin.send(new CreateAccessKeyCommand({ UserName: u.userName }))).AccessKey!;
    expect(created).toMatchObject({ UserName: u.userName, Status: 'Active' });
    expect(created.AccessKeyId).toMatch(/^AKIA[A-Z2-7]{16}$/);
    expect(await failure(admin.send(new CreateAccessKeyCommand({ UserName: u.userName })))).toMatchObject({ code: 'LimitExceeded' });
    const listed = await admin.send(new ListAccessKeysCommand({ UserName: u.userName }));
    expect(listed.AccessKeyMetadata!.map((k) => k.AccessKeyId).sort()).toEqual([u.accessKeyId, created.AccessKeyId].sort());

    const fresh = iamWith({ accessKeyId: created.AccessKeyId!, secretAccessKey: created.SecretAccessKey! });
    await fresh.send(new UpdateAccessKeyCommand({ UserName: u.userName, AccessKeyId: u.accessKeyId, Status: 'Inactive' }));
    expect(await failure(stsWith(u).send(new GetCallerIdentityCommand({})))).toMatchObject({ code: 'InvalidClientTokenId', status: 403 });
    await fresh.send(new UpdateAccessKeyCommand({ AccessKeyId: u.accessKeyId, Status: 'Active' })); // UserName defaults to the caller
    await expect(stsWith(u).send(new GetCallerIdentityCommand({}))).resolves.toBeDefined();
    await fresh.send(new DeleteAccessKeyCommand({ UserName: u.userName, AccessKeyId: u.accessKeyId }));
    expect(await failure(stsWith(u).send(new GetCallerIdentityCommand({})))).toMatchObject({ code: 'InvalidClientTokenId' });
    expect(await failure(fresh.send(new DeleteAccessKeyCommand({ UserName: u.userName, AccessKeyId: u.accessKeyId })))).toMatchObject({
      code: 'NoSuchEntity',
    });
  });

  it('can make new keys invisible for a few requests (IAM eventual consistency)', async () => {
    const u = emu.createUser('slow-propagation');
    emu.setKeyPropagationDelay(2);
    try {
      const k = (await iamWith(u).send(new CreateAccessKeyCommand({}))).AccessKey!;
      const client = stsWith({ accessKeyId: k.AccessKeyId!, secretAccessKey: k.SecretAccessKey! });
      expect((await failure(client.send(new GetCallerIdentityCommand({})))).code).toBe('InvalidClientTokenId');
      expect((await failure(client.send(new GetCallerIdentityCommand({})))).code).toBe('InvalidClientTokenId');
      await expect(client.send(new GetCallerIdentityCommand({}))).resolves.toMatchObject({ Arn: u.arn });
    } finally {
      emu.setKeyPropagationDelay(0);
    }
  });
});

describe('fault injection', () => {
  it('throttles, fails with 500 and goes down on demand', async () => {
    emu.setThrottle(1);
    expect(await failure(sts.send(new GetCallerIdentityCommand({})))).toMatchObject({ code: 'Throttling', status: 400 });
    emu.failNext(1, { action: 'AssumeRole' });
    await expect(sts.send(new GetCallerIdentityCommand({}))).resolves.toBeDefined(); // only AssumeRole is affected
    expect(await failure(assume())).toMatchObject({ code: 'InternalFailure', status: 500 });
    emu.setDown();
    try {
      const f = await failure(sts.send(new GetCallerIdentityCommand({})));
      expect(f.status).toBeUndefined();
    } finally {
      emu.setDown(false);
    }
    await expect(sts.send(new GetCallerIdentityCommand({}))).resolves.toBeDefined();
  });
});
