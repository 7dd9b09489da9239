import { startAwsEmulator, type AwsEmulator } from '../../emulators/aws/index.ts';
import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../../helpers/broker.ts';
import { sessionPolicy } from '../../../src/providers/aws/session-policy.ts';
import { brokerAwsSettings } from './helpers.ts';

/**
 * Found by a red-team pass: a grant whose scopes included `sts:AssumeRole` let the agent chain a session of
 * the role with a name it chose and no session policy. Ending the task denies the broker's session names
 * only, so the chained session kept the role's full permissions after the task, and could chain itself
 * again for good. Scopes that let a session assume a role are refused, however they are spelled.
 */
let emu: AwsEmulator;
let t: TestBroker;
beforeAll(async () => {
  emu = await startAwsEmulator();
  const user = emu.createUser('jit-broker');
  const role = emu.createRole('agent-reports', { maxSessionDuration: 3600 });
  t = await startTestBroker('aws-role-chaining', {
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

test.each([
  ['sts:AssumeRole'],
  ['STS:assumerole'],
  ['sts:Assume*'],
  ['sts:*'],
  ['sts:A*'],
  ['sts:AssumeRoleWith?AML'],
  ['sts:GetFederationToken'],
])('a grant whose scopes include %s is refused when the task opens: 400 invalid_scope', async (scope) => {
  // A newcomer found such a grant accepted and every issuance of it refused: it now fails where it is written.
  const taskId = `t-chain-${scope.replace(/[^a-z]/gi, '')}`;
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject', scope] }],
  });
  expect({ status: open.status, code: open.body.code }).toEqual({ status: 400, code: 'invalid_scope' });
});

test('other STS actions are scopes like any other', async () => {
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-chain-ok',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject', 'sts:GetCallerIdentity'] }],
  });
  expect(open.status).toBe(201);
  expect((await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-chain-ok', role: 'reports-bucket' })).status).toBe(201);
});

test('the session policy refuses them too, whatever reached it (a grant stored before this check)', () => {
  expect(() => sessionPolicy(['s3:GetObject', 'sts:assume*'], ['*'], Date.now() + 60_000)).toThrow(/may not let the session assume a role/);
  expect(() => sessionPolicy(['s3:GetObject', 'sts:GetCallerIdentity'], ['*'], Date.now() + 60_000)).not.toThrow();
});
