import { startAwsEmulator, type AwsEmulator } from '../emulators/aws/index.ts';
import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { sessionPolicy } from '../../src/providers/aws/session-policy.ts';
import { brokerAwsSettings } from '../providers/aws/helpers.ts';

/**
 * Red team: role chaining (`sts:AssumeRole*`, `sts:GetFederationToken`, `sts:AssumeRoot`) was refused as a
 * scope, because a credential a session makes from itself escapes the deny that ends the task. Two newer STS
 * actions do the same and were accepted: `sts:GetWebIdentityToken` (outbound identity federation: an
 * AWS-signed JWT of the session's identity, valid up to 1 h at external services, which the IAM deny on the
 * session name never reaches) and `sts:GetDelegatedAccessToken` (trades a token in for credentials of
 * another principal, outside the broker's session names). A task whose grant held one of them could keep
 * acting after it ended. They are refused like chaining, however spelled.
 */
let emu: AwsEmulator;
let t: TestBroker;
beforeAll(async () => {
  emu = await startAwsEmulator();
  const user = emu.createUser('jit-broker');
  const role = emu.createRole('agent-reports', { maxSessionDuration: 3600 });
  t = await startTestBroker('rt3-aws-minting', {
    config: {
      providers: { aws: brokerAwsSettings(emu.url, user, { requestTimeoutMs: 2000 }) },
      roles: { 'reports-bucket': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 } },
    },
  });
});
afterAll(async () => {
  await t?.close();
  await emu?.stop();
});

test.each([['sts:GetWebIdentityToken'], ['STS:getwebidentitytoken'], ['sts:GetWeb*'], ['sts:GetDelegatedAccessToken'], ['sts:Get*']])(
  'a grant whose scopes include %s is refused when the task opens: 400 invalid_scope',
  async (scope) => {
    const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
      taskId: `t-mint-${scope.replace(/[^a-z]/gi, '')}`,
      agent: `spiffe://dev.local${AGENT}`,
      tenant: 'acme',
      purpose: 'p',
      ttlSeconds: 600,
      grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject', scope] }],
    });
    expect({ status: open.status, code: open.body.code }).toEqual({ status: 400, code: 'invalid_scope' });
  },
);

test('the session policy refuses them too (a grant stored before this check); harmless STS reads still pass', () => {
  expect(() => sessionPolicy(['s3:GetObject', 'sts:GetWebIdentityToken'], ['*'], Date.now() + 60_000)).toThrow(/invalid|may not/i);
  expect(() => sessionPolicy(['sts:getdelegatedaccesstoken'], ['*'], Date.now() + 60_000)).toThrow(/invalid|may not/i);
  expect(() => sessionPolicy(['s3:GetObject', 'sts:GetCallerIdentity', 'sts:GetAccessKeyInfo'], ['*'], Date.now() + 60_000)).not.toThrow();
});

/**
 * Red team (fourteenth session): a grant of IAM actions let the session make a credential that lives until someone
 * deletes it (an IAM user's access key, console password, service-specific credential, SSH or signing key), or
 * change the role's own policies, where the deny that ends the task lives (`PutRolePolicy` overwrites it,
 * `DeleteRolePolicy` removes it), or whom it trusts. Refused like chaining, `iam:*` and `iam:Put*` included.
 */
test.each([
  ['iam:CreateAccessKey'],
  ['IAM:createloginprofile'],
  ['iam:UpdateLoginProfile'],
  ['iam:CreateServiceSpecificCredential'],
  ['iam:UploadSSHPublicKey'],
  ['iam:PutRolePolicy'],
  ['iam:DeleteRolePolicy'],
  ['iam:UpdateAssumeRolePolicy'],
  // A new role trusts whom its creator says (an outside account), is given a managed policy, and lives on after
  // the task: no deny the broker writes names it.
  ['iam:CreateRole'],
  ['iam:createrole'],
  ['iam:*Role'],
  ['iam:*'],
  ['iam:Put*'],
  ['iam:Create*'],
])('a grant whose scopes include %s is refused when the task opens: 400 invalid_scope', async (scope) => {
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: `t-iam-${scope.replace(/[^a-z]/gi, '')}`,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject', scope] }],
  });
  expect({ status: open.status, code: open.body.code }).toEqual({ status: 400, code: 'invalid_scope' });
});

test('IAM reads and actions that make nothing long-lived still pass', () => {
  expect(() =>
    sessionPolicy(['iam:GetRole', 'iam:List*', 'iam:Get*', 'iam:PassRole', 'iam:TagRole'], ['*'], Date.now() + 60_000),
  ).not.toThrow();
  expect(() => sessionPolicy(['iam:createaccesskey'], ['*'], Date.now() + 60_000)).toThrow(/may not/i);
});
