import nodeVault from 'node-vault';
import { startVaultEmulator, type VaultEmulator } from './index.ts';

let emu: VaultEmulator;
beforeAll(async () => {
  emu = await startVaultEmulator({
    namespaces: ['team-a'],
    policies: { 'db-read': ['database/creds/*'], issuer: ['auth/token/create', 'auth/token/create-orphan'], web: ['secret/web'] },
  });
  emu.createDatabaseRole('orders', { defaultTtl: 60, maxTtl: 120 });
});
afterAll(async () => {
  await emu.stop();
});
afterEach(() => {
  expect(emu.unhandled).toEqual([]);
});

const client = (token?: string, extra: Record<string, unknown> = {}) => {
  const c = nodeVault({ endpoint: emu.url, ...(token ? { token } : {}), ...extra });
  if (!token) c.token = '';
  return c;
};
/** The status and body a node-vault call rejected with. */
async function failure(p: Promise<unknown>): Promise<{ status?: number; errors?: string[]; code?: string }> {
  try {
    await p;
  } catch (err) {
    const e = err as { response?: { statusCode: number; body: { errors?: string[] } }; code?: string };
    return { status: e.response?.statusCode, errors: e.response?.body?.errors, code: e.code };
  }
  throw new Error('expected the call to fail');
}

