import { afterAll, beforeAll, expect, jest, test } from '@jest/globals';
import type { AwsEmulator, EmulatedUser } from '../emulators/aws/index.ts';
import { auditRecords, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';
import { ROTATABLE, awsForBroker, callerIdentityAs, createAccessKey } from '../providers/aws/helpers.ts';

/**
 * src/ops/rotation-resume.ts: a resumed rotation that fails is tried again after a doubling wait (here one
 * second). The wait was dated with Date.now(): the worker's wall clock stepped back an hour (NTP setting a
 * fast clock right) right after a failed attempt held off the next one for that hour, and with it the
 * retirement of the live IAM key the interrupted rotation left. The wait is now a monotonic duration.
 */
const HOUR = 3_600_000;
let emu: AwsEmulator;
let user: EmulatedUser;
let t: TestBroker;

beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  user = aws.user;
  t = await startTestBroker('rotation-resume-step', {
    config: {
      providers: { aws: { ...aws.providers.aws, ...ROTATABLE } },
      roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
      rotation: { switchGraceMs: 200, resumeInterruptedSeconds: 1 },
    },
  });
});
afterAll(async () => {
  jest.restoreAllMocks();
  await t?.close();
  await emu?.stop();
});

test('a failed resume is tried again after its wait, the wall clock stepped back an hour meanwhile', async () => {
  const { redis, keys } = t.broker.deps;
  const left = await createAccessKey(emu, user);
  emu.failNext(1, { action: 'ListAccessKeys', status: 400, code: 'ServiceFailure' });
  await redis.set(keys.rotationIntent('aws'), JSON.stringify({ old: user.accessKeyId, new: left.accessKeyId }));
  const rotations = async () => (await auditRecords(redis, keys)).filter((r) => r.action === 'rotate');
  // The first attempt fails; then the clock steps back, before the next attempt is due.
  await waitFor(async () => (await rotations()).length > 0, 20_000, 10);
  const realNow = Date.now.bind(Date);
  jest.spyOn(Date, 'now').mockImplementation(() => realNow() - HOUR);
  try {
    await waitFor(async () => (await redis.exists(keys.rotationIntent('aws'))) === 0, 20_000, 100);
  } finally {
    jest.restoreAllMocks();
  }
  expect(await callerIdentityAs(emu.url, left)).not.toBe('ok');
  expect((await rotations()).map((r) => r.decision)).toEqual(['error', 'ok']);
}, 60_000);
