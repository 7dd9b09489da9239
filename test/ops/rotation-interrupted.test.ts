import { afterAll, afterEach, describe, expect, test } from '@jest/globals';
import { Redis } from 'ioredis';
import { startAwsEmulator, type AwsEmulator } from '../emulators/aws/index.ts';
import type { VaultEmulator } from '../emulators/vault/index.ts';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ADMIN, REDIS_URL, call, dropPrefix, testRawConfig, uniquePrefix } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { type BrokerProcess, START_TIMEOUT_MS, startBrokerProcess } from '../helpers/process.ts';
import { ROTATABLE, brokerAwsSettings, callerIdentityAs } from '../providers/aws/helpers.ts';
import { vaultClient, vaultWithBroker } from '../providers/vault/helpers.ts';
import { Keys } from '../../src/redis/keys.ts';

/**
 * A broker SIGKILLed in the middle of a rotation (the new secret handed out,
 * the old one not yet retired) used to leave the old secret valid for good:
 * the next rotation did not know it. The rotation intent (identifiers only)
 * is recorded in Redis before each side effect, and the next rotation first
 * retires the recorded secrets nobody uses.
 */

const issuer = new TestIssuer();
const procs: BrokerProcess[] = [];
const prefixes: string[] = [];
let aws: AwsEmulator | undefined;
const emus: AwsEmulator[] = [];
let vault: VaultEmulator | undefined;
const vaults: VaultEmulator[] = [];
// Each test's broker processes end with it: left running to the end of the file (an API and a worker each,
// sweeping every 100 ms), they slowed the later tests' process starts past START_TIMEOUT_MS on a loaded machine.
afterEach(async () => {
  for (const p of procs.splice(0)) await p.kill();
});
afterAll(async () => {
  await aws?.stop();
  for (const e of emus) await e.stop();
  await vault?.stop();
  for (const v of vaults) await v.stop();
  for (const p of prefixes) await dropPrefix(p);
});
// Each test starts two broker processes one after the other, each allowed START_TIMEOUT_MS, and does ~30 s of work.
const TWO_STARTS_MS = 2 * START_TIMEOUT_MS + 30_000;
const as = (path: string) => ({ authorization: `Bearer ${issuer.svid(path)}` });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const rotate = (p: BrokerProcess, target: string) => call(p.url, 'POST', '/v1/admin/rotate', as(ADMIN), { target });

/**
 * The switch grace of the process started after the kill. A rotation waits it out once after handing out the
 * new secret, and once more first when it finds one the killed rotation handed out: at 8 s (what the killed
 * process needs, to be killed inside it) the file spent most of its time there, with no other instance left to
 * switch.
 */
const NEXT_GRACE_MS = 300;

/**
 * One config (one prefix, one KEK) in two files: `first` for the process to kill (`switchGraceMs` as given, or the
 * default), `next` for the one that takes over, with NEXT_GRACE_MS.
 */
function configFiles(prefix: string, overrides: Record<string, unknown>): { first: string; next: string } {
  const raw = testRawConfig(issuer, prefix, overrides);
  const dir = mkdtempSync(join(tmpdir(), 'jit-rot-killed-'));
  const [first, next] = [join(dir, 'first.yaml'), join(dir, 'next.yaml')];
  writeFileSync(first, JSON.stringify(raw));
  writeFileSync(next, JSON.stringify({ ...raw, rotation: { ...(raw.rotation as object), switchGraceMs: NEXT_GRACE_MS } }));
  return { first, next };
}

/**
 * Starts a broker process on `file`, starts a rotation of `target`, and SIGKILLs the process once
 * the new secret was handed out (sealed in Redis), while it waits out the switch grace before
 * retiring the old one.
 */
async function killMidRotation(file: string, target: string, prefix: string): Promise<void> {
  const keys = new Keys(prefix);
  const p1 = await startBrokerProcess(file);
  procs.push(p1);
  const pending = rotate(p1, target).catch(() => undefined);
  const redis = new Redis(REDIS_URL);
  try {
    for (let i = 0; i < 400 && !(await redis.get(keys.secrets(target))); i++) await sleep(25);
    expect(await redis.get(keys.secrets(target))).toEqual(expect.any(String));
    await p1.kill('SIGKILL');
    await pending;
    // The dead process's rotation lock lapses within 30 s; the test does not wait for it.
    await redis.del(keys.lock(`rotate:${target}`));
  } finally {
    await redis.quit();
  }
}