describe('token store', () => {
  test('create answers the full envelope; meta comes back as metadata; policies sorted with default', async () => {
    const root = client(emu.rootToken);
    const r = await root.write('auth/token/create', {
      policies: ['web', 'db-read'],
      meta: { task_id: 't1' },
      ttl: '120s',
      explicit_max_ttl: '90s',
      num_uses: 3,
      renewable: false,
      display_name: 'jit lease/1',
    });
    expect(Object.keys(r).sort()).toEqual([
      'auth',
      'data',
      'lease_duration',
      'lease_id',
      'mount_type',
      'renewable',
      'request_id',
      'warnings',
      'wrap_info',
    ]);
    expect(r).toMatchObject({ data: null, wrap_info: null, lease_id: '', renewable: false, lease_duration: 0 });
    expect(r.warnings).toEqual(expect.arrayContaining([expect.stringContaining('explicit max TTL')]));
    expect(r.auth).toMatchObject({
      policies: ['db-read', 'default', 'web'],
      metadata: { task_id: 't1' },
      lease_duration: 90,
      renewable: false,
      num_uses: 3,
      orphan: false,
      token_type: 'service',
      mfa_requirement: null,
      entity_id: '',
    });
    expect(r.auth.client_token).toMatch(/^hvs\.[A-Za-z0-9]{24}$/);
    expect(r.auth.accessor).toMatch(/^[A-Za-z0-9]{24}$/);
    const look = await root.write('auth/token/lookup-accessor', { accessor: r.auth.accessor });
    expect(look.data).toMatchObject({
      id: '',
      display_name: 'token-jit-lease-1',
      explicit_max_ttl: 90,
      meta: { task_id: 't1' },
      num_uses: 3,
      path: 'auth/token/create',
    });
  });

  test('node-vault tokenCreate hijacks the client token (the pitfall the provider avoids)', async () => {
    const root = client(emu.rootToken);
    await root.tokenCreate({ policies: ['web'], ttl: '60s' });
    expect(root.token).not.toBe(emu.rootToken);
  });

  test('child policies must be a subset of the parent; ACL denies paths outside the policies', async () => {
    const { token } = emu.createToken({ policies: ['issuer', 'web'] });
    const c = client(token);
    expect(await failure(c.write('auth/token/create', { policies: ['db-read'] }))).toMatchObject({
      status: 400,
      errors: ['child policies must be subset of parent'],
    });
    const child = await c.write('auth/token/create-orphan', { policies: ['web'], no_default_policy: true, ttl: 30 });
    expect(child.auth).toMatchObject({ policies: ['web'], orphan: true, lease_duration: 30 });
    const denied = await failure(c.read('database/creds/orders'));
    expect(denied.status).toBe(403);
    expect(denied.errors![0]).toContain('permission denied');
  });

  test('unknown token: 403 naming both permission denied and invalid token; Bearer works like X-Vault-Token', async () => {
    const bad = await failure(client('hvs.nope').read('auth/token/lookup-self'));
    expect(bad.status).toBe(403);
    expect(bad.errors![0]).toMatch(/permission denied[\s\S]*invalid token/);
    const res = await fetch(`${emu.url}/v1/auth/token/lookup-self`, { headers: { authorization: `Bearer ${emu.rootToken}` } });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { data: { policies: string[] } }).data.policies).toEqual(['root']);
  });

  test('num_uses: the token dies after its last use', async () => {
    const { token } = emu.createToken({ policies: ['web'], numUses: 2 });
    const c = client(token);
    await c.read('auth/token/lookup-self');
    const second = await c.read('auth/token/lookup-self');
    expect(second.data.num_uses).toBe(0);
    expect((await failure(c.read('auth/token/lookup-self'))).status).toBe(403);
  });

  test('renew-self is capped by the explicit max TTL; non-renewable tokens refuse', async () => {
    const root = client(emu.rootToken);
    const made = await root.write('auth/token/create-orphan', { policies: ['web'], ttl: '10s', explicit_max_ttl: '15s' });
    emu.advanceTime(8);
    const renewed = await client(made.auth.client_token).write('auth/token/renew-self', { increment: '60s' });
    expect(renewed.auth.lease_duration).toBeLessThanOrEqual(7);
    expect(renewed.warnings[0]).toContain('capped');
    const fixed = await root.write('auth/token/create-orphan', { policies: ['web'], ttl: '10s', renewable: false });
    expect(await failure(client(fixed.auth.client_token).write('auth/token/renew-self', {}))).toMatchObject({
      status: 400,
      errors: ['lease is not renewable'],
    });
  });

  test('tokens expire by time', async () => {
    const made = await client(emu.rootToken).write('auth/token/create-orphan', { policies: ['web'], ttl: '5s' });
    expect(emu.isTokenValid(made.auth.client_token)).toBe(true);
    emu.advanceTime(6);
    expect(emu.isTokenValid(made.auth.client_token)).toBe(false);
    expect(await failure(client(emu.rootToken).write('auth/token/lookup-accessor', { accessor: made.auth.accessor }))).toMatchObject({
      status: 400,
      errors: ['invalid accessor'],
    });
  });

  test('revoking a parent revokes its children and their leases; revoke-accessor of an unknown accessor is 400', async () => {
    const root = client(emu.rootToken);
    const parent = await root.write('auth/token/create', { policies: ['issuer', 'db-read'] });
    const child = await client(parent.auth.client_token).write('auth/token/create', { policies: ['db-read'] });
    const creds = await client(child.auth.client_token).read('database/creds/orders');
    expect(emu.isDbUserValid(creds.data.username)).toBe(true);
    expect(await root.write('auth/token/revoke-accessor', { accessor: parent.auth.accessor })).toBe('');
    expect(emu.isTokenValid(child.auth.client_token)).toBe(false);
    expect(emu.isDbUserValid(creds.data.username)).toBe(false);
    expect(await failure(root.write('auth/token/revoke-accessor', { accessor: parent.auth.accessor }))).toMatchObject({
      status: 400,
      errors: ['invalid accessor'],
    });
  });
});

