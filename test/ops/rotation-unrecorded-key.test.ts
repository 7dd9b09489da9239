import { Writable } from 'node:stream';
import { IAMClient, UpdateAccessKeyCommand } from '@aws-sdk/client-iam';
import { afterEach, describe, expect, test } from '@jest/globals';
import { pino } from 'pino';
import type { AwsEmulator, EmulatedUser } from '../emulators/aws/index.ts';
import { createWindow, LISTING_LAG_MS } from '../../src/providers/aws/unrecorded-keys.ts';
import { ADMIN, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { ROTATABLE, awsForBroker, callerIdentityAs, createAccessKey, sealAwsSecret } from '../providers/aws/helpers.ts';

/**
 * The rotation recorded {old} before CreateAccessKey, but the new key's id only reached the intent with
 * IAM's answer. An answer lost (a reset, a timeout, a 5xx after IAM made the key) left an ACTIVE key no
 * intent named: valid for good, and with IAM's two keys per user every later rotation failed on
 * LimitExceeded until someone deleted it. The intent now records when the key was asked for and until
 * when; once IAM can be trusted to list the key, the next rotation deactivates it and the one after
 * deletes it. An operator's own key outside that window is never touched.
 */

let emu: AwsEmulator;
let user: EmulatedUser;
let t: TestBroker;
let logs: string[];

async function start(): Promise<void> {
  const aws = await awsForBroker();
  emu = aws.emu;
  user = aws.user;
  iamBehind = 0;
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
const intentKey = () => t.broker.deps.keys.rotationIntent('aws');
type Intent = { old: string; creating: number; until: number; existing: string[] };
const intent = async () => {
  const raw = await t.broker.deps.redis.get(intentKey());
  return raw ? (JSON.parse(raw) as Intent) : null;
};
const original = () => ({ accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey });

/**
 * Time travel without touching the broker's clock: the interrupted rotation runs while IAM's clock is AGO
 * behind (its keys' CreateDates), then `longAgo()` sets IAM's clock right and moves the intent's times back
 * as far. Both clocks then agree that the rotation ran AGO ago: its window, and LISTING_LAG_MS after it, are over.
 */
const AGO = 120_000;
let iamBehind = 0;
function moveIamClock(ms: number): void {
  emu.advanceTime(ms);
  iamBehind -= ms;
}
async function longAgo(): Promise<void> {
  moveIamClock(iamBehind);
  const i = (await intent())!;
  await t.broker.deps.redis.set(intentKey(), JSON.stringify({ ...i, creating: i.creating - AGO, until: i.until - AGO }));
}
/** How far to move IAM's clock (running AGO behind) to stand `past` ms after the end of the recorded window. */
async function untilWindowEnd(past: number): Promise<number> {
  return createWindow((await intent())!).to - AGO + past - emu.now();
}
async function setStatus(keys: { accessKeyId: string; secretAccessKey: string }, Status: 'Active' | 'Inactive'): Promise<void> {
  const iam = new IAMClient({ region: 'us-east-1', endpoint: emu.url, credentials: original() });
  await iam.send(new UpdateAccessKeyCommand({ UserName: user.userName, AccessKeyId: keys.accessKeyId, Status }));
  iam.destroy();
}

describe('an access key IAM made while its answer was lost', () => {
  test('the failed rotation keeps the intent with its window; the next deactivates the key, the one after deletes it and rotates', async () => {
    await start();
    moveIamClock(-AGO);
    // IAM makes the key and the connection resets; the retry is refused (two keys already): LimitExceeded.
    emu.holdAnswer('CreateAccessKey', 0, { lose: true });
    const first = await rotate();
    expect({ status: first.status, code: first.body.code }).toEqual({ status: 502, code: 'rotation_failed' });
    expect(emu.requests('CreateAccessKey').map((r) => r.code)).toEqual(['ConnectionReset', 'LimitExceeded']);
    const lost = emu.accessKeys(user.userName).find((k) => k.accessKeyId !== user.accessKeyId)!;
    expect(lost.status).toBe('Active');
    // Before: the intent was cleared on any failed create, and the lost key was known to nobody.
    const kept = (await intent())!;
    expect(kept).toEqual({ old: user.accessKeyId, creating: expect.any(Number), until: expect.any(Number), existing: [user.accessKeyId] });
    // 2 rounds x (3 attempts x 2 s + backoffs 5 + 10 ms) + 2 s switch wait, fixed when the call was sent.
    expect(kept.until - kept.creating).toBe(14_030);
    await longAgo();

    // Deactivated, not deleted: with it the user has two keys, so this rotation stops.
    const second = await rotate();
    expect({ status: second.status, code: second.body.code }).toEqual({ status: 502, code: 'rotation_failed' });
    expect(second.body.detail).toContain(lost.accessKeyId);
    expect(emu.accessKeys(user.userName)).toEqual([
      { accessKeyId: user.accessKeyId, status: 'Active' },
      { accessKeyId: lost.accessKeyId, status: 'Inactive' },
    ]);
    expect(emu.requests('DeleteAccessKey')).toEqual([]);
    expect(await intent()).toBeNull();
    expect(logs.some((l) => l.includes(lost.accessKeyId) && l.includes('never recorded'))).toBe(true);

    // Before: 502 again (LimitExceeded), and so every rotation after it.
    const third = await rotate();
    expect(third.status).toBe(202);
    expect(emu.accessKeys(user.userName)).toEqual([{ accessKeyId: third.body.accessKeyId, status: 'Active' }]);
    expect(emu.requests('DeleteAccessKey').find((r) => r.params.AccessKeyId === lost.accessKeyId)).toMatchObject({ status: 200 });
    expect(await callerIdentityAs(emu.url, original())).toBe('InvalidClientTokenId');
    expect(await intent()).toBeNull();
  }, 30_000);

  test('a rotation before the window closed (+ the listing lag) answers 409 with Retry-After and keeps the intent; a key made late in the window is found after', async () => {
    await start();
    moveIamClock(-AGO);
    // Every CreateAccessKey attempt answers 500: IAM may have made a key.
    emu.failNext(3, { action: 'CreateAccessKey' });
    expect((await rotate()).status).toBe(502);
    const kept = (await intent())!;
    const lists = emu.requests('ListAccessKeys').length;

    // Before: this rotation listed the keys at once (R1's key, made late or listed late, not there yet), named
    // it among those existing before its own call when it showed up, and cleared the intent on LimitExceeded.
    const early = await rotate();
    expect({ status: early.status, code: early.body.code }).toEqual({ status: 409, code: 'rotation_in_progress' });
    const retryAfter = Number(early.headers.get('retry-after'));
    const waitMs = createWindow(kept).to + LISTING_LAG_MS - Date.now();
    expect(retryAfter).toBeGreaterThanOrEqual(Math.floor(waitMs / 1000));
    expect(retryAfter).toBeLessThanOrEqual(Math.ceil(waitMs / 1000) + 1);
    expect(emu.requests('ListAccessKeys')).toHaveLength(lists);
    expect(emu.requests('CreateAccessKey')).toHaveLength(3);
    expect(await intent()).toEqual(kept);

    // R1's key shows up now (its last attempt carried out late, or IAM lists it late): inside R1's window.
    const late = await createAccessKey(emu, user);
    await longAgo();
    const next = await rotate();
    expect({ status: next.status, code: next.body.code }).toEqual({ status: 502, code: 'rotation_failed' });
    expect(await callerIdentityAs(emu.url, late)).toBe('InvalidClientTokenId');
    const last = await rotate();
    expect(last.status).toBe(202);
    expect(emu.accessKeys(user.userName)).toEqual([{ accessKeyId: last.body.accessKeyId, status: 'Active' }]);
  }, 30_000);

  test('the window searched is the one recorded when the call was sent, not one from the settings of the rotation that looks', async () => {
    await start();
    moveIamClock(-AGO);
    emu.failNext(3, { action: 'CreateAccessKey' });
    expect((await rotate()).status).toBe(502);
    // As a broker with longer timeouts recorded it (until: 52 s after creating); this one's settings give 14 s.
    const kept = (await intent())!;
    await t.broker.deps.redis.set(intentKey(), JSON.stringify({ ...kept, until: kept.creating + 52_000 }));
    moveIamClock(kept.creating + 40_000 - AGO - emu.now());
    const made = await createAccessKey(emu, user); // 40 s into the call: its last attempts
    await longAgo();
    // Before: the window was 14 s + 5 s from today's settings, the key was left alone, and IAM refused a third.
    const next = await rotate();
    expect(next.body.detail).toContain(made.accessKeyId);
    expect(await callerIdentityAs(emu.url, made)).toBe('InvalidClientTokenId');
  }, 30_000);
});

describe("an operator's own key is never taken for the lost one", () => {
  test('a key made seconds before the interrupted rotation (listed before its call) stays active', async () => {
    await start();
    moveIamClock(-AGO);
    const operator = await createAccessKey(emu, user);
    // CreateAccessKey answers 500 (IAM may or may not have made a key), the retry is refused: LimitExceeded.
    emu.failNext(1, { action: 'CreateAccessKey' });
    expect((await rotate()).status).toBe(502);
    const kept = await intent();
    expect(kept!.existing).toEqual(expect.arrayContaining([user.accessKeyId, operator.accessKeyId]));
    await longAgo();

    // The operator's key was made within the window's clock allowance; it existed before the call, so it is not the lost key.
    const next = await rotate();
    expect({ status: next.status, code: next.body.code }).toEqual({ status: 502, code: 'rotation_failed' });
    expect(await callerIdentityAs(emu.url, operator)).toBe('ok');
    expect(emu.requests('UpdateAccessKey')).toEqual([]);
    expect(emu.requests('CreateAccessKey').at(-1)).toMatchObject({ code: 'LimitExceeded' });
    // IAM's limit is a refusal: nothing was made, the intent is cleared.
    expect(await intent()).toBeNull();
  }, 30_000);

  test('a key made just after the window closed stays active; the rotation fails on the limit and logs the key', async () => {
    await start();
    moveIamClock(-AGO);
    emu.failNext(3, { action: 'CreateAccessKey' });
    expect((await rotate()).status).toBe(502);
    // Two seconds past the window's end by IAM's clock (CreateDate has whole seconds), an operator makes the user's second key.
    moveIamClock(await untilWindowEnd(2000));
    const operator = await createAccessKey(emu, user);
    await longAgo();

    const next = await rotate();
    expect({ status: next.status, code: next.body.code }).toEqual({ status: 502, code: 'rotation_failed' });
    expect(await callerIdentityAs(emu.url, operator)).toBe('ok');
    expect(emu.requests('UpdateAccessKey')).toEqual([]);
    expect(emu.requests('CreateAccessKey').at(-1)).toMatchObject({ code: 'LimitExceeded' });
    expect(logs.some((l) => l.includes(operator.accessKeyId) && l.includes('left alone'))).toBe(true);
  }, 30_000);

  test('a key made inside the window is taken for the lost one (the documented limit), but only deactivated: reactivated, it stays', async () => {
    await start();
    moveIamClock(-AGO);
    emu.failNext(3, { action: 'CreateAccessKey' });
    expect((await rotate()).status).toBe(502);
    // Three seconds before the window's end: as late as a last attempt could have made it (or an operator, then).
    moveIamClock(await untilWindowEnd(-3000));
    const operator = await createAccessKey(emu, user);
    await longAgo();
    const next = await rotate();
    expect(next.status).toBe(502);
    expect(await callerIdentityAs(emu.url, operator)).toBe('InvalidClientTokenId');
    // Before: deleted at once, for good.
    expect(emu.accessKeys(user.userName)).toContainEqual({ accessKeyId: operator.accessKeyId, status: 'Inactive' });

    // The operator reactivates it before the next rotation, which then leaves it alone (and fails on IAM's limit).
    await setStatus(operator, 'Active');
    expect(await callerIdentityAs(emu.url, operator)).toBe('ok');
    expect((await rotate()).status).toBe(502);
    expect(await callerIdentityAs(emu.url, operator)).toBe('ok');
    expect(emu.requests('DeleteAccessKey')).toEqual([]);
  }, 30_000);
});

describe('a rotation needs iam:ListAccessKeys', () => {
  test('without it, nothing is created (502 naming it): no answer can be lost unchecked; once granted, it rotates', async () => {
    await start();
    emu.failNext(2, { action: 'ListAccessKeys', code: 'AccessDenied', status: 403 });
    for (let i = 0; i < 2; i++) {
      const r = await rotate();
      expect({ status: r.status, code: r.body.code }).toEqual({ status: 502, code: 'rotation_failed' });
      expect(r.body.detail).toContain('iam:ListAccessKeys');
    }
    // Before: the rotation went on without the listing and its intent had nothing to tell an operator's key by.
    expect(emu.requests('CreateAccessKey')).toEqual([]);
    expect(await intent()).toBeNull();
    expect((await rotate()).status).toBe(202);
  }, 30_000);

  test('a lost answer, then the permission gone: every rotation says so and keeps the intent; granted again, the key is found', async () => {
    await start();
    moveIamClock(-AGO);
    emu.holdAnswer('CreateAccessKey', 0, { lose: true });
    expect((await rotate()).status).toBe(502);
    const lost = emu.accessKeys(user.userName).find((k) => k.accessKeyId !== user.accessKeyId)!;
    await longAgo();
    const kept = await intent();
    emu.failNext(2, { action: 'ListAccessKeys', code: 'AccessDenied', status: 403 });
    for (let i = 0; i < 2; i++) {
      const r = await rotate();
      expect(r.body.detail).toContain('iam:ListAccessKeys');
      expect(await intent()).toEqual(kept);
    }
    expect((await rotate()).body.detail).toContain(lost.accessKeyId);
    expect((await rotate()).status).toBe(202);
  }, 30_000);

  test("a listing that fails before the call does not let the next rotation take an operator's key made just before", async () => {
    await start();
    const operator = await createAccessKey(emu, user);
    const creates = emu.requests('CreateAccessKey').length;
    emu.failNext(3, { action: 'ListAccessKeys' });
    emu.failNext(1, { action: 'CreateAccessKey' });
    const r = await rotate();
    expect(r.body.detail).toContain('iam:ListAccessKeys');
    // Before: CreateAccessKey was sent (500, then LimitExceeded), its intent kept with no `existing`, and the
    // next rotation deleted the operator's key made seconds before as the lost one.
    expect(emu.requests('CreateAccessKey')).toHaveLength(creates);
    expect(await intent()).toBeNull();
    await rotate();
    expect(await callerIdentityAs(emu.url, operator)).toBe('ok');
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
    await t.broker.deps.redis.set(intentKey(), JSON.stringify(left));
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
