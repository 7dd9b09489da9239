import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { AwsEmulator, EmulatedUser } from '../emulators/aws/index.ts';
import { ADMIN, AGENT, ORCH, call, startSibling, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { ROTATABLE, awsForBroker, createAccessKey, sealAwsSecret } from '../providers/aws/helpers.ts';

/**
 * What a rotation killed between sealing the new key into Redis and announcing it leaves behind: Redis
 * names K1, every running instance still uses K0, and the intent says {old: K0, new: K1}. Found in review
 * of the interrupted-rotation fix: the next rotation retired K0 before any instance had been told of K1,
 * so the instances still on K0 answered 502 and could not revoke until a later rotation succeeded.
 */
let emu: AwsEmulator;
let user: EmulatedUser;
let a: TestBroker;
let b: TestBroker;
const agentId = `spiffe://dev.local${AGENT}`;

beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  user = aws.user;
  a = await startTestBroker('rotation-leftover', {
    config: {
      providers: { aws: { ...aws.providers.aws, ...ROTATABLE } },
      roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
      rotation: { switchGraceMs: 300 },
    },
  });
  b = await startSibling(a);
});
afterAll(async () => {
  await b?.close();
  await a?.close();
  await emu?.stop();
});

test('the next rotation tells every instance of the key Redis names before retiring the one they use', async () => {
  const { redis, keys } = a.broker.deps;
  const k1 = await createAccessKey(emu, user);
  await sealAwsSecret(a, k1);
  await redis.set(keys.rotationIntent('aws'), JSON.stringify({ old: user.accessKeyId, new: k1.accessKeyId }));
  const open = await call(a.url, 'POST', '/v1/tasks', a.as(ORCH), {
    taskId: 'left-1',
    agent: agentId,
    tenant: 'acme',
    purpose: 'leftover',
    ttlSeconds: 7200,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
  });
  expect(open.status).toBe(201);
  // The next rotation goes through B, and IAM refuses to create a key (a limit, throttling).
  emu.failNext(5, { action: 'CreateAccessKey' });
  const rot = await call(b.url, 'POST', '/v1/admin/rotate', b.as(ADMIN), { target: 'aws' });
  expect(rot.status).toBe(502);
  // Before: A was still on K0, which B had deleted: 502 upstream_auth_failed.
  const viaA = await call(a.url, 'POST', '/v1/credentials', a.as(AGENT), { taskId: 'left-1', role: 'reports-bucket' });
  expect({ status: viaA.status, code: viaA.body.code }).toMatchObject({ status: 201 });
  expect((await call(b.url, 'POST', '/v1/credentials', b.as(AGENT), { taskId: 'left-1', role: 'reports-bucket' })).status).toBe(201);
}, 60_000);
