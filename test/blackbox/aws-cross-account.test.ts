import { join } from 'node:path';
import { validateConfig } from '../../src/config/load.ts';
import { startAwsEmulator, type AwsEmulator, type EmulatedUser } from '../emulators/aws/index.ts';
import { ADMIN, AGENT, ORCH, call, startTestBroker, testRawConfig, uniquePrefix, waitFor, type TestBroker } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';

/**
 * Red team: a role of another account than the broker's credentials' (a cross-account `roleArn`). IAM takes a
 * role's name in the caller's account, so its sessions cannot be denied from here: the broker says
 * `revocable: false` for them, but only once it knew its own account, which it learned from `/readyz` or a
 * revocation. A broker that had answered neither (just started, or an instance no probe reaches) issued
 * such a session `revocable: true`: a promise it could not keep (the revocation then ended `revoke_failed`
 * for the session's whole life while the agent's credential worked on), and the same role's answer changed
 * from one request to the next.
 */
const agentId = `spiffe://dev.local${AGENT}`;
const CONFIG_PATH = join(process.cwd(), 'config/test.yaml');
const issuer = new TestIssuer();

let home: AwsEmulator;
let other: AwsEmulator;
let user: EmulatedUser;
let ownArn: string;
let foreignArn: string;
const open: TestBroker[] = [];

beforeAll(async () => {
  home = await startAwsEmulator({ accountId: '111111111111' });
  other = await startAwsEmulator({ accountId: '222222222222' });
  home.reachAccount(other);
  user = home.createUser('jit-broker');
  ownArn = home.createRole('agent-own', { maxSessionDuration: 3600, trust: [user.arn] }).arn;
  foreignArn = other.createRole('agent-reports', { maxSessionDuration: 3600, trust: [user.arn] }).arn;
});
afterAll(async () => {
  for (const t of open) await t.close().catch(() => undefined);
  await home?.stop();
  await other?.stop();
});

async function broker(name: string): Promise<TestBroker> {
  const prefix = uniquePrefix(`rt-aws-xacct-${name}`);
  const raw = testRawConfig(issuer, prefix);
  const aws = {
    region: 'us-east-1',
    endpoint: home.url,
    userName: user.userName,
    credentials: { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
    revocation: 'iam-deny',
    retryBaseDelayMs: 5,
    requestTimeoutMs: 2000,
  };
  const roles = {
    'reports-bucket': { provider: 'aws', roleArn: foreignArn, maxTtlSeconds: 3600 },
    'own-bucket': { provider: 'aws', roleArn: ownArn, maxTtlSeconds: 3600 },
    'own-approved': { provider: 'aws', roleArn: ownArn, maxTtlSeconds: 3600, approval: 'required' },
  };
  const t = await startTestBroker('aws-xacct', {
    prefix,
    issuer,
    loaded: validateConfig({ ...raw, providers: { aws }, roles }, {}, CONFIG_PATH),
  });
  open.push(t);
  return t;
}

const BOTH = [
  { role: 'reports-bucket', scopes: ['s3:GetObject'] },
  { role: 'own-bucket', scopes: ['s3:GetObject'] },
];

async function openTask(t: TestBroker, taskId: string, grants: { role: string; scopes: string[] }[] = BOTH) {
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 3600,
    grants,
  });
  expect(r.status).toBe(201);
}

test('a cross-account role is issued revocable: false from the first request, before /readyz or any revocation', async () => {
  const t = await broker('first');
  await openTask(t, 't-xacct-first');
  const first = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-xacct-first', role: 'reports-bucket' });
  expect(first.status).toBe(201);
  const keyId = first.body.credentials.AccessKeyId as string;
  expect(other.evaluate(keyId, 's3:GetObject', 'arn:aws:s3:::reports/x')).toBe('allow');
  expect(first.body.revocable).toBe(false);
  // The role's own account's: revocable, and said so consistently.
  const own = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-xacct-first', role: 'own-bucket' });
  expect([own.status, own.body.revocable]).toEqual([201, true]);
  // The same role, after /readyz taught the broker its account: the same answer.
  await call(t.url, 'GET', '/readyz', {});
  const again = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-xacct-first', role: 'reports-bucket' });
  expect([again.status, again.body.revocable]).toEqual([201, false]);
  const lease = (await call(t.url, 'GET', `/v1/leases/${first.body.leaseId}`, t.as(AGENT))).body;
  expect(lease.revocable).toBe(false);
}, 30_000);

test('STS failing to say the account at the first issuance: an upstream error (502), never a 500 nor a wrong flag', async () => {
  const t = await broker('sts-fails');
  await openTask(t, 't-xacct-fails');
  home.failNext(20, { action: 'GetCallerIdentity', status: 400, code: 'Throttling' });
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-xacct-fails', role: 'reports-bucket' });
  expect([r.status, r.body.code]).toEqual([502, 'upstream_throttled']);
  // Once what is left of the fault is drained, the broker learns the account and answers honestly.
  const ok = await waitFor(
    async () => {
      const x = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-xacct-fails', role: 'reports-bucket' });
      return x.status === 201 && x;
    },
    15_000,
    50,
  );
  expect(ok.body.revocable).toBe(false);
}, 30_000);

test('an approval request asks STS nothing: 202 while it cannot say the account; the approved request fails 502 and keeps its approval', async () => {
  // Whether a credential is revocable is asked only for one about to be issued: before, a request that only
  // waited on its approval (202) failed 502 while STS could not say the broker's account.
  const t = await broker('approval');
  const taskId = 't-xacct-approval';
  await openTask(t, taskId, [{ role: 'own-approved', scopes: ['s3:GetObject'] }]);
  const ask = () => call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'own-approved' });
  home.failNext(20, { action: 'GetCallerIdentity', status: 400, code: 'Throttling' });
  const pending = await ask();
  expect([pending.status, pending.body.status]).toEqual([202, 'pending']);
  const approvalId = pending.body.approvalId as string;
  expect((await call(t.url, 'POST', `/v1/approvals/${approvalId}`, t.as(ADMIN), { decision: 'approve' })).status).toBe(200);
  // Approved, the request is issued and so asks: STS still failing, a 502, and nothing was handed out under the
  // approval, so it is given back (still `approved`, the same request takes it again).
  const failed = await ask();
  expect([failed.status, failed.body.code]).toEqual([502, 'upstream_throttled']);
  expect((await call(t.url, 'GET', `/v1/approvals/${approvalId}`, t.as(ADMIN))).body.status).toBe('approved');
  const ok = await waitFor(
    async () => {
      const x = await ask();
      return x.status === 201 && x;
    },
    15_000,
    50,
  );
  expect(ok.body.revocable).toBe(true);
  expect((await call(t.url, 'GET', `/v1/approvals/${approvalId}`, t.as(ADMIN))).body.status).toBe('consumed');
}, 30_000);
