import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { ADMIN, call, startTestBroker } from '../helpers/broker.ts';
import { delayingProxy } from '../helpers/delaying-proxy.ts';
import { capturingLogger } from '../helpers/log-capture.ts';
import { intentOf } from '../helpers/rotation-intent.ts';
import { vaultClient, vaultWithBroker } from '../providers/vault/helpers.ts';

/**
 * A custom-secret-id create that reaches Vault after the broker gave up on it (a proxy or a standby held it
 * past `requestTimeoutMs`). Before: the rotation destroyed it by value before it existed (a no-op), and a
 * retry overwrote the intent with its own secret-id, so the late one became valid with nothing naming it.
 * Now the token that sent it is revoked (the late create fails with 403), and, when that cannot happen, the
 * intent keeps every secret-id sent, until one was destroyed longer after it was sent than a request may take.
 */
const ROLE = 'jit-broker';
const CREATE = /\/auth\/approle\/role\/jit-broker\/custom-secret-id$/;
const HOLD_MS = 6000;

async function setup(name: string, extra: Record<string, unknown> = {}) {
  const v = await vaultWithBroker();
  const proxy = await delayingProxy(v.emu.url, CREATE, HOLD_MS);
  const log = capturingLogger('debug');
  const b = await startTestBroker(name, {
    config: {
      providers: {
        vault: {
          address: proxy.url,
          requestTimeoutMs: 2000,
          auth: { approle: { roleId: v.roleId, secretId: v.secretId, roleName: ROLE } },
          ...extra,
        },
      },
      roles: { 'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] } } },
      rotation: { switchGraceMs: 200 },
    },
    broker: { logger: log.logger },
  }).catch(async (err: unknown) => {
    // A broker that does not start (a setting this version lacks) must not leave the proxy and Vault running.
    await proxy.close();
    await v.emu.stop();
    throw err;
  });
  const secretIds = () => [...v.emu.state.space('').approles.get(`approle/${ROLE}`)!.secretIds.keys()];
  const inUse = () => (b.broker.deps.providers.get('vault') as unknown as { session: { secretId: string } }).session.secretId;
  const logsIn = (secretId: string) =>
    vaultClient(v.emu, '')
      .write('auth/approle/login', { role_id: v.roleId, secret_id: secretId })
      .then(
        () => true,
        () => false,
      );
  const rotate = () => call(b.url, 'POST', '/v1/admin/rotate', b.as(ADMIN), { target: 'vault' });
  const close = async () => {
    await b.close();
    await proxy.close();
    await v.emu.stop();
  };
  return { ...v, b, proxy, log, secretIds, inUse, logsIn, rotate, close };
}
type Setup = Awaited<ReturnType<typeof setup>>;

/** Secret-ids of the broker's AppRole, other than the one in use, that Vault holds valid. */
const validLeftovers = (t: Setup): string[] => t.secretIds().filter((s) => s !== t.inUse() && t.emu.isSecretIdValid(ROLE, s));

/** The secret-id the broker sent in the create the proxy holds: not (yet) in Vault. */
function held(t: Setup): string {
  const sent = t.proxy.heldBody()?.secret_id;
  expect(sent).toEqual(expect.any(String));
  expect(t.secretIds()).not.toContain(sent);
  return sent as string;
}

describe('a create that lands late, the token that sent it revoked', () => {
  let t: Setup;
  beforeAll(async () => {
    t = await setup('rotation-vault-late-revoked');
  });
  afterAll(async () => {
    await t?.close();
  });

  test('the late create fails with 403: nothing valid is left, and retries work', async () => {
    const first = await t.rotate();
    expect({ status: first.status, code: first.body.code }).toEqual({ status: 502, code: 'upstream_unavailable' });
    const sent = held(t);
    // Vault is still sick for the retry: its own create fails too.
    t.emu.injectFault({ path: `auth/approle/role/${ROLE}/custom-secret-id`, method: 'POST', status: 500, errors: ['internal error'] });
    expect((await t.rotate()).status).toBe(502);
    // Before: 200, and the late secret-id valid with no intent naming it.
    expect(await t.proxy.landed()).toBe(403);
    expect(t.emu.isSecretIdValid(ROLE, sent)).toBe(false);
    expect(validLeftovers(t)).toEqual([]);

    expect((await t.rotate()).status).toBe(202);
    expect(t.secretIds()).toEqual([t.inUse()]);
    const all = JSON.stringify(t.log.lines);
    expect(all).not.toContain(sent);
    expect(t.emu.unhandled).toEqual([]);
  }, 40_000);
});

describe('a create that lands late, the token that sent it not revoked (logins fail meanwhile)', () => {
  let t: Setup;
  beforeAll(async () => {
    t = await setup('rotation-vault-late-listed');
  });
  afterAll(async () => {
    await t?.close();
  });

  test('a retry appends to the pending list instead of overwriting it; the late secret-id stays named and the next rotation destroys it', async () => {
    // Both replacement logins fail: the token that sent the held create stays valid.
    t.emu.injectFault({ path: 'auth/approle/login', method: 'POST', status: 503, errors: ['standby'], times: 2 });
    expect((await t.rotate()).status).toBe(502);
    const sent = held(t);
    t.emu.injectFault({ path: `auth/approle/role/${ROLE}/custom-secret-id`, method: 'POST', status: 500, errors: ['internal error'] });
    expect((await t.rotate()).status).toBe(502);
    expect(await t.proxy.landed()).toBe(200);

    // Valid, as Vault made it after both destroys; named by the intent, with the retry's own.
    expect(validLeftovers(t)).toEqual([sent]);
    const { pending } = await intentOf(t.b);
    // Before: the retry's record replaced the list with its own secret-id only.
    expect(pending?.map((p) => p.secret)).toEqual([sent, expect.any(String)]);
    expect(pending?.[1]?.secret).not.toBe(sent);

    const next = await t.rotate();
    expect(next.status).toBe(202);
    expect(await t.logsIn(sent)).toBe(false);
    expect(t.secretIds()).toEqual([t.inUse()]);
    // Sent well within 90 s: destroyed, and still listed, so a create even later is destroyed again.
    const after = await intentOf(t.b);
    expect(after.ids).toBeNull();
    expect(after.pending?.map((p) => p.secret)).toEqual(pending?.map((p) => p.secret));
    expect(JSON.stringify(t.log.lines)).not.toContain(sent);
    expect(t.emu.unhandled).toEqual([]);
  }, 40_000);
});

describe('how long a pending secret-id stays listed (providers.vault.maxRequestDurationSeconds)', () => {
  let t: Setup;
  beforeAll(async () => {
    t = await setup('rotation-vault-late-bound', { maxRequestDurationSeconds: 3 });
  });
  afterAll(async () => {
    await t?.close();
  });

  test('destroyed within the bound of being sent: kept; destroyed after it: forgotten', async () => {
    t.emu.injectFault({ path: 'auth/approle/login', method: 'POST', status: 503, errors: ['standby'], times: 1 });
    expect((await t.rotate()).status).toBe(502);
    const sent = held(t);
    expect(await t.proxy.landed()).toBe(200);
    expect(validLeftovers(t)).toEqual([sent]);
    // Sent about 6 s ago, more than the 3 s bound: destroyed and forgotten.
    expect((await t.rotate()).status).toBe(202);
    expect(await t.logsIn(sent)).toBe(false);
    expect(await intentOf(t.b)).toEqual({ ids: null, pending: null });
  }, 40_000);
});
