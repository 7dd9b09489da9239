import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { AwsEmulator } from '../emulators/aws/index.ts';
import { ADMIN, AGENT, ORCH, call, startSibling, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';
import { awsForBroker, callerIdentityAs } from '../providers/aws/helpers.ts';

/**
 * The kill switch's agent-wide AWS deny spares sessions issued after the kill, also when its job was lost
 * and the sweeper rebuilt it. Found in review: a rebuilt job carried the sweeper's time, so the cut-off
 * moved to then, and a task opened after the kill lost its session while its lease still said active.
 */
let emu: AwsEmulator;
let roleName: string;
let a: TestBroker;
let w: TestBroker | undefined;
const agentId = `spiffe://dev.local${AGENT}`;

beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  roleName = aws.role.roleName;
  a = await startTestBroker('kill-lost-job', {
    broker: { worker: false }, // no worker yet: the job is lost before any worker sees it
    config: {
      providers: { aws: { ...aws.providers.aws, revocation: 'iam-deny' } },
      roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
    },
  });
});
afterAll(async () => {
  await w?.close();
  await a?.close();
  await emu?.stop();
});

async function session(taskId: string) {
  const open = await call(a.url, 'POST', '/v1/tasks', a.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'kill switch, lost job',
    ttlSeconds: 7200,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
  });
  expect(open.status).toBe(201);
  const c = await call(a.url, 'POST', '/v1/credentials', a.as(AGENT), { taskId, role: 'reports-bucket' });
  expect(c.status).toBe(201);
  const k = c.body.credentials;
  return {
    leaseId: c.body.leaseId as string,
    whoAmI: () =>
      callerIdentityAs(emu.url, { accessKeyId: k.AccessKeyId, secretAccessKey: k.SecretAccessKey, sessionToken: k.SessionToken }),
  };
}

test('a kill-switch job lost and rebuilt by the sweeper still cuts the agent off at the kill', async () => {
  const before = await session('kl-1');
  expect((await call(a.url, 'POST', '/v1/admin/revoke', a.as(ADMIN), { agent: agentId })).status).toBe(202);
  const { queue } = a.broker.deps;
  for (const q of queue.queues) await q.obliterate({ force: true }); // the job is lost (a crash, a failover)
  await new Promise((r) => setTimeout(r, 3000));
  const after = await session('kl-2'); // a task opened after the kill
  expect(await after.whoAmI()).toBe('ok');
  w = await startSibling(a, { api: false }); // a worker: its sweeper finds the lost job's lease
  await waitFor(async () => (await a.broker.deps.leases.get(before.leaseId))?.status === 'revoked', 20_000, 200);
  expect(await before.whoAmI()).toBe('AccessDenied');
  // Before: AccessDenied too, its lease still active.
  const who = await after.whoAmI();
  // What a failure needs to be understood (it failed once in CI, not since): the cut-off and both clocks.
  if (who !== 'ok') {
    const policies = emu.rolePolicyNames(roleName).map((n) => emu.rolePolicy(roleName, n));
    const clocks = { broker: a.broker.deps.clock.now(), aws: emu.now(), wall: Date.now() };
    throw new Error(`the session issued after the kill answered ${who}: ${JSON.stringify({ clocks, policies })}`);
  }
  expect((await a.broker.deps.leases.get(after.leaseId))?.status).toBe('active');
}, 60_000);
