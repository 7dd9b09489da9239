import type { VaultProvider } from '../../../src/providers/vault/index.ts';
import type { VaultEmulator } from '../../emulators/vault/index.ts';
import {
  approleSettings,
  leaseOf,
  provider,
  rejection,
  request,
  tokenRole,
  vaultClient,
  vaultFailure,
  vaultWithBroker,
} from './helpers.ts';

let emu: VaultEmulator;
let p: VaultProvider;
beforeAll(async () => {
  const v = await vaultWithBroker();
  emu = v.emu;
  p = await provider(approleSettings(emu, v.roleId, v.secretId));
  await vaultClient(emu, emu.rootToken).write('secret/ops/db', { password: 'kv-value' });
});
afterAll(async () => {
  await p.close();
  await emu.stop();
});
afterEach(() => {
  expect(emu.unhandled).toEqual([]);
});

describe('vault token roles', () => {
  test('an orphan token with exactly the requested policies, created short-lived and extended to the TTL once recorded', async () => {
    const req = request(tokenRole(['ops-read', 'ops-write']), { ttlSeconds: 90 });
    const res = await p.issue(req);
    // Until the core has recorded the lease and confirmed, the token lives only issueTtlSeconds (60 s).
    expect(emu.tokenByAccessor(res.credentials.accessor as string)).toMatchObject({ creationTtl: 60, explicitMaxTtl: 90, renewable: true });
    await p.confirm(req, res);
    expect(res.credentials).toEqual({
      token: expect.stringMatching(/^hvs\./),
      accessor: expect.any(String),
      policies: ['ops-read', 'ops-write'],
      expires_in: 90,
    });
    // Where it was made (root namespace: ''), so a later change of namespace or address cannot misdirect its revocation.
    expect(res.handle).toEqual({ kind: 'token', accessor: res.credentials.accessor, namespace: '', address: emu.url });
    expect(JSON.stringify(res.handle)).not.toContain(res.credentials.token as string);
    expect(res.expiresAt).toBeGreaterThan(Date.now() + 85_000);
    expect(res.expiresAt).toBeLessThanOrEqual(Date.now() + 90_000);

    const look = await vaultClient(emu, emu.rootToken).write('auth/token/lookup-accessor', { accessor: res.credentials.accessor });
    expect(look.data.ttl).toBeGreaterThan(85);
    expect(look.data).toMatchObject({
      policies: ['ops-read', 'ops-write'],
      creation_ttl: 60,
      explicit_max_ttl: 90,
      renewable: true,
      orphan: true,
      meta: { task_id: 't-vault', agent: 'spiffe://dev.local/agent/support', lease_id: req.leaseId, role: 'vault-ops' },
      display_name: `token-jit-vault-ops-${req.leaseId}`,
      path: 'auth/token/create-orphan',
      num_uses: 0,
    });
    // The agent can use it on the role's paths, and only there (no default policy: not even lookup-self).
    const agent = vaultClient(emu, res.credentials.token as string);
    expect((await agent.read('secret/ops/db')).data).toEqual({ password: 'kv-value' });
    expect((await vaultFailure(agent.read('auth/token/lookup-self'))).status).toBe(403);
  });

  test("the token carries exactly the requested policies: never the role's whole set in place of a narrower or empty list", async () => {
    const res = await p.issue(request(tokenRole(['ops-read', 'ops-write']), { scopes: ['ops-read'] }));
    expect(res.credentials.policies).toEqual(['ops-read']);
    expect(emu.tokenByAccessor(res.credentials.accessor as string)?.policies).toEqual(['ops-read']);
    // The core refuses an empty list (400 scopes_empty) before calling the provider; the provider never widens it.
    const none = await p.issue(request(tokenRole(['ops-read', 'ops-write']), { scopes: [] }));
    expect(emu.tokenByAccessor(none.credentials.accessor as string)?.policies).toEqual([]);
  });

  test('an issuance never confirmed (the broker died before recording it) leaves a token that dies by itself', async () => {
    const res = await p.issue(request(tokenRole(['ops-read']), { ttlSeconds: 3600 }));
    const agent = vaultClient(emu, res.credentials.token as string);
    await agent.read('secret/ops/db');
    emu.advanceTime(61);
    expect((await vaultFailure(agent.read('secret/ops/db'))).status).toBe(403);
  });

  test('role num_uses and the default policy option reach Vault', async () => {
    const res = await p.issue(request(tokenRole(['ops-read'], { numUses: 2, defaultPolicy: true })));
    expect(emu.tokenByAccessor(res.credentials.accessor as string)).toMatchObject({ numUses: 2, policies: ['default', 'ops-read'] });
    const agent = vaultClient(emu, res.credentials.token as string);
    expect((await agent.read('auth/token/lookup-self')).data.explicit_max_ttl).toBe(120);
    await agent.read('secret/ops/db');
    expect((await vaultFailure(agent.read('secret/ops/db'))).status).toBe(403);
  });

  test('a policy the broker itself lacks is a clear 502 upstream error (child policies must be a subset)', async () => {
    const err = await rejection(p.issue(request(tokenRole(['db-admin']))));
    expect(err).toMatchObject({ status: 502, code: 'upstream_error' });
  });

  test('revoke makes the token unusable (403 through node-vault) and is idempotent', async () => {
    const req = request(tokenRole(['ops-read']));
    const res = await p.issue(req);
    const agent = vaultClient(emu, res.credentials.token as string);
    await agent.read('secret/ops/db');
    await p.revoke(leaseOf(req, res));
    const denied = await vaultFailure(agent.read('secret/ops/db'));
    expect(denied.status).toBe(403);
    expect(denied.errors![0]).toContain('permission denied');
    // Vault answers 400 "invalid accessor" now; the provider counts that as done.
    await expect(p.revoke(leaseOf(req, res))).resolves.toBeUndefined();
    await expect(p.expire(leaseOf(req, res))).resolves.toBeUndefined();
    expect(emu.requests.filter((r) => r.path === 'auth/token/revoke-accessor').map((r) => r.status)).toEqual([204, 400, 400]);
  });

  test('a lease without a handle (issue never reached Vault) revokes as a no-op', async () => {
    const req = request(tokenRole(['ops-read']));
    await expect(p.revoke({ ...leaseOf(req, { credentials: {}, handle: {}, expiresAt: 0 }) })).resolves.toBeUndefined();
  });
});