describe('dynamic secrets and leases', () => {
  test('database creds carry a <path>/<24 base62> lease; lookup copies data to the top level; node-vault revoke (PUT) drops the user', async () => {
    const root = client(emu.rootToken);
    const creds = await root.read('database/creds/orders');
    expect(creds).toMatchObject({ renewable: true, lease_duration: 60, mount_type: 'database', auth: null });
    expect(creds.lease_id).toMatch(/^database\/creds\/orders\/[A-Za-z0-9]{24}$/);
    const look = await root.write('sys/leases/lookup', { lease_id: creds.lease_id });
    // Vault writes data keys before the envelope's, so a JSON parser keeps the envelope's `renewable`.
    expect(look).toMatchObject({ id: creds.lease_id, ttl: expect.any(Number), data: { id: creds.lease_id, renewable: true } });
    const renewed = await root.renew({ lease_id: creds.lease_id, increment: 300 });
    expect(renewed.lease_duration).toBeLessThanOrEqual(120);
    await root.revoke({ lease_id: creds.lease_id });
    expect(emu.isDbUserValid(creds.data.username)).toBe(false);
    expect(await failure(root.write('sys/leases/lookup', { lease_id: creds.lease_id }))).toMatchObject({
      status: 400,
      errors: ['invalid lease'],
    });
    // Revoking an unknown lease is a no-op, as in Vault.
    expect(await root.revoke({ lease_id: creds.lease_id })).toBe('');
  });

  test('legacy PUT /sys/revoke-prefix (node-vault revokePrefix) and lease expiry', async () => {
    const root = client(emu.rootToken);
    const a = await root.read('database/creds/orders');
    await root.revokePrefix({ path_prefix: 'database/creds/orders' });
    expect(emu.isDbUserValid(a.data.username)).toBe(false);
    const b = await root.read('database/creds/orders');
    emu.advanceTime(61);
    expect(emu.isDbUserValid(b.data.username)).toBe(false);
  });

  test('aws sts creds are not renewable and carry a session token', async () => {
    emu.createAwsRole('deploy', { credentialType: 'assumed_role' });
    const r = await client(emu.rootToken).write('aws/sts/deploy', { ttl: '900s' });
    expect(r).toMatchObject({ renewable: false, lease_duration: 900 });
    expect(r.data.session_token).toEqual(expect.any(String));
    expect(r.lease_id).toMatch(/^aws\/sts\/deploy\/[A-Za-z0-9]{24}$/);
  });
});

describe('approle', () => {
  test('login, secret-id lifecycle, LIST verb and ?list=1 alike', async () => {
    emu.setPolicy('broker', ['auth/approle/role/broker/*']);
    const { roleId, secretId } = emu.createAppRole({ name: 'broker', policies: ['broker'], tokenTtl: 60, tokenMaxTtl: 120 });
    const anon = client();
    const login = await anon.approleLogin({ role_id: roleId, secret_id: secretId });
    expect(login.auth).toMatchObject({
      policies: ['broker', 'default'],
      metadata: { role_name: 'broker' },
      lease_duration: 60,
      renewable: true,
      orphan: true,
    });
    const c = client(login.auth.client_token);
    expect((await c.read('auth/approle/role/broker/role-id')).data.role_id).toBe(roleId);
    const gen = await c.write('auth/approle/role/broker/secret-id', { metadata: JSON.stringify({ by: 'test' }) });
    expect(gen.data).toMatchObject({ secret_id_ttl: 0, secret_id_num_uses: 0 });
    const looked = await c.write('auth/approle/role/broker/secret-id/lookup', { secret_id: gen.data.secret_id });
    expect(looked.data).toMatchObject({
      secret_id_accessor: gen.data.secret_id_accessor,
      metadata: { by: 'test' },
      expiration_time: '0001-01-01T00:00:00Z',
    });
    const listed = await c.list('auth/approle/role/broker/secret-id');
    expect(listed.data.keys).toContain(gen.data.secret_id_accessor);
    const listedQ = await client(login.auth.client_token, { noCustomHTTPVerbs: true }).list('auth/approle/role/broker/secret-id');
    expect(listedQ.data.keys.sort()).toEqual(listed.data.keys.sort());
    await c.write('auth/approle/role/broker/secret-id-accessor/destroy', { secret_id_accessor: gen.data.secret_id_accessor });
    expect(await failure(client().write('auth/approle/login', { role_id: roleId, secret_id: gen.data.secret_id }))).toMatchObject({
      status: 400,
      errors: ['invalid role or secret ID'],
    });
    expect(await c.write('auth/approle/role/broker/secret-id/lookup', { secret_id: gen.data.secret_id })).toBe('');
  });

  test('custom-secret-id: the caller chooses the value, answered like generate; missing 400, already registered 500; denied by a policy without the path', async () => {
    emu.setPolicy('custom', ['auth/approle/role/custom/*']);
    emu.setPolicy('custom-generate-only', ['auth/approle/role/custom/secret-id', 'auth/approle/role/custom/secret-id/*']);
    const { roleId } = emu.createAppRole({ name: 'custom', policies: ['custom'] });
    const c = client(emu.createToken({ policies: ['custom'] }).token);
    const mine = '0b6c8f7e-3d1a-4c2b-9e5f-7a8d6c4b2e1f';
    const made = await c.write('auth/approle/role/custom/custom-secret-id', { secret_id: mine, metadata: JSON.stringify({ by: 'test' }) });
    expect(Object.keys(made.data).sort()).toEqual(['secret_id', 'secret_id_accessor', 'secret_id_num_uses', 'secret_id_ttl']);
    expect(made.data).toMatchObject({ secret_id: mine, secret_id_accessor: expect.any(String), secret_id_ttl: 0, secret_id_num_uses: 0 });
    expect((await client().write('auth/approle/login', { role_id: roleId, secret_id: mine })).auth.client_token).toEqual(
      expect.any(String),
    );
    expect((await c.write('auth/approle/role/custom/secret-id/lookup', { secret_id: mine })).data.metadata).toEqual({ by: 'test' });

    expect(await failure(c.write('auth/approle/role/custom/custom-secret-id', {}))).toMatchObject({
      status: 400,
      errors: ['missing secret_id'],
    });
    // Vault answers registerSecretIDEntry's error as an internal one.
    expect(await failure(c.write('auth/approle/role/custom/custom-secret-id', { secret_id: mine }))).toMatchObject({
      status: 500,
      errors: ['1 error occurred:\n\t* failed to store secret_id: SecretID is already registered\n\n'],
    });
    // Destroyed by value, it can be registered again; an unknown one destroys as 204.
    await c.write('auth/approle/role/custom/secret-id/destroy', { secret_id: mine });
    expect(await c.write('auth/approle/role/custom/secret-id/destroy', { secret_id: mine })).toBe('');
    expect(emu.isSecretIdValid('custom', mine)).toBe(false);

    // A policy granting generate but not custom-secret-id: 403 permission denied, nothing registered.
    const narrow = client(emu.createToken({ policies: ['custom-generate-only'] }).token);
    expect(await failure(narrow.write('auth/approle/role/custom/custom-secret-id', { secret_id: mine }))).toMatchObject({
      status: 403,
      errors: ['1 error occurred:\n\t* permission denied\n\n'],
    });
    expect(emu.isSecretIdValid('custom', mine)).toBe(false);
    expect((await narrow.write('auth/approle/role/custom/secret-id', {})).data.secret_id).toEqual(expect.any(String));
  });
});

