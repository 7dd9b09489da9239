import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { CreateAccessKeyCommand, IAMClient } from '@aws-sdk/client-iam';
import { readSecret } from '../../src/config/load.ts';
import { SealedSecrets } from '../../src/ops/sealed-secrets.ts';
import { Kek } from '../../src/signing/kek.ts';
import type { AwsEmulator, EmulatedUser } from '../emulators/aws/index.ts';
import { AGENT, ORCH, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';
import { ROTATABLE, awsForBroker } from '../providers/aws/helpers.ts';

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
  const iam = new IAMClient({
    region: 'us-east-1',
    endpoint: emu.url,
    credentials: { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
  });
  const k1 = (await iam.send(new CreateAccessKeyCommand({ UserName: user.userName }))).AccessKey!;
  iam.destroy();
  const { redis, keys } = a.broker.deps;
  const kek = new Kek(readSecret((a.config as unknown as { secrets: { kek: string } }).secrets.kek, 'secrets.kek'));
  // What another instance's rotation leaves in Redis; its announcement never reached this one.
  await new SealedSecrets(redis, keys, kek).write('aws', { accessKeyId: k1.AccessKeyId!, secretAccessKey: k1.SecretAccessKey! });
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
      return r.status === 201 && signer() === k1.AccessKeyId;
    },
    15_000,
    1000,
  );
}, 30_000);
