import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { ADMIN, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';

/**
 * Vault's side of a rotation whose lock lapsed (see rotation-lock-lapse.test.ts). Found in review of the
 * lock fencing: a secret-id generated just before the lapse was in no intent and stayed valid for good,
 * and a login made with it just before the lapse left its token alive.
 */
const ROLE = 'jit-broker';
let emu: VaultEmulator;
let a: TestBroker;
const secretIds = () => [...emu.state.space('').approles.get(`approle/${ROLE}`)!.secretIds.keys()];
const loginTokens = () =>
  [...emu.state.tokens.values()].filter((t) => t.path.startsWith('auth/approle/login') && (t.expireAt === null || t.expireAt > Date.now()));

beforeAll(async () => {
  emu = await startVaultEmulator({ policies: { [ROLE]: BROKER_POLICY } });
  const { roleId, secretId } = emu.createAppRole({ name: ROLE, policies: [ROLE] });
  a = await startTestBroker('rotation-lapse-vault', {
    config: {
      providers: { vault: { address: emu.url, requestTimeoutMs: 5000, auth: { approle: { roleId, secretId, roleName: ROLE } } } },
      roles: { 'vault-ops': { provider: 'vault', token: { policies: [ROLE] } } },
      rotation: { switchGraceMs: 200 },
    },
  });
});
afterAll(async () => {
  await a?.close();
  await emu?.stop();
});

/** Rotates while the answer to the first request matching `path` is held, and lets the lock lapse meanwhile. */
async function rotateLosingLock(path: RegExp | string) {
  const { redis, keys } = a.broker.deps;
  const hold = emu.holdResponses(path);
  const r = call(a.url, 'POST', '/v1/admin/rotate', a.as(ADMIN), { target: 'vault' });
  await hold.until(1);
  await redis.del(keys.lock('rotate:vault'));
  hold.release();
  return r;
}

test('a secret-id generated as the lock lapsed is destroyed by the rotation that made it', async () => {
  const res = await rotateLosingLock(/approle\/role\/jit-broker\/(custom-)?secret-id$/);
  expect({ status: res.status, code: res.body.code }).toEqual({ status: 409, code: 'rotation_in_progress' });
  // Before: two secret-ids, one in use, the other in no intent: valid for good.
  expect(secretIds()).toHaveLength(1);
  expect((await call(a.url, 'POST', '/v1/admin/rotate', a.as(ADMIN), { target: 'vault' })).status).toBe(202);
  expect(secretIds()).toHaveLength(1);
}, 30_000);

test('a login with the new secret-id as the lock lapsed leaves no token behind', async () => {
  await rotateLosingLock('auth/approle/login');
  expect((await call(a.url, 'POST', '/v1/admin/rotate', a.as(ADMIN), { target: 'vault' })).status).toBe(202);
  // Before: a second live AppRole token, renewable, with the broker's whole policy, held by nobody.
  expect(loginTokens()).toHaveLength(1);
  expect(secretIds()).toHaveLength(1);
}, 30_000);
