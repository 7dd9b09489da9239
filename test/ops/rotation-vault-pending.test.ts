import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { ADMIN, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { capturingLogger } from '../helpers/log-capture.ts';
import { intentOf } from '../helpers/rotation-intent.ts';
import { BROKER_POLICY, vaultClient, vaultWithBroker } from '../providers/vault/helpers.ts';

/**
 * The new AppRole secret-id of a rotation is named in the rotation intent before Vault is asked for
 * it. Before: the intent only got its accessor from Vault's answer, so an answer lost after Vault
 * made it (a reset, a timeout, a 5xx) left a valid secret-id that no intent named and nobody ever
 * destroyed (the rotation even cleared the intent).
 */
const ROLE = 'jit-broker';
/** Matches the create call, custom or generated (the test also runs against the code before the fix). */
const CREATE = /^auth\/approle\/role\/jit-broker\/(custom-)?secret-id$/;

async function brokerOn(name: string, policy: string[]) {
  const v = await vaultWithBroker();
  v.emu.setPolicy(ROLE, policy);
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
  const secretIds = () => [...v.emu.state.space('').approles.get(`approle/${ROLE}`)!.secretIds.keys()];
  const logsIn = (secretId: string) =>
    vaultClient(v.emu, '')
      .write('auth/approle/login', { role_id: v.roleId, secret_id: secretId })
      .then(
        () => true,
        () => false,
      );
  const rotate = () => call(b.url, 'POST', '/v1/admin/rotate', b.as(ADMIN), { target: 'vault' });
  return { ...v, b, log, secretIds, logsIn, rotate };
}

describe('custom secret-id recorded before the call', () => {
  let t: Awaited<ReturnType<typeof brokerOn>>;
  beforeAll(async () => {
    t = await brokerOn('rotation-vault-pending', BROKER_POLICY);
  });
  afterAll(async () => {
    await t?.b.close();
    await t?.emu.stop();
  });

  test('an answer lost after Vault made the secret-id: the intent names it, sealed, and the next rotation destroys it', async () => {
    const { redis, keys } = t.b.broker.deps;
    const hold = t.emu.holdResponses(CREATE);
    const first = t.rotate();
    await hold.until(1);
    // Vault made it; the intent, as Redis holds it right now, must name it without showing it.
    const [made] = t.secretIds().filter((s) => s !== t.secretId);
    expect(made).toEqual(expect.any(String));
    const during = await redis.get(keys.rotationPending('vault'));
    // The answer is lost: Vault goes away with it (a reset), so the rotation's own destroy cannot reach it either.
    await t.emu.setDown(true);
    const res = await first;
    expect({ status: res.status, code: res.body.code }).toEqual({ status: 502, code: 'upstream_unavailable' });
    hold.release();
    await t.emu.setDown(false);
    const after = await redis.get(keys.rotationPending('vault'));
    // Left as it is, it logs in: a valid secret-id of the broker's AppRole.
    expect(await t.logsIn(made!)).toBe(true);

    const next = await t.rotate();
    expect(next.status).toBe(202);
    // Before the fix: still valid, named nowhere (two secret-ids left).
    expect(await t.logsIn(made!)).toBe(false);
    expect(t.emu.isSecretIdValid(ROLE, made!)).toBe(false);
    expect(t.secretIds()).toHaveLength(1);
    expect(t.secretIds()).not.toContain(t.secretId);
    expect(await redis.get(keys.rotationIntent('vault'))).toBeNull();
    // Sent seconds ago: destroyed, and still listed in case a create of it was still on its way.
    expect((await intentOf(t.b)).pending?.map((p) => p.secret)).toEqual([made]);

    // The intent named it before the call and still did after the failure; never in plaintext.
    for (const raw of [during, after]) {
      expect(raw).toEqual(expect.any(String));
      expect(raw).not.toContain(made);
      expect(raw).toMatch(/^v1\./);
    }
    expect(t.emu.unhandled).toEqual([]);
  }, 30_000);

  test('Redis never holds the pending secret-id in plaintext, in the intent or elsewhere under the prefix', async () => {
    const { redis, keys } = t.b.broker.deps;
    const current = currentSecretId(t);
    const hold = t.emu.holdResponses(CREATE);
    const res = t.rotate();
    await hold.until(1);
    const [made] = t.secretIds().filter((s) => s !== current);
    const raw = await redis.get(keys.rotationPending('vault'));
    const strings: string[] = [];
    for (const key of await redis.keys(`${t.b.prefix}*`)) if ((await redis.type(key)) === 'string') strings.push((await redis.get(key))!);
    hold.release();
    expect((await res).status).toBe(202);
    expect(made).toEqual(expect.any(String));
    expect(raw).not.toBeNull();
    expect(raw).not.toContain(made);
    expect(strings.length).toBeGreaterThan(1);
    expect(strings.filter((s) => s.includes(made!))).toEqual([]);
  }, 30_000);
});

/** The secret-id the broker's Vault session runs with (read from the provider's session, test only). */
function currentSecretId(t: { b: TestBroker }): string | undefined {
  const p = t.b.broker.deps.providers.get('vault') as unknown as { session: { secretId?: string } };
  return p.session.secretId;
}

describe('a Vault policy without custom-secret-id', () => {
  let t: Awaited<ReturnType<typeof brokerOn>>;
  beforeAll(async () => {
    t = await brokerOn(
      'rotation-vault-generated',
      BROKER_POLICY.filter((p) => !p.includes('custom-secret-id')),
    );
  });
  afterAll(async () => {
    await t?.b.close();
    await t?.emu.stop();
  });

  test('rotations fall back to a generated secret-id, and warn once naming the missing capability', async () => {
    for (let i = 0; i < 2; i++) {
      const before = t.secretIds();
      const r = await t.rotate();
      expect(r.status).toBe(202);
      expect(r.body).toMatchObject({ oldSecretIdDestroyed: true });
      const [fresh] = t.secretIds();
      expect(t.secretIds()).toHaveLength(1);
      expect(before).not.toContain(fresh);
      expect(await t.logsIn(fresh!)).toBe(true);
      for (const old of before) expect(await t.logsIn(old)).toBe(false);
    }
    const creates = t.emu.requests.filter((r) => CREATE.test(r.path)).map((r) => `${r.path.replace(/^.*\//, '')} ${r.status}`);
    expect(creates).toEqual(['custom-secret-id 403', 'secret-id 200', 'custom-secret-id 403', 'secret-id 200']);
    const warned = t.log.lines.filter((l) => JSON.stringify(l).includes('custom-secret-id'));
    expect(warned).toEqual([
      expect.objectContaining({ level: 40, missingCapability: `update on auth/approle/role/${ROLE}/custom-secret-id` }),
    ]);
    expect(t.emu.unhandled).toEqual([]);
  }, 30_000);
});
