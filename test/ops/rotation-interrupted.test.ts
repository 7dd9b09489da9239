import { afterAll, describe, expect, test } from '@jest/globals';
import { Redis } from 'ioredis';
import { startAwsEmulator, type AwsEmulator } from '../emulators/aws/index.ts';
import type { VaultEmulator } from '../emulators/vault/index.ts';
import { ADMIN, REDIS_URL, call, dropPrefix, testConfigFile, uniquePrefix } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { type BrokerProcess, startBrokerProcess } from '../helpers/process.ts';
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
let vault: VaultEmulator | undefined;
afterAll(async () => {
  for (const p of procs) await p.kill();
  await aws?.stop();
  await vault?.stop();
  for (const p of prefixes) await dropPrefix(p);
});
const as = (path: string) => ({ authorization: `Bearer ${issuer.svid(path)}` });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const rotate = (p: BrokerProcess, target: string) => call(p.url, 'POST', '/v1/admin/rotate', as(ADMIN), { target });
/** The audit records of `action` (via the API), once there is one (up to 5 s). */
async function auditOf(p: BrokerProcess, action: string): Promise<Record<string, unknown>[]> {
  for (let i = 0; ; i++) {
    const items = (await call(p.url, 'GET', `/v1/audit?action=${action}`, as(ADMIN))).body.items as Record<string, unknown>[];
    if (items.length > 0 || i >= 50) return items;
    await sleep(100);
  }
}

/**
 * Starts a broker process on `file`, starts a rotation of `target`, and SIGKILLs the process once
 * `reached` holds: by default once the new secret was handed out (sealed in Redis), while it waits out
 * the switch grace before retiring the old one.
 */
async function killMidRotation(file: string, target: string, prefix: string, reached?: () => boolean): Promise<void> {
  const keys = new Keys(prefix);
  const p1 = await startBrokerProcess(file);
  procs.push(p1);
  const pending = rotate(p1, target).catch(() => undefined);
  const redis = new Redis(REDIS_URL);
  const handedOut = async () => (await redis.get(keys.secrets(target))) !== null;
  const there = async () => (reached ? reached() : handedOut());
  try {
    for (let i = 0; i < 400 && !(await there()); i++) await sleep(25);
    expect(await there()).toBe(true);
    await p1.kill('SIGKILL');
    await pending;
    // The dead process's rotation lock lapses within 30 s; the test does not wait for it.
    await redis.del(keys.lock(`rotate:${target}`));
  } finally {
    await redis.quit();
  }
}

/** An emulator with the broker's user and role, and a broker config file on it under a fresh prefix. */
async function awsSetup(name: string) {
  const emu = await startAwsEmulator();
  aws = emu;
  const user = emu.createUser('jit-broker');
  const role = emu.createRole('agent-reports', { maxSessionDuration: 3600, trust: [user.arn] });
  const prefix = uniquePrefix(name);
  prefixes.push(prefix);
  const file = testConfigFile(issuer, prefix, {
    rotation: { switchGraceMs: 8000 },
    providers: { aws: brokerAwsSettings(emu.url, user, ROTATABLE) },
    roles: { 'reports-bucket': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 } },
  });
  return { emu, user, prefix, file, original: { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey } };
}

