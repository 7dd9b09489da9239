import { afterEach, describe, expect, test } from '@jest/globals';
import { Kek } from '../../src/signing/kek.ts';
import { ADMIN, call, startSibling, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { capturingLogger } from '../helpers/log-capture.ts';
import { intentOf, sealPendingAs } from '../helpers/rotation-intent.ts';
import { vaultClient, vaultWithBroker } from '../providers/vault/helpers.ts';

/**
 * Where the secret-ids a Vault rotation sent are recorded, and when they are not destroyed: an instance of
 * the previous version rewriting the intent, Redis losing the distributed secret-id while the intent
 * survived, an intent the KEK cannot open.
 */
const ROLE = 'jit-broker';
const CREATE = /^auth\/approle\/role\/jit-broker\/(custom-)?secret-id$/;

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (closers.length) await closers.pop()!();
});

async function setup(name: string) {
  const v = await vaultWithBroker();
  const log = capturingLogger('warn');
  const b = await startTestBroker(name, {
    config: {
      providers: {
        vault: {
          address: v.emu.url,
          requestTimeoutMs: 2000,
          auth: { approle: { roleId: v.roleId, secretId: v.secretId, roleName: ROLE } },
        },
      },
      roles: { 'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] } } },
      rotation: { switchGraceMs: 200 },
    },
    broker: { logger: log.logger },
  });
  closers.push(
    () => v.emu.stop(),
    () => b.close(),
  );
  const secretIds = () => [...v.emu.state.space('').approles.get(`approle/${ROLE}`)!.secretIds.keys()];
  const logsIn = (secretId: string) =>
    vaultClient(v.emu, '')
      .write('auth/approle/login', { role_id: v.roleId, secret_id: secretId })
      .then(
        () => true,
        () => false,
      );
  const rotate = (on: TestBroker = b) => call(on.url, 'POST', '/v1/admin/rotate', on.as(ADMIN), { target: 'vault' });
  return { ...v, b, log, secretIds, logsIn, rotate };
}
type Setup = Awaited<ReturnType<typeof setup>>;

const inUse = (b: TestBroker) => (b.broker.deps.providers.get('vault') as unknown as { session: { secretId: string } }).session.secretId;

/** A rotation whose create answer is lost after Vault made the secret-id (Vault goes away with it): returns it. */
async function lostAnswer(t: Setup): Promise<string> {
  const hold = t.emu.holdResponses(CREATE);
  const res = t.rotate();
  await hold.until(1);
  const [made] = t.secretIds().filter((s) => s !== inUse(t.b));
  await t.emu.setDown(true);
  expect((await res).status).toBe(502);
  hold.release();
  await t.emu.setDown(false);
  expect(await t.logsIn(made!)).toBe(true);
  return made!;
}

describe('the pending list has a key of its own', () => {
  test('an instance of the previous version rewriting and clearing the intent does not drop it', async () => {
    const t = await setup('rotation-vault-intent-old-instance');
    const { redis, keys } = t.b.broker.deps;
    const made = await lostAnswer(t);
    // What a rotation of the previous version does to the intent: records its own ids, clears them at its end.
    await redis.set(keys.rotationIntent('vault'), JSON.stringify({ old: 'accessor-of-an-older-rotation' }));
    await redis.del(keys.rotationIntent('vault'));

    expect((await t.rotate()).status).toBe(202);
    // Before: the secret-id was named only in the intent, which the old instance dropped: valid for good.
    expect(await t.logsIn(made)).toBe(false);
    expect(t.secretIds()).toEqual([inUse(t.b)]);
  }, 30_000);

  test('an intent a development build wrote (one sealed secret-id inside the intent) is still read', async () => {
    const t = await setup('rotation-vault-intent-legacy');
    const { redis, keys } = t.b.broker.deps;
    const { secretId: made } = t.emu.generateSecretId(ROLE);
    await redis.set(keys.rotationIntent('vault'), JSON.stringify({ pendingSealed: sealPendingAs(t.b, made) }));
    expect((await t.rotate()).status).toBe(202);
    expect(await t.logsIn(made)).toBe(false);
    expect(await intentOf(t.b)).toEqual({ ids: null, pending: null });
  }, 30_000);
});

describe('Redis lost the distributed secret-id, the intent survived', () => {
  test('an instance on the configured secret-id does not destroy the one handed out that the others run with', async () => {
    const t = await setup('rotation-vault-intent-lost-secret');
    const { redis, keys } = t.b.broker.deps;
    // A rotation hands out its secret-id but cannot destroy the old one: the intent keeps both.
    t.emu.injectFault({
      path: `auth/approle/role/${ROLE}/secret-id-accessor/destroy`,
      method: 'POST',
      status: 500,
      errors: ['internal error'],
    });
    const r = await t.rotate();
    expect({ status: r.status, destroyed: r.body.oldSecretIdDestroyed }).toEqual({ status: 202, destroyed: false });
    const handedOut = inUse(t.b);
    expect((await intentOf(t.b)).pending).toEqual([{ secret: handedOut, sentAt: expect.any(Number), handedOut: true }]);
    // Redis loses the sealed secret-id (evicted, or deleted by hand); a new instance starts on the configured one.
    await redis.del(keys.secrets('vault'));
    const log = capturingLogger('warn');
    const other = await startSibling(t.b, { logger: log.logger });
    closers.push(() => other.close());
    expect(inUse(other)).toBe(t.secretId);

    expect((await t.rotate(other)).status).toBe(202);
    // Before: destroyed as a leftover while the first instance ran with it.
    expect(await t.logsIn(handedOut)).toBe(true);
    expect((await intentOf(t.b)).pending?.map((p) => p.secret)).toEqual([handedOut]);
    expect(log.lines).toContainEqual(expect.objectContaining({ level: 50, notDestroyed: 1 }));
    // Both instances now run with the new one; the next rotation, with a distributed secret-id in Redis, destroys it.
    expect(inUse(t.b)).toBe(inUse(other));
    expect((await t.rotate(other)).status).toBe(202);
    expect(await t.logsIn(handedOut)).toBe(false);
    expect(t.secretIds()).toEqual([inUse(other)]);
  }, 30_000);
});

describe('an intent the KEK cannot open', () => {
  test('every rotation answers 502 rotation_failed naming the keys and the way out; the intent is kept and nothing is created', async () => {
    const t = await setup('rotation-vault-intent-kek');
    const { redis, keys } = t.b.broker.deps;
    const sealed = new Kek(Buffer.alloc(32, 7).toString('base64')).encrypt('[]', 'intent:vault');
    await redis.set(keys.rotationPending('vault'), sealed);
    for (let i = 0; i < 2; i++) {
      const r = await t.rotate();
      expect({ status: r.status, code: r.body.code }).toEqual({ status: 502, code: 'rotation_failed' });
      // Before: "Rotating vault failed; the previous secret is still in use." and nothing more.
      expect(r.body.detail).toContain(keys.rotationPending('vault'));
      expect(r.body.detail).toContain('docs/operations.md');
    }
    expect(await redis.get(keys.rotationPending('vault'))).toBe(sealed);
    expect(t.emu.requests.filter((q) => CREATE.test(q.path))).toEqual([]);
    expect(t.secretIds()).toEqual([t.secretId]);
  }, 30_000);
});
