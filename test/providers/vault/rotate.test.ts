import { BrokerError } from '../../../src/errors.ts';
import type { RotationIds, RotationJournal } from '../../../src/providers/types.ts';
import type { VaultProvider } from '../../../src/providers/vault/index.ts';
import type { VaultEmulator } from '../../emulators/vault/index.ts';
import {
  approleSettings,
  pathRole,
  provider,
  rejection,
  request,
  tokenRole,
  vaultClient,
  vaultFailure,
  vaultWithBroker,
} from './helpers.ts';

let emu: VaultEmulator;
let roleId: string;
let secretId: string;
let p: VaultProvider;
beforeEach(async () => {
  const v = await vaultWithBroker();
  ({ emu, roleId, secretId } = v);
  p = await provider(approleSettings(emu, roleId, secretId));
});
afterEach(async () => {
  await p.close();
  expect(emu.unhandled).toEqual([]);
  await emu.stop();
});

const brokerToken = (accessor: string) => [...emu.state.tokens.values()].find((t) => t.accessor === accessor)?.id;
const login = (secret: string) => vaultClient(emu, '').write('auth/approle/login', { role_id: roleId, secret_id: secret });

describe('rotating the AppRole secret-id', () => {
  test('new secret-id works, old one no longer logs in, old broker token revoked; issued credentials survive', async () => {
    const oldAccessor = p.tokenAccessor!;
    const oldToken = brokerToken(oldAccessor)!;
    const issued = await p.issue(request(tokenRole(['ops-read'])));
    const db = await p.issue(request(pathRole('database/creds/orders')));

    const r = await p.rotate();
    expect(r).toMatchObject({
      target: 'vault',
      rotated: ['approle-secret-id', 'vault-token'],
      detail: { secretIdAccessor: expect.any(String), oldSecretIdDestroyed: true },
    });
    expect(JSON.stringify(r.detail)).not.toContain(r.secret.secretId);
    expect(r.secret.secretId).not.toBe(secretId);

    expect((await login(r.secret.secretId!)).auth.client_token).toEqual(expect.any(String));
    expect(await vaultFailure(login(secretId))).toMatchObject({ status: 400, errors: ['invalid role or secret ID'] });
    expect(emu.isTokenValid(oldToken)).toBe(false);
    expect(p.tokenAccessor).not.toBe(oldAccessor);
    expect(emu.isTokenValid(issued.credentials.token as string)).toBe(true);
    expect(emu.isDbUserValid(db.credentials.username as string)).toBe(true);
    expect((await p.issue(request(tokenRole(['ops-read'])))).credentials.token).toEqual(expect.any(String));
  });

  test('the old token is revoked only after the calls running on it finish', async () => {
    const oldToken = brokerToken(p.tokenAccessor!)!;
    // A call that holds the old token while the rotation switches (reaching into the session to hold it open).
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const session = (p as unknown as { session: { call: (fn: () => Promise<void>) => Promise<void> } }).session;
    const held = session.call(() => gate);
    await p.rotate();
    expect(emu.isTokenValid(oldToken)).toBe(true);
    release();
    await held;
    await new Promise((r) => setTimeout(r, 50));
    expect(emu.isTokenValid(oldToken)).toBe(false);
  });

  test('a failure before the switch leaves the old secret-id and token in use (and destroys the unused new one)', async () => {
    const oldAccessor = p.tokenAccessor!;
    emu.injectFault({ path: 'auth/approle/login', status: 500, errors: ['internal error'] });
    const err = await rejection(p.rotate());
    expect(err).toBeInstanceOf(BrokerError);
    expect(err).toMatchObject({ status: 502 });
    expect(p.tokenAccessor).toBe(oldAccessor);
    expect(emu.isTokenValid(brokerToken(oldAccessor)!)).toBe(true);
    expect((await login(secretId)).auth.client_token).toEqual(expect.any(String));
    expect([...emu.state.space('').approles.get('approle/jit-broker')!.secretIds.keys()]).toEqual([secretId]);
    expect((await p.issue(request(tokenRole(['ops-read'])))).credentials.token).toEqual(expect.any(String));

    // Sealed before anything happened: same outcome, 502 (an upstream failure).
    emu.seal();
    expect(await rejection(p.rotate())).toMatchObject({ status: 502, code: 'upstream_sealed' });
    emu.unseal();
    expect((await login(secretId)).auth.client_token).toEqual(expect.any(String));
  });

  /** An in-memory journal (the core's seals `pending` into Redis; see test/ops/rotation-vault-pending.test.ts). */
  function memoryJournal() {
    const events: string[] = [];
    const state: { intent: RotationIds | undefined; recorded: string[] } = { intent: undefined, recorded: [] };
    const journal: RotationJournal = {
      leftover: undefined,
      record: async ({ pending, ...ids }) => {
        // As the core's: an absent list leaves the recorded one as it is.
        state.intent = { ...ids, pending: pending ?? state.intent?.pending ?? [] };
        for (const e of pending ?? []) if (!state.recorded.includes(e.secret)) state.recorded.push(e.secret);
        const out = pending?.some((e) => e.handedOut) ? ', handed out' : '';
        events.push(`record ${pending?.length ?? '-'} pending${out} (after ${emu.requests.length} requests)`);
      },
      clear: async () => {
        state.intent = undefined;
        events.push('clear');
      },
      fence: async () => {},
    };
    return { events, state, journal };
  }
  const base = 'auth/approle/role/jit-broker';
  const seen = () => emu.requests.length;
  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

  test('the new secret-id is in the intent before Vault is asked; a failed call destroys it by value and keeps the intent unless Vault refused', async () => {
    const { events, state, journal } = memoryJournal();

    // A 5xx: Vault may have made it, or may still make it. The token that sent it is replaced and revoked
    // (a create still on its way fails with 403), it is destroyed at once by value, and the intent still names it.
    const sender = brokerToken(p.tokenAccessor!)!;
    emu.injectFault({ path: `${base}/custom-secret-id`, status: 500, errors: ['internal error'] });
    let before = seen();
    expect(await rejection(p.rotate(undefined, undefined, journal))).toMatchObject({ status: 502, code: 'upstream_unavailable' });
    const pending = state.intent?.pending?.[0];
    expect(state.intent?.pending).toHaveLength(1);
    expect(pending?.secret).toMatch(UUID);
    expect(pending?.sentAt).toBeGreaterThan(Date.now() - 10_000);
    expect(events).toEqual([`record 1 pending (after ${before + 1} requests)`]);
    expect(emu.requests.slice(before).map((r) => `${r.path.replace(`${base}/`, '')} ${r.status}`)).toEqual([
      'secret-id/lookup 200',
      'custom-secret-id 500',
      'auth/approle/login 200',
      'auth/token/revoke-self 204',
      'secret-id/destroy 204',
    ]);
    expect(emu.isTokenValid(sender)).toBe(false);

    // Vault refused it plainly (400): destroyed all the same, the token kept, and the intent cleared.
    events.length = 0;
    const kept = p.tokenAccessor;
    emu.injectFault({ path: `${base}/custom-secret-id`, status: 400, errors: ['bad request'] });
    before = seen();
    expect(await rejection(p.rotate(undefined, undefined, journal))).toMatchObject({ status: 502 });
    expect(events).toEqual([`record 1 pending (after ${before + 1} requests)`, 'clear']);
    expect(state.intent).toBeUndefined();
    expect(p.tokenAccessor).toBe(kept);

    // A clean rotation: the secret-id in use is the one recorded before the call, marked handed out before
    // it is distributed (after lookup, create, login and the old token's revoke-self).
    events.length = 0;
    before = seen();
    const r = await p.rotate(undefined, undefined, journal);
    expect(state.recorded.at(-1)).toBe(r.secret.secretId);
    expect(events).toEqual([
      `record 1 pending (after ${before + 1} requests)`,
      `record 1 pending, handed out (after ${before + 4} requests)`,
      'clear',
    ]);
    expect(emu.isSecretIdValid('jit-broker', r.secret.secretId!)).toBe(true);
    expect([...emu.state.space('').approles.get('approle/jit-broker')!.secretIds.keys()]).toEqual([r.secret.secretId]);
  });

  test.each([408, 499])(
    'a proxy answering %i is not a refusal: the create may still reach Vault, so the intent keeps it',
    async (status) => {
      const { events, state, journal } = memoryJournal();
      const sender = brokerToken(p.tokenAccessor!)!;
      emu.injectFault({ path: `${base}/custom-secret-id`, status, errors: ['from a proxy'] });
      expect(await rejection(p.rotate(undefined, undefined, journal))).toMatchObject({ status: 502 });
      // Before: taken for Vault refusing it, and the intent cleared.
      expect(events).toEqual([expect.stringMatching(/^record 1 pending/)]);
      expect(state.intent?.pending?.[0]?.secret).toMatch(UUID);
      expect(emu.isTokenValid(sender)).toBe(false);
    },
  );

  test('useSecret: another instance picks up the rotated secret-id', async () => {
    const other = await provider(approleSettings(emu, roleId, secretId));
    try {
      const otherOld = other.tokenAccessor!;
      const r = await p.rotate();
      await other.useSecret(r.secret);
      expect(other.tokenAccessor).not.toBe(otherOld);
      expect(emu.tokenByAccessor(otherOld)).toBeUndefined();
      expect((await other.issue(request(tokenRole(['ops-read'])))).credentials.token).toEqual(expect.any(String));
      expect(await rejection(other.useSecret({ secretId: 'not-a-secret-id' }))).toMatchObject({ status: 502 });
      expect((await other.issue(request(tokenRole(['ops-read'])))).credentials.token).toEqual(expect.any(String));
    } finally {
      await other.close();
    }
  });

  test('token auth cannot rotate: 400 rotation_unsupported', async () => {
    const { token } = emu.createToken({ policies: ['jit-broker'] });
    const t = await provider({ address: emu.url, requestTimeoutMs: 2000, auth: { token } } as never);
    try {
      expect(await rejection(t.rotate())).toMatchObject({ status: 400, code: 'rotation_unsupported' });
    } finally {
      await t.close();
    }
  });
});