describe('namespaces', () => {
  test('X-Vault-Namespace and a path prefix reach the same namespace; other namespaces do not see its tokens', async () => {
    emu.createAppRole({ name: 'ns-broker', policies: ['issuer'], namespace: 'team-a' });
    emu.setPolicy('issuer', ['auth/token/create', 'auth/token/create-orphan', 'auth/token/lookup-accessor']);
    const { roleId, secretId } = emu.createAppRole({ name: 'ns-broker', policies: ['issuer'], namespace: 'team-a' });
    const login = await client(undefined, { namespace: 'team-a' }).write('auth/approle/login', { role_id: roleId, secret_id: secretId });
    expect(login.auth.accessor).toMatch(/^[A-Za-z0-9]{24}\.[A-Za-z0-9]{5}$/);
    const inNs = client(login.auth.client_token, { namespace: 'team-a' });
    const child = await inNs.write('auth/token/create-orphan', { ttl: '60s' });
    expect(
      (await client(login.auth.client_token).write('team-a/auth/token/lookup-accessor', { accessor: child.auth.accessor })).data.policies,
    ).toEqual(['default', 'issuer']);
    expect(await failure(client(emu.rootToken).write('auth/token/lookup-accessor', { accessor: child.auth.accessor }))).toMatchObject({
      status: 400,
    });
    expect(await failure(client(emu.rootToken).write('auth/approle/login', { role_id: roleId, secret_id: secretId }))).toMatchObject({
      status: 400,
    });
  });
  test('a parent-namespace token acts in a child namespace under policies naming the child path; accessors and leases are per namespace', async () => {
    emu.addNamespace('team-c');
    emu.createDatabaseRole('orders', { namespace: 'team-a' });
    emu.setPolicy('parent-revoker', ['team-a/auth/token/revoke-accessor', 'team-a/sys/leases/revoke', 'auth/token/revoke-accessor']);
    const parent = emu.createToken({ policies: ['parent-revoker'] }).token;
    const inA = emu.createToken({ policies: ['db-read'], namespace: 'team-a' });
    const inC = emu.createToken({ policies: ['issuer'], namespace: 'team-c' }).token;
    const read = await client(inA.token, { namespace: 'team-a' }).read('database/creds/orders');
    expect(read.lease_id).toMatch(/^database\/creds\/orders\/[A-Za-z0-9]{24}\.[A-Za-z0-9]{5}$/);
    // Root namespace: neither the accessor nor the lease is known there.
    expect(await failure(client(parent).write('auth/token/revoke-accessor', { accessor: inA.accessor }))).toMatchObject({
      status: 400,
      errors: ['invalid accessor'],
    });
    // A sibling namespace's token cannot act in team-a at all.
    expect(
      await failure(client(inC, { namespace: 'team-a' }).write('auth/token/revoke-accessor', { accessor: inA.accessor })),
    ).toMatchObject({ status: 403 });
    // The parent's policy for the plain path does not reach into team-a; the one naming team-a/ does.
    emu.setPolicy('parent-plain', ['auth/token/revoke-accessor']);
    const plain = emu.createToken({ policies: ['parent-plain'] }).token;
    expect(
      await failure(client(plain, { namespace: 'team-a' }).write('auth/token/revoke-accessor', { accessor: inA.accessor })),
    ).toMatchObject({ status: 403 });
    expect(emu.isTokenValid(inA.token)).toBe(true);
    await client(parent, { namespace: 'team-a' }).write('sys/leases/revoke', { lease_id: read.lease_id });
    expect(emu.leaseExists(read.lease_id)).toBe(false);
    await client(parent, { namespace: 'team-a' }).write('auth/token/revoke-accessor', { accessor: inA.accessor });
    expect(emu.isTokenValid(inA.token)).toBe(false);
  });
});

