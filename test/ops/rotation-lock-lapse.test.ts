import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { AwsEmulator, EmulatedUser } from '../emulators/aws/index.ts';
import { ADMIN, AGENT, ORCH, call, startSibling, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';
import { ROTATABLE, awsForBroker } from '../providers/aws/helpers.ts';

/**
 * A rotation whose lock lapsed (its instance cut off from Redis, or stalled, for longer than the lock's
 * 30 s) while a second rotation, through another instance, took the lock and treated the first one's
 * intent as a dead rotation's leftovers. Found in review: both went on, each retiring what the other
 * had made or handed out, and every instance ended on a deleted key.
 */
let emu: AwsEmulator;
let user: EmulatedUser;
let a: TestBroker;
let b: TestBroker;

beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  user = aws.user;
  a = await startTestBroker('rotation-lapse', {
    config: {
      providers: { aws: { ...aws.providers.aws, ...ROTATABLE } },
      roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
      rotation: { switchGraceMs: 1500 },
    },
  });
  b = await startSibling(a);
});
afterAll(async () => {
  await b?.close();
  await a?.close();
  await emu?.stop();
});

test('a rotation that lost its lock stops before its next step, and every instance ends on a working key', async () => {
  const { redis, keys } = a.broker.deps;
  const open = await call(a.url, 'POST', '/v1/tasks', a.as(ORCH), {
    taskId: 'lapse-1',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'lapse',
    ttlSeconds: 7200,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
  });
  expect(open.status).toBe(201);
  // A's check of its new key takes 2 s (IAM propagating it); meanwhile its lock lapses.
  emu.holdAnswer('GetCallerIdentity', 2000);
  const created = emu.requests('CreateAccessKey').length;
  const viaA = call(a.url, 'POST', '/v1/admin/rotate', a.as(ADMIN), { target: 'aws' });
  await waitFor(async () => emu.requests('CreateAccessKey').length > created, 5000);
  // Until A has recorded the new key's id, its intent says a create may have landed unanswered, and B rightly
  // waits for IAM to list it (409 with Retry-After): on a loaded machine that answer can be late.
  await waitFor(async () => JSON.parse((await redis.get(keys.rotationIntent('aws'))) ?? '{}').new, 10_000);
  await redis.del(keys.lock('rotate:aws'));
  const viaB = await call(b.url, 'POST', '/v1/admin/rotate', b.as(ADMIN), { target: 'aws' });
  const first = await viaA;
  expect(viaB.status).toBe(202);
  // A learnt it no longer held the lock and stopped: B's rotation is the one that happened.
  expect({ status: first.status, code: first.body.code }).toEqual({ status: 409, code: 'rotation_in_progress' });
  // Before: A answered 502 after undoing its rotation on top of B's, and both instances were left on a deleted key.
  for (const x of [a, b]) {
    const r = await call(x.url, 'POST', '/v1/credentials', x.as(AGENT), { taskId: 'lapse-1', role: 'reports-bucket' });
    expect({ status: r.status, code: r.body.code }).toMatchObject({ status: 201 });
  }
  // One key left, the one B made; A's new key retired.
  await waitFor(async () => emu.accessKeys(user.userName).length === 1, 5000);
}, 60_000);

test('a key made while the lock lapsed, whose id no intent holds, is deleted by the rotation that made it', async () => {
  const { redis, keys } = a.broker.deps;
  // IAM carries out A's CreateAccessKey but answers late; meanwhile A's lock lapses and B rotates.
  emu.holdAnswer('CreateAccessKey', 1500);
  const viaA = call(a.url, 'POST', '/v1/admin/rotate', a.as(ADMIN), { target: 'aws' });
  await waitFor(async () => emu.accessKeys(user.userName).length === 2, 5000);
  await redis.del(keys.lock('rotate:aws'));
  // B finds A's intent with a CreateAccessKey still in its window: it does nothing and says when to come back.
  const viaB = await call(b.url, 'POST', '/v1/admin/rotate', b.as(ADMIN), { target: 'aws' });
  expect({ status: viaB.status, code: viaB.body.code }).toEqual({ status: 409, code: 'rotation_in_progress' });
  expect(Number(viaB.headers.get('retry-after'))).toBeGreaterThan(0);
  const first = await viaA;
  expect({ status: first.status, code: first.body.code }).toEqual({ status: 409, code: 'rotation_in_progress' });
  // Before: A left its new key alone for the lock holder, which had never heard of it: two active keys for
  // good, and every later rotation failed on IAM's two-key limit.
  expect(emu.accessKeys(user.userName)).toHaveLength(1);
  // A's intent (its window; A could not clear it) stays until a rotation may check IAM: moved back 2 minutes here.
  const kept = JSON.parse((await redis.get(keys.rotationIntent('aws')))!);
  await redis.set(keys.rotationIntent('aws'), JSON.stringify({ ...kept, creating: kept.creating - 120_000, until: kept.until - 120_000 }));
  expect((await call(a.url, 'POST', '/v1/admin/rotate', a.as(ADMIN), { target: 'aws' })).status).toBe(202);
  for (const x of [a, b]) {
    const r = await call(x.url, 'POST', '/v1/credentials', x.as(AGENT), { taskId: 'lapse-1', role: 'reports-bucket' });
    expect(r.status).toBe(201);
  }
}, 60_000);
