import { startAwsEmulator, type AwsEmulator } from '../../emulators/aws/index.ts';
import { AGENT, ORCH, call, startTestBroker, waitFor, type TestBroker } from '../../helpers/broker.ts';
import { brokerAwsSettings } from './helpers.ts';

/**
 * Found by a red-team pass: a lease's expiry was STS's `Expiration`, a time on AWS's clock, and the
 * sweeper ends leases on the broker's (Redis's) clock. With AWS's clock 880 s behind (inside the
 * configured `clockSkewSeconds`) a 900-s session's lease ended `expired` 20 s after issue; completing
 * the task then revoked nothing, and the session went on working for 877 s.
 */
const BEHIND_MS = 880_000;
let emu: AwsEmulator;
let t: TestBroker;
let roleName: string;
beforeAll(async () => {
  emu = await startAwsEmulator();
  const user = emu.createUser('jit-broker');
  const role = emu.createRole('agent-reports', { maxSessionDuration: 3600, trust: [user.arn] });
  roleName = role.roleName;
  t = await startTestBroker('aws-clock-behind', {
    config: {
      providers: { aws: brokerAwsSettings(emu.url, user, { revocation: 'iam-deny', requestTimeoutMs: 2000, clockSkewSeconds: 1200 }) },
      roles: { 'reports-bucket': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 } },
    },
  });
});
afterAll(async () => {
  await t?.close();
  await emu?.stop();
});

test("with AWS's clock behind the broker's, a session's lease lives as long as the session, and the task's end cuts it off", async () => {
  emu.advanceTime(-BEHIND_MS);
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-aws-behind',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 3600,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
  });
  expect(open.status).toBe(201);
  const before = Date.now();
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-aws-behind', role: 'reports-bucket', ttlSeconds: 900 });
  expect(r.status).toBe(201);
  // On the broker's clock the session lives 900 s from issue: so does its lease.
  expect(Date.parse(r.body.expiresAt)).toBeGreaterThanOrEqual(before + 900_000);
  const key = r.body.credentials.AccessKeyId;
  expect(emu.evaluate(key, 's3:GetObject', 'arn:aws:s3:::reports/x')).toBe('allow');

  expect((await call(t.url, 'POST', '/v1/tasks/t-aws-behind/complete', t.as(ORCH))).status).toBe(202);
  const lease = await waitFor(async () => {
    const l = (await call(t.url, 'GET', `/v1/leases/${r.body.leaseId}`, t.as(AGENT))).body;
    return l.status === 'revoked' && l;
  }, 15_000);
  expect(lease.reason).toBe('task_completed');
  expect(emu.rolePolicy(roleName, 'jit-broker-revoked-sessions')).toBeDefined();
  expect(emu.evaluate(key, 's3:GetObject', 'arn:aws:s3:::reports/x')).toBe('explicit-deny');
});