describe('failure modes', () => {
  test('sealed: 503 "Vault is sealed" except sys/health (503 body, resolved by node-vault) and sys/seal-status', async () => {
    emu.seal();
    try {
      const root = client(emu.rootToken);
      expect(await failure(root.read('auth/token/lookup-self'))).toMatchObject({ status: 503, errors: ['Vault is sealed'] });
      expect(await root.health()).toMatchObject({ sealed: true, initialized: true });
      expect((await fetch(`${emu.url}/v1/sys/health`)).status).toBe(503);
      expect((await fetch(`${emu.url}/v1/sys/health?sealedcode=200`)).status).toBe(200);
      expect(await root.read('sys/seal-status')).toMatchObject({ sealed: true, type: 'shamir' });
    } finally {
      emu.unseal();
    }
    expect((await fetch(`${emu.url}/v1/sys/health`)).status).toBe(200);
  });

  test('down: connections refused, then back on the same port', async () => {
    await emu.setDown(true);
    expect((await failure(client(emu.rootToken).read('auth/token/lookup-self'))).code).toBe('ECONNREFUSED');
    await emu.setDown(false);
    expect((await client(emu.rootToken).read('auth/token/lookup-self')).data.policies).toEqual(['root']);
  });

  test('loud on anything it does not implement: unknown path 404, bad JSON 400, unknown parameter 400, wrong verb 405', async () => {
    const h = { 'x-vault-token': emu.rootToken };
    const unknown = await fetch(`${emu.url}/v1/kv/data/nope`, { headers: h });
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as { errors: string[] }).errors[0]).toContain('unsupported path');
    expect(emu.unhandled.splice(0)).toEqual(['GET kv/data/nope']);
    const bad = await fetch(`${emu.url}/v1/auth/token/create`, { method: 'POST', headers: h, body: '{"policies":' });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { errors: string[] }).errors[0]).toContain('failed to parse JSON input');
    expect(await failure(client(emu.rootToken).write('auth/token/create', { polices: ['web'] }))).toMatchObject({
      status: 400,
      errors: ['unrecognized parameters: polices'],
    });
    const wrongVerb = await fetch(`${emu.url}/v1/auth/token/create`, { headers: h });
    expect(wrongVerb.status).toBe(405);
    expect(emu.unhandled.splice(0)).toHaveLength(1);
  });

  test('injected faults answer the given status once', async () => {
    emu.injectFault({ path: 'auth/token/lookup-self', status: 429, errors: ['rate limit quota exceeded'] });
    expect(await failure(client(emu.rootToken).read('auth/token/lookup-self'))).toMatchObject({
      status: 429,
      errors: ['rate limit quota exceeded'],
    });
    expect((await client(emu.rootToken).read('auth/token/lookup-self')).data.policies).toEqual(['root']);
  });
});