describe('a rotation whose process was killed midway is finished by the next one', () => {
  test('aws: the original key is retired, not left active for good, and rotations work again', async () => {
    const { emu, user, prefix, file, original } = await awsSetup('rot-killed-aws');
    // Up before the kill, so its startup pass finds nothing: the next rotation is what finishes it.
    const p2 = await startBrokerProcess(file);
    procs.push(p2);
    await killMidRotation(file, 'aws', prefix);
    expect(emu.accessKeys(user.userName)).toHaveLength(2);
    expect(await callerIdentityAs(emu.url, original)).toBe('ok');

    const r = await rotate(p2, 'aws');
    expect(r.status).toBe(202);
    // The original is gone; one key is left, the one the rotation made.
    expect(await callerIdentityAs(emu.url, original)).toBe('InvalidClientTokenId');
    expect(emu.accessKeys(user.userName)).toEqual([{ accessKeyId: r.body.accessKeyId, status: 'Active' }]);
    expect((await rotate(p2, 'aws')).status).toBe(202);
  }, 90_000);

  test("aws: a key created by a rotation killed before it learnt the key id is retired by the next one (not left to hit IAM's two-key limit)", async () => {
    await aws?.stop();
    const { emu, user, prefix, file, original } = await awsSetup('rot-killed-create');
    // Up before the kill, so its startup pass finds nothing: the next rotation is what finishes it.
    const p2 = await startBrokerProcess(file);
    procs.push(p2);
    // IAM creates the key; its answer (the only place its id is) never reaches the broker, which dies.
    emu.holdAnswer('CreateAccessKey', 4000);
    await killMidRotation(file, 'aws', prefix, () => emu.accessKeys(user.userName).length === 2);
    const orphan = emu.accessKeys(user.userName).find((k) => k.accessKeyId !== original.accessKeyId)!;

    // Before: 502, CreateAccessKey refused with LimitExceeded until someone deleted the orphan by hand.
    const r = await rotate(p2, 'aws');
    expect({ status: r.status, code: r.body.code }).toEqual({ status: 202, code: undefined });
    expect(emu.accessKeys(user.userName)).toEqual([{ accessKeyId: r.body.accessKeyId, status: 'Active' }]);
    expect(r.body.accessKeyId).not.toBe(orphan.accessKeyId);
    expect(await callerIdentityAs(emu.url, original)).toBe('InvalidClientTokenId');
  }, 90_000);

  test('aws: a broker that starts after the kill retires the leftovers itself (announced first), without another rotation', async () => {
    await aws?.stop();
    const { emu, user, prefix, file, original } = await awsSetup('rot-killed-start');
    await killMidRotation(file, 'aws', prefix);
    const handedOut = emu.accessKeys(user.userName).find((k) => k.accessKeyId !== original.accessKeyId)!;

    const sub = new Redis(REDIS_URL);
    const announced: string[] = [];
    sub.on('message', (_ch: string, m: string) => announced.push(m));
    await sub.subscribe(new Keys(prefix).channel('broker'));
    // Before: nothing happened until someone rotated again; the original stayed valid for good meanwhile.
    const p2 = await startBrokerProcess(file);
    procs.push(p2);
    try {
      for (let i = 0; i < 200 && (await callerIdentityAs(emu.url, original)) === 'ok'; i++) await sleep(100);
      expect(await callerIdentityAs(emu.url, original)).toBe('InvalidClientTokenId');
      // Other instances were told to switch to Redis's key (the one kept) before the original was retired.
      expect(announced).toContain(JSON.stringify({ type: 'rotated', target: 'aws' }));
    } finally {
      await sub.quit();
    }
    // The key the dead rotation handed out is the one kept, and the one the new broker runs with.
    expect(emu.accessKeys(user.userName)).toEqual([{ accessKeyId: handedOut.accessKeyId, status: 'Active' }]);
    // The record follows the retirement (and the intent's removal) by a moment.
    expect(await auditOf(p2, 'rotate.leftovers')).toEqual([
      expect.objectContaining({ actor: 'broker', decision: 'ok', reason: 'aws', detail: { retired: [original.accessKeyId] } }),
    ]);
    const redis = new Redis(REDIS_URL);
    try {
      expect(await redis.exists(new Keys(prefix).rotationIntent('aws'))).toBe(0);
    } finally {
      await redis.quit();
    }
    expect((await rotate(p2, 'aws')).status).toBe(202);
  }, 90_000);

  test('vault: the original secret-id is destroyed by the next rotation', async () => {
    const { prefix, file, original, login } = await vaultSetup('rot-killed-vault');
    // Up before the kill, so its startup pass finds nothing: the next rotation is what finishes it.
    const p2 = await startBrokerProcess(file);
    procs.push(p2);
    await killMidRotation(file, 'vault', prefix);
    expect(await login(original)).toBe('ok');

    const r = await rotate(p2, 'vault');
    expect(r.status).toBe(202);
    expect(await login(original)).toBe('refused');
  }, 90_000);

  test('vault: a secret-id generated by a rotation killed before it learnt the accessor is destroyed by the next one', async () => {
    await vault?.stop();
    const { emu, prefix, file, original, login } = await vaultSetup('rot-killed-generate');
    const p2 = await startBrokerProcess(file);
    procs.push(p2);
    // Vault generates the secret-id; its answer (the only place its value and accessor are) never reaches the broker, which dies.
    const held = emu.holdResponses('auth/approle/role/jit-broker/secret-id');
    await killMidRotation(file, 'vault', prefix, () => held.waiting === 1);
    held.release();
    expect(secretIds(emu)).toHaveLength(2);
    const orphan = secretIds(emu).find((s) => s.secretId !== original)!;
    expect(emu.isSecretIdValid('jit-broker', orphan.secretId)).toBe(true);

    // Before: the orphan stayed valid for good (no limit makes it visible), known to nobody.
    const r = await rotate(p2, 'vault');
    expect(r.status).toBe(202);
    expect(emu.isSecretIdValid('jit-broker', orphan.secretId)).toBe(false);
    expect(await login(original)).toBe('refused');
    expect(secretIds(emu).map((s) => s.accessor)).toEqual([r.body.secretIdAccessor]);
  }, 90_000);

  test('vault: a broker that starts after the kill destroys the original secret-id itself, without another rotation', async () => {
    await vault?.stop();
    const { prefix, file, original, login } = await vaultSetup('rot-killed-vault-start');
    await killMidRotation(file, 'vault', prefix);
    expect(await login(original)).toBe('ok');

    // Before: it stayed valid until someone rotated again.
    const p2 = await startBrokerProcess(file);
    procs.push(p2);
    for (let i = 0; i < 200 && (await login(original)) === 'ok'; i++) await sleep(100);
    expect(await login(original)).toBe('refused');
    expect(await auditOf(p2, 'rotate.leftovers')).toEqual([
      expect.objectContaining({ decision: 'ok', reason: 'vault', detail: { retired: [expect.any(String)] } }),
    ]);
  }, 90_000);
});

/** The broker AppRole's secret-ids as the emulator holds them. */
const secretIds = (emu: VaultEmulator) => [...emu.state.space('').approles.get('approle/jit-broker')!.secretIds.values()];

/** A Vault emulator with the broker's AppRole, a broker config file on it under a fresh prefix, and a login check. */
async function vaultSetup(name: string) {
  const v = await vaultWithBroker();
  vault = v.emu;
  const prefix = uniquePrefix(name);
  prefixes.push(prefix);
  const file = testConfigFile(issuer, prefix, {
    rotation: { switchGraceMs: 8000 },
    providers: {
      vault: {
        address: v.emu.url,
        auth: { approle: { roleId: v.roleId, secretId: v.secretId, mount: 'approle', roleName: 'jit-broker' } },
      },
    },
    roles: { 'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] } } },
  });
  const login = (secretId: string) =>
    vaultClient(v.emu, '')
      .write('auth/approle/login', { role_id: v.roleId, secret_id: secretId })
      .then(
        () => 'ok',
        () => 'refused',
      );
  return { emu: v.emu, prefix, file, original: v.secretId, login };
}
