import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { AwsEmulator, EmulatedUser } from '../emulators/aws/index.ts';
import { auditRecords, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';
import { ROTATABLE, awsForBroker, callerIdentityAs, createAccessKey } from '../providers/aws/helpers.ts';

/**
 * A rotation that died half-way (its process killed after IAM made the new key, before the key was sealed
 * into Redis) left that key valid and unused until someone rotated again, which might be months away:
 * a live IAM key of the broker's user that nothing uses or watches. Workers now look for an unfinished
 * rotation (its intent in Redis, its lock free) every `rotation.resumeInterruptedSeconds` and rotate that
 * target again, which retires what the dead one left; a resumed rotation that fails is tried again later.
 */
let emu: AwsEmulator;
let user: EmulatedUser;
let t: TestBroker;

beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  user = aws.user;
  t = await startTestBroker('rotation-resume', {
    config: {
      providers: { aws: { ...aws.providers.aws, ...ROTATABLE } },
      roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
      rotation: { switchGraceMs: 200, resumeInterruptedSeconds: 1 },
    },
  });
});
afterAll(async () => {
  await t?.close();
  await emu?.stop();
});

test('a worker finishes a rotation that died half-way: the key it left and the old key are retired', async () => {
  const { redis, keys } = t.broker.deps;
  const original = { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey };
  // What the killed rotation left: IAM made K1, the intent names it, Redis still distributes K0. And the
  // first attempt to finish fails (IAM does not answer ListAccessKeys): it is tried again.
  const left = await createAccessKey(emu, user);
  emu.failNext(1, { action: 'ListAccessKeys', status: 400, code: 'ServiceFailure' });
  await redis.set(keys.rotationIntent('aws'), JSON.stringify({ old: user.accessKeyId, new: left.accessKeyId }));

  await waitFor(async () => (await redis.exists(keys.rotationIntent('aws'))) === 0, 20_000, 100);
  const active = emu.accessKeys(user.userName).filter((k) => k.status === 'Active');
  expect(active).toHaveLength(1);
  expect([original.accessKeyId, left.accessKeyId]).not.toContain(active[0]!.accessKeyId);
  expect(await callerIdentityAs(emu.url, left)).not.toBe('ok');
  expect(await callerIdentityAs(emu.url, original)).not.toBe('ok');

  const rotations = (await auditRecords(redis, keys)).filter((r) => r.action === 'rotate');
  expect(rotations.map((r) => ({ actor: r.actor, decision: r.decision, resumed: r.detail?.resumed }))).toEqual([
    { actor: 'broker', decision: 'error', resumed: true },
    { actor: 'broker', decision: 'ok', resumed: true },
  ]);
}, 60_000);
