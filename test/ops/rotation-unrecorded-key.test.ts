import { Writable } from 'node:stream';
import { afterEach, describe, expect, test } from '@jest/globals';
import { pino } from 'pino';
import type { AwsEmulator, EmulatedUser } from '../emulators/aws/index.ts';
import { awsSettingsSchema } from '../../src/providers/aws/config.ts';
import { createWindow } from '../../src/providers/aws/unrecorded-keys.ts';
import { ADMIN, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { ROTATABLE, awsForBroker, callerIdentityAs, createAccessKey, sealAwsSecret } from '../providers/aws/helpers.ts';

/**
 * The rotation recorded {old} before CreateAccessKey, but the new key's id only reached the intent with
 * IAM's answer. An answer lost (a reset, a timeout, a 5xx after IAM made the key) left an ACTIVE key no
 * intent named: valid for good, and with IAM's two keys per user every later rotation failed on
 * LimitExceeded until someone deleted it. The intent now records when the key was asked for, and the
 * next rotation retires the key created then; an operator's own key is never touched.
 */

let emu: AwsEmulator;
let user: EmulatedUser;
let t: TestBroker;
let logs: string[];

async function start(): Promise<void> {
  const aws = await awsForBroker();
  emu = aws.emu;
  user = aws.user;
  logs = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      logs.push(String(chunk));
      done();
    },
  });
  t = await startTestBroker('rotation-unrecorded', {
    config: {
      providers: { aws: { ...aws.providers.aws, ...ROTATABLE } },
      roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
      rotation: { switchGraceMs: 100 },
    },
    broker: { logger: pino({ level: 'warn' }, sink) },
  });
}
afterEach(async () => {
  await t?.close();
  await emu?.stop();
});

const rotate = () => call(t.url, 'POST', '/v1/admin/rotate', t.as(ADMIN), { target: 'aws' });
const intent = async () => {
  const raw = await t.broker.deps.redis.get(t.broker.deps.keys.rotationIntent('aws'));
  return raw ? (JSON.parse(raw) as Record<string, unknown>) : null;
};
const original = () => ({ accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey });
/** How far to move IAM's clock to stand `past` ms after the end of the recorded CreateAccessKey's window. */
async function untilWindowEnd(past: number): Promise<number> {
  const { creating } = (await intent()) as { creating: number };
  return createWindow(awsSettingsSchema.parse(t.config.providers.aws), creating).to + past - emu.now();
}

describe('an access key IAM made while its answer was lost', () => {
  test('the failed rotation keeps the intent, and the next one retires the key and succeeds', async () => {
    await start();
    // IAM makes the key and the connection resets; the retry is refused (two keys already): LimitExceeded.
    emu.holdAnswer('CreateAccessKey', 0, { lose: true });
    const first = await rotate();
    expect({ status: first.status, code: first.body.code }).toEqual({ status: 502, code: 'rotation_failed' });
    expect(emu.requests('CreateAccessKey').map((r) => r.code)).toEqual(['ConnectionReset', 'LimitExceeded']);
    const keys = emu.accessKeys(user.userName);
    expect(keys).toHaveLength(2);
    const lost = keys.find((k) => k.accessKeyId !== user.accessKeyId)!;
    expect(lost.status).toBe('Active');
    // Before: the intent was cleared on any failed create, and the lost key was known to nobody.
    expect(await intent()).toEqual({ old: user.accessKeyId, creating: expect.any(Number), existing: [user.accessKeyId] });

    // Before: 502 again (LimitExceeded), and so every rotation after it.
    const second = await rotate();
    expect(second.status).toBe(202);
    expect(emu.accessKeys(user.userName)).toEqual([{ accessKeyId: second.body.accessKeyId, status: 'Active' }]);
    expect(emu.requests('UpdateAccessKey').find((r) => r.params.AccessKeyId === lost.accessKeyId)).toMatchObject({
      status: 200,
      params: { Status: 'Inactive' },
    });
    expect(emu.requests('DeleteAccessKey').find((r) => r.params.AccessKeyId === lost.accessKeyId)).toMatchObject({ status: 200 });
    expect(await callerIdentityAs(emu.url, original())).toBe('InvalidClientTokenId');
    expect(await intent()).toBeNull();
    expect(logs.some((l) => l.includes(lost.accessKeyId) && l.includes('never recorded'))).toBe(true);
  }, 30_000);
});

