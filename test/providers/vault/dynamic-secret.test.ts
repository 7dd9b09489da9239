import type { VaultProvider } from '../../../src/providers/vault/index.ts';
import type { VaultEmulator } from '../../emulators/vault/index.ts';
import { approleSettings, leaseOf, pathRole, provider, rejection, request, vaultClient, vaultWithBroker } from './helpers.ts';

let emu: VaultEmulator;
let p: VaultProvider;
beforeAll(async () => {
  const v = await vaultWithBroker();
  emu = v.emu;
  p = await provider(approleSettings(emu, v.roleId, v.secretId));
});
afterAll(async () => {
  await p.close();
  await emu.stop();
});
afterEach(() => {
  expect(emu.unhandled).toEqual([]);
});

describe('vault dynamic secrets', () => {
  test('database creds: the data plus lease_id and lease_duration; the handle keeps the lease id, never the password', async () => {
    const req = request(pathRole('database/creds/orders'), { ttlSeconds: 120 });
    const res = await p.issue(req);
    expect(res.credentials).toEqual({
      username: expect.any(String),
      password: expect.any(String),
      lease_id: expect.stringMatching(/^database\/creds\/orders\/[A-Za-z0-9]{24}$/),
      lease_duration: 120,
    });
    expect(res.handle).toMatchObject({
      kind: 'secret',
      leaseId: res.credentials.lease_id,
      path: 'database/creds/orders',
      accessor: expect.any(String),
    });
    expect(JSON.stringify(res.handle)).not.toContain(res.credentials.password as string);
    // Vault's lease outlasts the TTL: the secret ends with the lease, and the handle says so (a handle without
    // endsBy is the previous release's, src/leases/credential-end.ts).
    expect(res.handle.endsBy).toBe(res.expiresAt);
    expect(emu.isDbUserValid(res.credentials.username as string)).toBe(true);
    // Read with a per-lease reader token that Vault expires at the effective TTL.
    expect(emu.tokenByAccessor(res.handle.accessor as string)).toMatchObject({
      explicitMaxTtl: 120,
      creationTtl: 60,
      renewable: true,
      orphan: true,
    });
    const look = await vaultClient(emu, emu.rootToken).write('sys/leases/lookup', { lease_id: res.credentials.lease_id });
    expect(look.data.ttl).toBeGreaterThan(3500);
  });

  test('revoke drops the database user through sys/leases/revoke, and is idempotent', async () => {
    const req = request(pathRole('database/creds/orders'));
    const res = await p.issue(req);
    await p.revoke(leaseOf(req, res));
    expect(emu.isDbUserValid(res.credentials.username as string)).toBe(false);
    expect(emu.leaseExists(res.credentials.lease_id as string)).toBe(false);
    expect(emu.requests.filter((r) => r.path === 'sys/leases/revoke').at(-1)?.status).toBe(204);
    await expect(p.revoke(leaseOf(req, res))).resolves.toBeUndefined();
  });

  test('Vault itself ends the secret at the effective TTL, even if the broker never revokes it', async () => {
    const res = await p.issue(request(pathRole('database/creds/orders'), { ttlSeconds: 30 }));
    emu.advanceTime(29);
    expect(emu.isDbUserValid(res.credentials.username as string)).toBe(true);
    emu.advanceTime(2);
    expect(emu.isDbUserValid(res.credentials.username as string)).toBe(false);
  });

  test('a lease shorter than the TTL bounds the expiry', async () => {
    emu.createDatabaseRole('short', { defaultTtl: 45, maxTtl: 45 });
    const res = await p.issue(request(pathRole('database/creds/short'), { ttlSeconds: 600 }));
    expect(res.credentials.lease_duration).toBe(45);
    expect(res.expiresAt).toBeLessThanOrEqual(Date.now() + 45_000);
  });

  test('a path the broker may not read is 502 upstream_denied, and the reader token is revoked', async () => {
    emu.createAwsRole('deploy');
    const err = await rejection(p.issue(request(pathRole('aws/creds/deploy'))));
    expect(err).toMatchObject({ status: 502, code: 'upstream_denied' });
    const readers = emu.requests.filter((r) => r.path === 'auth/token/revoke-accessor');
    expect(readers.at(-1)?.status).toBe(204);
  });

  test('an unknown role is a 502 upstream_error', async () => {
    const err = await rejection(p.issue(request(pathRole('database/creds/nope'))));
    expect(err).toMatchObject({ status: 502, code: 'upstream_error' });
  });

  test('a path without a lease (a static KV secret) is refused: it could never be revoked', async () => {
    emu.setPolicy('jit-broker', [...emu.state.policies.get('jit-broker')!, 'secret/*']);
    await vaultClient(emu, emu.rootToken).write('secret/static', { password: 'x' });
    const err = await rejection(p.issue(request(pathRole('secret/static'))));
    expect(err).toMatchObject({ status: 502, code: 'upstream_not_leased' });
  });
});