describe('a rotation whose process was killed midway is finished by the next one', () => {
  test(
    'aws: the original key is retired, not left active for good, and rotations work again',
    async () => {
      aws = await startAwsEmulator();
      const user = aws.createUser('jit-broker');
      const role = aws.createRole('agent-reports', { maxSessionDuration: 3600, trust: [user.arn] });
      const prefix = uniquePrefix('rot-killed-aws');
      prefixes.push(prefix);
      const files = configFiles(prefix, {
        rotation: { switchGraceMs: 8000 },
        providers: {
          aws: brokerAwsSettings(aws!.url, user, ROTATABLE),
        },
        roles: { 'reports-bucket': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 } },
      });
      const original = { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey };
      await killMidRotation(files.first, 'aws', prefix);
      expect(aws.accessKeys(user.userName)).toHaveLength(2);
      expect(await callerIdentityAs(aws.url, original)).toBe('ok');

      const p2 = await startBrokerProcess(files.next);
      procs.push(p2);
      const r = await rotate(p2, 'aws');
      expect(r.status).toBe(202);
      // The original is gone; one key is left, the one the rotation made.
      expect(await callerIdentityAs(aws.url, original)).toBe('InvalidClientTokenId');
      expect(aws.accessKeys(user.userName)).toEqual([{ accessKeyId: r.body.accessKeyId, status: 'Active' }]);
      expect((await rotate(p2, 'aws')).status).toBe(202);
    },
    TWO_STARTS_MS,
  );

  test(
    'aws: killed while IAM makes the new key (its id never recorded): once IAM can be checked, the next rotations retire that key',
    async () => {
      const emu = await startAwsEmulator();
      emus.push(emu);
      const user = emu.createUser('jit-broker');
      const role = emu.createRole('agent-reports', { maxSessionDuration: 3600, trust: [user.arn] });
      const prefix = uniquePrefix('rot-killed-create');
      prefixes.push(prefix);
      const files = configFiles(prefix, {
        providers: { aws: brokerAwsSettings(emu.url, user, ROTATABLE) },
        roles: { 'reports-bucket': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 } },
      });
      const keys = new Keys(prefix);
      const p1 = await startBrokerProcess(files.first);
      procs.push(p1);
      // The killed rotation runs with IAM's clock 2 minutes behind; its intent's times are moved back as far
      // below: as if it had run 2 minutes ago, past its window and the 30-s listing lag after it.
      const AGO = 120_000;
      emu.advanceTime(-AGO);
      // IAM makes the key at once and holds its answer: the process dies between the call and recording the key.
      emu.holdAnswer('CreateAccessKey', 20_000);
      const pending = rotate(p1, 'aws').catch(() => undefined);
      for (let i = 0; i < 400 && emu.accessKeys(user.userName).length < 2; i++) await sleep(25);
      await p1.kill('SIGKILL');
      await pending;
      const made = emu.accessKeys(user.userName).find((k) => k.accessKeyId !== user.accessKeyId);
      expect(made).toMatchObject({ status: 'Active' });
      const redis = new Redis(REDIS_URL);
      const p2 = await startBrokerProcess(files.next);
      procs.push(p2);
      try {
        const intent = JSON.parse((await redis.get(keys.rotationIntent('aws')))!);
        expect(intent).toMatchObject({ old: user.accessKeyId, creating: expect.any(Number), until: expect.any(Number) });
        await redis.del(keys.lock('rotate:aws'));
        // Too early to trust a listing: 409, and the intent stays.
        const early = await rotate(p2, 'aws');
        expect({ status: early.status, code: early.body.code }).toEqual({ status: 409, code: 'rotation_in_progress' });
        expect(Number(early.headers.get('retry-after'))).toBeGreaterThan(0);
        expect(JSON.parse((await redis.get(keys.rotationIntent('aws')))!)).toEqual(intent);
        emu.advanceTime(AGO);
        await redis.set(
          keys.rotationIntent('aws'),
          JSON.stringify({ ...intent, creating: intent.creating - AGO, until: intent.until - AGO }),
        );
      } finally {
        await redis.quit();
      }

      // Before: 502, IAM refusing a third key, at this rotation and every later one.
      const r = await rotate(p2, 'aws');
      expect({ status: r.status, detail: r.body.detail }).toEqual({ status: 502, detail: expect.stringContaining(made!.accessKeyId) });
      expect(emu.accessKeys(user.userName)).toContainEqual({ accessKeyId: made!.accessKeyId, status: 'Inactive' });
      const r2 = await rotate(p2, 'aws');
      expect(r2.status).toBe(202);
      expect(emu.accessKeys(user.userName)).toEqual([{ accessKeyId: r2.body.accessKeyId, status: 'Active' }]);
      expect(emu.requests('DeleteAccessKey').map((x) => x.params.AccessKeyId)).toEqual(expect.arrayContaining([made!.accessKeyId]));
    },
    TWO_STARTS_MS,
  );

  test(
    'vault: the original secret-id is destroyed by the next rotation',
    async () => {
      const v = await vaultWithBroker();
      vault = v.emu;
      const prefix = uniquePrefix('rot-killed-vault');
      prefixes.push(prefix);
      const files = configFiles(prefix, {
        rotation: { switchGraceMs: 8000 },
        providers: {
          vault: {
            address: vault!.url,
            auth: { approle: { roleId: v.roleId, secretId: v.secretId, mount: 'approle', roleName: 'jit-broker' } },
          },
        },
        roles: { 'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] } } },
      });
      const login = (secretId: string) =>
        vaultClient(vault!, '')
          .write('auth/approle/login', { role_id: v.roleId, secret_id: secretId })
          .then(
            () => 'ok',
            () => 'refused',
          );
      await killMidRotation(files.first, 'vault', prefix);
      expect(await login(v.secretId)).toBe('ok');

      const p2 = await startBrokerProcess(files.next);
      procs.push(p2);
      const r = await rotate(p2, 'vault');
      expect(r.status).toBe(202);
      expect(await login(v.secretId)).toBe('refused');
    },
    TWO_STARTS_MS,
  );

  test(
    'vault: a secret-id Vault made for a rotation whose process died before the answer is destroyed by the next one',
    async () => {
      const v = await vaultWithBroker();
      vaults.push(v.emu);
      const prefix = uniquePrefix('rot-killed-vault-new');
      prefixes.push(prefix);
      const files = configFiles(prefix, {
        providers: {
          vault: {
            address: v.emu.url,
            auth: { approle: { roleId: v.roleId, secretId: v.secretId, mount: 'approle', roleName: 'jit-broker' } },
          },
        },
        roles: { 'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] } } },
      });
      const secretIds = () => [...v.emu.state.space('').approles.get('approle/jit-broker')!.secretIds.keys()];
      const p1 = await startBrokerProcess(files.first);
      procs.push(p1);
      // Vault makes the new secret-id; the process dies before its answer arrives (custom or generated alike).
      const hold = v.emu.holdResponses(/^auth\/approle\/role\/jit-broker\/(custom-)?secret-id$/);
      const pending = rotate(p1, 'vault').catch(() => undefined);
      await hold.until(1);
      await p1.kill('SIGKILL');
      await pending;
      hold.release();
      const [made] = secretIds().filter((s) => s !== v.secretId);
      expect(made).toEqual(expect.any(String));
      expect(v.emu.isSecretIdValid('jit-broker', made!)).toBe(true);
      const redis = new Redis(REDIS_URL);
      try {
        await redis.del(new Keys(prefix).lock('rotate:vault'));
      } finally {
        await redis.quit();
      }

      const p2 = await startBrokerProcess(files.next);
      procs.push(p2);
      expect((await rotate(p2, 'vault')).status).toBe(202);
      // Before: it stayed valid for good, in no intent (two secret-ids left).
      expect(v.emu.isSecretIdValid('jit-broker', made!)).toBe(false);
      expect(secretIds()).toHaveLength(1);
      expect(v.emu.isSecretIdValid('jit-broker', v.secretId)).toBe(false);
    },
    TWO_STARTS_MS,
  );
});
