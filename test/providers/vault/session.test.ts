import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError } from '../../../src/errors.ts';
import { startVaultEmulator } from '../../emulators/vault/index.ts';
import {
  approleSettings,
  BROKER_POLICY,
  pathRole,
  provider,
  rejection,
  request,
  tokenRole,
  vaultClient,
  vaultWithBroker,
  waitFor,
} from './helpers.ts';

describe("the broker's own Vault token", () => {
  test('is renewed before it expires, and replaced by a new login when renewal reaches the max TTL', async () => {
    const { emu, roleId, secretId } = await vaultWithBroker({ tokenTtl: 2, tokenMaxTtl: 4 });
    const p = await provider(approleSettings(emu, roleId, secretId));
    try {
      const first = p.tokenAccessor!;
      await waitFor(() => emu.requests.some((r) => r.path === 'auth/token/renew-self' && r.status === 200), 3000);
      expect(emu.tokenByAccessor(first)?.lastRenewal).not.toBeNull();
      // Near the 4 s max TTL Vault caps the renewal; the broker logs in again (~3.3 s) and issuance never fails.
      const deadline = Date.now() + 5000;
      while (p.tokenAccessor === first && Date.now() < deadline) {
        await p.issue(request(tokenRole(['ops-read']), { ttlSeconds: 5 }));
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(p.tokenAccessor).not.toBe(first);
      expect(emu.requests.some((r) => r.path === 'auth/token/renew-self' && r.status === 200)).toBe(true);
      // Replaced while it still had time left, so the broker revoked it (it did not just expire).
      await waitFor(() => emu.tokenByAccessor(first) === undefined, 500);
      expect(emu.requests.some((r) => r.path === 'auth/token/revoke-self' && r.status === 204)).toBe(true);
      expect(emu.requests.filter((r) => r.path === 'auth/approle/login').length).toBeGreaterThanOrEqual(2);
      expect(emu.requests.filter((r) => r.path === 'auth/token/create-orphan').every((r) => r.status === 200)).toBe(true);
    } finally {
      await p.close();
      await emu.stop();
    }
  });

  test('is re-acquired after an operator revokes it, and credentials issued before survive (they are orphans)', async () => {
    const { emu, roleId, secretId } = await vaultWithBroker();
    const p = await provider(approleSettings(emu, roleId, secretId));
    try {
      const tokenBefore = await p.issue(request(tokenRole(['ops-read'])));
      const dbBefore = await p.issue(request(pathRole('database/creds/orders')));
      const lostAccessor = p.tokenAccessor!;
      const brokerToken = [...emu.state.tokens.values()].find((t) => t.accessor === lostAccessor)!.id;
      emu.revokeToken(brokerToken);
      const after = await p.issue(request(tokenRole(['ops-read'])));
      expect(after.credentials.token).toEqual(expect.any(String));
      expect(p.tokenAccessor).not.toBe(lostAccessor);
      expect(emu.tokenByAccessor(p.tokenAccessor!)).toBeDefined();
      expect(emu.isTokenValid(tokenBefore.credentials.token as string)).toBe(true);
      expect(emu.isDbUserValid(dbBefore.credentials.username as string)).toBe(true);
      // The 403 was probed with lookup-self before logging in again.
      const paths = emu.requests.map((r) => `${r.path} ${r.status}`);
      const i = paths.lastIndexOf('auth/token/create-orphan 403');
      expect(paths.slice(i, i + 4)).toEqual([
        'auth/token/create-orphan 403',
        'auth/token/lookup-self 403',
        'auth/approle/login 200',
        'auth/token/create-orphan 200',
      ]);
    } finally {
      await p.close();
      await emu.stop();
    }
  });

  test('a genuine ACL denial is not mistaken for a lost token (no re-login)', async () => {
    const { emu, roleId, secretId } = await vaultWithBroker();
    emu.setPolicy(
      'jit-broker',
      BROKER_POLICY.filter((x) => x !== 'auth/token/create-orphan'),
    );
    const p = await provider(approleSettings(emu, roleId, secretId));
    try {
      const err = await rejection(p.issue(request(tokenRole(['ops-read']))));
      expect(err).toMatchObject({ status: 502, code: 'upstream_denied' });
      expect(emu.requests.filter((r) => r.path === 'auth/approle/login')).toHaveLength(1);
    } finally {
      await p.close();
      await emu.stop();
    }
  });

  test('token auth: a static token (string or file) is used as is and never revoked by the broker', async () => {
    const { emu } = await vaultWithBroker();
    const { token, accessor } = emu.createToken({ policies: ['jit-broker', 'ops-read'], ttl: 600 });
    const p = await provider({ address: emu.url, requestTimeoutMs: 2000, auth: { token } } as never);
    try {
      expect(p.tokenAccessor).toBe(accessor);
      const res = await p.issue(request(tokenRole(['ops-read'])));
      expect(emu.tokenByAccessor(res.credentials.accessor as string)?.policies).toEqual(['ops-read']);
      expect(await p.ready()).toBe(true);
      const file = join(mkdtempSync(join(tmpdir(), 'vault-token-')), 'token');
      writeFileSync(file, `${token}\n`);
      const fromFile = await provider({ address: emu.url, requestTimeoutMs: 2000, auth: { token: { file } } } as never);
      expect(fromFile.tokenAccessor).toBe(accessor);
      await fromFile.close();
    } finally {
      await p.close();
    }
    expect(emu.isTokenValid(token)).toBe(true);
    await emu.stop();
  });

  test('credentials Vault refuses fail startup naming the config key', async () => {
    const { emu, roleId } = await vaultWithBroker();
    try {
      const err = await rejection(provider(approleSettings(emu, roleId, 'not-the-secret')));
      expect(err).toBeInstanceOf(ConfigError);
      expect(err.message).toContain('providers.vault.auth');
      expect(err.message).not.toContain('not-the-secret');
      const bad = await rejection(provider({ address: emu.url, requestTimeoutMs: 2000, auth: { token: 'hvs.wrong' } } as never));
      expect(bad).toBeInstanceOf(ConfigError);
    } finally {
      await emu.stop();
    }
  });

  test('namespace: every call carries X-Vault-Namespace', async () => {
    const emu = await startVaultEmulator({
      namespaces: ['team-a'],
      policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] },
    });
    const { roleId, secretId } = emu.createAppRole({ name: 'jit-broker', policies: ['jit-broker', 'ops-read'], namespace: 'team-a' });
    emu.createDatabaseRole('orders', { namespace: 'team-a' });
    const p = await provider(approleSettings(emu, roleId, secretId, { namespace: 'team-a/' }));
    try {
      const t = await p.issue(request(tokenRole(['ops-read'])));
      const d = await p.issue(request(pathRole('database/creds/orders')));
      expect(d.credentials.lease_id).toMatch(/^database\/creds\/orders\/[A-Za-z0-9]{24}\.[A-Za-z0-9]{5}$/);
      expect(t.handle).toMatchObject({ namespace: 'team-a', address: emu.url });
      expect(d.handle).toMatchObject({ namespace: 'team-a', address: emu.url });
      const look = await vaultClient(emu, emu.rootToken).write('team-a/auth/token/lookup-accessor', { accessor: t.credentials.accessor });
      expect(look.data.policies).toEqual(['ops-read']);
      expect(emu.requests.filter((r) => r.path !== 'sys/health').every((r) => r.namespace === 'team-a')).toBe(true);
    } finally {
      await p.close();
      await emu.stop();
    }
  });
});
