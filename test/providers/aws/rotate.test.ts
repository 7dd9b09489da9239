import { afterAll, beforeEach, describe, expect, it } from '@jest/globals';
import { CreateAccessKeyCommand, IAMClient, UpdateAccessKeyCommand } from '@aws-sdk/client-iam';
import { BrokerError } from '../../../src/errors.ts';
import { awsSettingsSchema } from '../../../src/providers/aws/config.ts';
import { createDeadline, createWindow, MAX_CREATE_WINDOW_MS } from '../../../src/providers/aws/unrecorded-keys.ts';
import type { RotationIds, RotationJournal } from '../../../src/providers/types.ts';
import { awsWorld, callerIdentityAs, issueRequest, roleConfig, type AwsWorld } from './helpers.ts';

let w: AwsWorld | undefined;

beforeEach(async () => {
  await w?.close();
  w = await awsWorld('rotate');
});
afterAll(async () => {
  await w?.close();
});

const works = (keys: { accessKeyId: string; secretAccessKey: string }) => callerIdentityAs(w!.emu.url, keys);

describe("rotate the broker's own access key", () => {
  it('creates a new key, switches to it, retires the old one', async () => {
    const { emu, user, provider } = w!;
    const old = { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey };
    const result = await provider.rotate!();
    expect(result).toMatchObject({ target: 'aws', rotated: ['iam-access-key'] });
    const fresh = { accessKeyId: result.secret.accessKeyId!, secretAccessKey: result.secret.secretAccessKey! };
    expect(result.detail).toEqual({ accessKeyId: fresh.accessKeyId });
    expect(JSON.stringify(result.detail)).not.toContain(fresh.secretAccessKey);

    expect(await works(fresh)).toBe('ok');
    expect(await works(old)).toBe('InvalidClientTokenId');
    expect(emu.accessKeys(user.userName)).toEqual([{ accessKeyId: fresh.accessKeyId, status: 'Active' }]);
    expect(emu.requests('UpdateAccessKey').at(-1)!.params).toMatchObject({
      AccessKeyId: old.accessKeyId,
      Status: 'Inactive',
      UserName: user.userName,
    });

    // The provider itself now signs with the new key.
    await provider.issue(issueRequest(roleConfig(w!.role.arn)));
    expect(emu.requests('AssumeRole').at(-1)!.accessKeyId).toBe(fresh.accessKeyId);
  });

  it('waits for the new key to propagate (InvalidClientTokenId at first) before switching', async () => {
    const { emu, provider } = w!;
    emu.setKeyPropagationDelay(3);
    const result = await provider.rotate!();
    expect(await works({ accessKeyId: result.secret.accessKeyId!, secretAccessKey: result.secret.secretAccessKey! })).toBe('ok');
    const verifications = emu.requests('GetCallerIdentity').filter((r) => r.accessKeyId === result.secret.accessKeyId);
    expect(verifications.slice(0, 4).map((r) => r.code ?? r.status)).toEqual([
      'InvalidClientTokenId',
      'InvalidClientTokenId',
      'InvalidClientTokenId',
      200,
    ]);
  });

  it('a failure halfway leaves the old key in use and removes the new one', async () => {
    const { emu, user, provider } = w!;
    const old = { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey };
    emu.failNext(5, { action: 'UpdateAccessKey' });
    let err: unknown;
    try {
      await provider.rotate!();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BrokerError);
    expect(err).toMatchObject({ status: 502, code: 'rotation_failed' });
    expect(await works(old)).toBe('ok');
    expect(emu.accessKeys(user.userName)).toEqual([{ accessKeyId: old.accessKeyId, status: 'Active' }]);
    await provider.issue(issueRequest(roleConfig(w!.role.arn)));
    expect(emu.requests('AssumeRole').at(-1)!.accessKeyId).toBe(old.accessKeyId);
  });

  it('a new key that never starts working is deleted and the old one stays', async () => {
    const { emu, user, provider } = w!;
    emu.setKeyPropagationDelay(50); // longer than rotationVerifyAttempts
    await expect(provider.rotate!()).rejects.toMatchObject({ code: 'rotation_failed' });
    expect(emu.accessKeys(user.userName)).toEqual([{ accessKeyId: user.accessKeyId, status: 'Active' }]);
  });

  it('cleans up an inactive key left by an earlier half-finished rotation first (IAM allows two keys)', async () => {
    const { emu, user, provider } = w!;
    const iam = new IAMClient({
      region: 'us-east-1',
      endpoint: emu.url,
      maxAttempts: 1,
      credentials: { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
    });
    const leftover = (await iam.send(new CreateAccessKeyCommand({ UserName: user.userName }))).AccessKey!;
    await iam.send(new UpdateAccessKeyCommand({ UserName: user.userName, AccessKeyId: leftover.AccessKeyId!, Status: 'Inactive' }));
    iam.destroy();
    const result = await provider.rotate!();
    expect(emu.accessKeys(user.userName)).toEqual([{ accessKeyId: result.secret.accessKeyId, status: 'Active' }]);
  });

  it('another instance switches with useSecret', async () => {
    const { emu, makeProvider, provider } = w!;
    const other = makeProvider();
    const result = await provider.rotate!();
    await expect(other.issue(issueRequest(roleConfig(w!.role.arn)))).rejects.toMatchObject({ code: 'upstream_auth_failed' });
    await other.useSecret!(result.secret);
    await other.issue(issueRequest(roleConfig(w!.role.arn)));
    expect(emu.requests('AssumeRole').at(-1)).toMatchObject({ accessKeyId: result.secret.accessKeyId, status: 200 });
  });

  it("takes a key for a lost CreateAccessKey's only if created from 6 s before the call to 38.2 s after (the defaults, as documented)", () => {
    // 2 rounds x (3 attempts x 5 s timeout + backoffs 0.2 + 0.4 s) + 2 s switch wait = 33.2 s; 1 s CreateDate rounding; 5 s clocks.
    const until = createDeadline(awsSettingsSchema.parse({}), 1_000_000);
    expect(until).toBe(1_000_000 + 33_200);
    expect(createWindow({ creating: 1_000_000, until })).toEqual({ from: 1_000_000 - 6000, to: 1_000_000 + 38_200 });
  });

  it('caps the window at 60 s whatever the timeout settings (3 x 30 s would give 183 s)', () => {
    expect(createDeadline(awsSettingsSchema.parse({ requestTimeoutMs: 30_000 }), 1_000_000)).toBe(1_000_000 + MAX_CREATE_WINDOW_MS);
    expect(MAX_CREATE_WINDOW_MS).toBe(60_000);
  });

  it('sends no CreateAccessKey attempt past the recorded `until`, and keeps the intent', async () => {
    const { emu, user } = w!;
    // The broker's clock jumps to 300 ms before `until` once the intent is recorded (as after a long first attempt).
    let jump = 0;
    const provider = w!.makeProvider({ requestTimeoutMs: 30_000 }, {}, { clock: () => emu.now() + jump });
    const recorded: RotationIds[] = [];
    let cleared = false;
    const journal: RotationJournal = {
      leftover: undefined,
      record: async (ids) => {
        recorded.push(ids);
        if (ids.until !== undefined) jump = ids.until - emu.now() - 300;
      },
      clear: async () => {
        cleared = true;
      },
      fence: async () => {},
    };
    // IAM makes the key and holds its answer for 2.5 s: within the 30-s request timeout, past `until`.
    emu.holdAnswer('CreateAccessKey', 2500);
    // Before: the held answer arrived and the rotation went on, 2 s after the window the intent recorded had closed.
    await expect(provider.rotate!(async () => {}, {}, journal)).rejects.toMatchObject({ code: 'rotation_failed' });
    // Cut off before that answer came (the emulator logs a request as it answers): judged by that order, not a
    // wall-clock bound a loaded machine can break; the 300-ms cut-off and the 2.5-s hold are timers of this process.
    expect(emu.requests('CreateAccessKey')).toHaveLength(0);
    expect(recorded).toEqual([
      { old: user.accessKeyId, creating: expect.any(Number), until: expect.any(Number), existing: [user.accessKeyId] },
    ]);
    expect(recorded[0]!.until! - recorded[0]!.creating!).toBe(MAX_CREATE_WINDOW_MS);
    expect(cleared).toBe(false);
    // The cut-off attempt is logged once its held answer goes out; no other attempt was sent.
    await new Promise((r) => setTimeout(r, 3000));
    expect(emu.requests('CreateAccessKey')).toHaveLength(1);
    expect(emu.accessKeys(user.userName)).toHaveLength(2);
  });

  it('is only offered with long-term keys in the config', () => {
    const { makeProvider } = w!;
    const session = makeProvider({ credentials: { accessKeyId: 'ASIAEXAMPLE', secretAccessKey: 'x', sessionToken: 'tok' } });
    expect(session.rotate).toBeUndefined();
    expect(session.useSecret).toBeUndefined();
  });
});