describe("an operator's own key is never taken for the lost one", () => {
  test('a key made seconds before the interrupted rotation (listed before its call) stays active', async () => {
    await start();
    const operator = await createAccessKey(emu, user);
    // CreateAccessKey answers 500 (IAM may or may not have made a key), the retry is refused: LimitExceeded.
    emu.failNext(1, { action: 'CreateAccessKey' });
    expect((await rotate()).status).toBe(502);
    const kept = await intent();
    expect(kept).toMatchObject({ old: user.accessKeyId, creating: expect.any(Number) });
    expect(kept!.existing).toEqual(expect.arrayContaining([user.accessKeyId, operator.accessKeyId]));

    // The operator's key was made within the window's clock allowance; it existed before the call, so it is not the lost key.
    const next = await rotate();
    expect({ status: next.status, code: next.body.code }).toEqual({ status: 502, code: 'rotation_failed' });
    expect(await callerIdentityAs(emu.url, operator)).toBe('ok');
    expect(emu.accessKeys(user.userName)).toEqual(
      expect.arrayContaining([
        { accessKeyId: user.accessKeyId, status: 'Active' },
        { accessKeyId: operator.accessKeyId, status: 'Active' },
      ]),
    );
    expect(emu.requests('UpdateAccessKey')).toEqual([]);
    // IAM's limit is a refusal: nothing was made, the intent is cleared.
    expect(await intent()).toBeNull();
  }, 30_000);

  test('a key made just after the window closed stays active; the rotation fails on the limit and logs the key', async () => {
    await start();
    emu.failNext(3, { action: 'CreateAccessKey' });
    expect((await rotate()).status).toBe(502);
    // Two seconds past the window's end by IAM's clock (CreateDate has whole seconds), an operator makes the user's second key.
    emu.advanceTime(await untilWindowEnd(2000));
    const operator = await createAccessKey(emu, user);

    const next = await rotate();
    expect({ status: next.status, code: next.body.code }).toEqual({ status: 502, code: 'rotation_failed' });
    expect(await callerIdentityAs(emu.url, operator)).toBe('ok');
    expect(emu.requests('UpdateAccessKey')).toEqual([]);
    expect(emu.requests('CreateAccessKey').at(-1)).toMatchObject({ code: 'LimitExceeded' });
    expect(logs.some((l) => l.includes(operator.accessKeyId) && l.includes('left alone'))).toBe(true);
  }, 30_000);

  test("a key made inside the window, even late in it, is taken for the rotation's (the documented limit)", async () => {
    await start();
    emu.failNext(3, { action: 'CreateAccessKey' });
    expect((await rotate()).status).toBe(502);
    // Three seconds before the window's end: as late as a last attempt could have made it (or an operator, then).
    emu.advanceTime(await untilWindowEnd(-3000));
    const late = await createAccessKey(emu, user);
    const next = await rotate();
    expect(next.status).toBe(202);
    expect(await callerIdentityAs(emu.url, late)).toBe('InvalidClientTokenId');
    expect(emu.accessKeys(user.userName)).toEqual([{ accessKeyId: next.body.accessKeyId, status: 'Active' }]);
  }, 30_000);
});

describe('a clear refusal of CreateAccessKey made nothing', () => {
  test.each([
    ['LimitExceeded', 409],
    ['AccessDenied', 403],
  ])(
    '%s clears the intent, as before',
    async (code, status) => {
      await start();
      emu.failNext(1, { action: 'CreateAccessKey', code, status });
      const r = await rotate();
      expect({ status: r.status, code: r.body.code }).toEqual({ status: 502, code: 'rotation_failed' });
      expect(emu.requests('CreateAccessKey')).toHaveLength(1);
      expect(await intent()).toBeNull();
      expect((await rotate()).status).toBe(202);
      expect(emu.requests('ListAccessKeys')).toHaveLength(2); // one per rotation: nothing looked for
    },
    30_000,
  );
});

describe('a recorded leftover that cannot be deactivated', () => {
  test('stops the rotation before its intent replaces the one naming the key', async () => {
    await start();
    // An interrupted rotation left {old: K0, new: K1}, with K1 handed out (sealed in Redis).
    const k1 = await createAccessKey(emu, user);
    await sealAwsSecret(t, k1);
    const left = { old: user.accessKeyId, new: k1.accessKeyId };
    await t.broker.deps.redis.set(t.broker.deps.keys.rotationIntent('aws'), JSON.stringify(left));
    emu.failNext(3, { action: 'UpdateAccessKey' });
    const creates = emu.requests('CreateAccessKey').length;
    const r = await rotate();
    expect({ status: r.status, code: r.body.code }).toEqual({ status: 502, code: 'rotation_failed' });
    // Before: the rotation went on, its own intent replaced this one, IAM refused a third key and the intent
    // was cleared: K0 stayed active with nobody recording it.
    expect(await intent()).toEqual(left);
    expect(emu.requests('CreateAccessKey')).toHaveLength(creates);
    const next = await rotate();
    expect(next.status).toBe(202);
    expect(await callerIdentityAs(emu.url, original())).toBe('InvalidClientTokenId');
    expect(emu.accessKeys(user.userName)).toEqual([{ accessKeyId: next.body.accessKeyId, status: 'Active' }]);
  }, 30_000);
});
