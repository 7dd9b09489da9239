import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { AwsEmulator, EmulatedUser } from '../emulators/aws/index.ts';
import { AGENT, ORCH, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';
import { ROTATABLE, awsForBroker, createAccessKey, sealAwsSecret } from '../providers/aws/helpers.ts';

/**
 * An instance that missed a rotation's announcement (its subscriber cut off while another instance
 * rotated) ran on the retired key until a later announcement, if any came. Found in review of the lock
 * fencing: nothing read the distributed secret again. It is now re-read every 10 s.
 */
let emu: AwsEmulator;
let user: EmulatedUser;
let a: TestBroker;
beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  user = aws.user;
  a = await startTestBroker('secret-resync', {
    config: {
      providers: { aws: { ...aws.providers.aws, ...ROTATABLE } },
      roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
    },
  });
});
afterAll(async () => {
  await a?.close();
  await emu?.stop();
});

test('a secret distributed without an announcement this instance heard is picked up within seconds', async () => {
  // What another instance's rotation leaves in Redis; its announcement never reached this one.
  const k1 = await createAccessKey(emu, user);
  await sealAwsSecret(a, k1);
  const open = await call(a.url, 'POST', '/v1/tasks', a.as(ORCH), {
    taskId: 'resync-1',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'resync',
    ttlSeconds: 3600,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
  });
  expect(open.status).toBe(201);
  const signer = () => emu.requests('AssumeRole').at(-1)?.accessKeyId;
  // Before: on the configured key for good.
  await waitFor(
    async () => {
      const r = await call(a.url, 'POST', '/v1/credentials', a.as(AGENT), { taskId: 'resync-1', role: 'reports-bucket' });
      return r.status === 201 && signer() === k1.accessKeyId;
    },
    15_000,
    1000,
  );
}, 30_000);
