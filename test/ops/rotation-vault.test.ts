import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import nodeVault from 'node-vault';
import type { VaultProvider } from '../../src/providers/vault/index.ts';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import {
  ADMIN,
  AGENT,
  ORCH,
  REDIS_URL,
  call,
  dropPrefix,
  startSibling,
  startTestBroker,
  uniquePrefix,
  waitFor,
  type TestBroker,
  auditRecords,
} from '../helpers/broker.ts';
import { Keys } from '../../src/redis/keys.ts';
import { BROKER_POLICY, vaultFailure } from '../providers/vault/helpers.ts';

/**
 * Issue 6 for target `vault` (AppRole auth): POST /v1/admin/rotate rotates the
 * broker's AppRole secret-id without failing a concurrent request; every
 * instance on the prefix switches; an instance that cannot decrypt the
 * distributed secret refuses to start; a rotation that fails halfway leaves
 * the old secret in use and is audited.
 */

const ROLE = 'jit-broker';
let emu: VaultEmulator;
let roleId: string;
let initialSecretId: string;
let overrides: Record<string, unknown>;
let a: TestBroker;
const extraPrefixes: string[] = [];
const agentId = `spiffe://dev.local${AGENT}`;

const vault = (token: string) => nodeVault({ endpoint: emu.url, token });
const login = (secretId: string) => vault('').write('auth/approle/login', { role_id: roleId, secret_id: secretId });
const secretIds = () => [...emu.state.space('').approles.get(`approle/${ROLE}`)!.secretIds.keys()];
const vaultOf = (b: TestBroker) => b.broker.deps.providers.get('vault') as VaultProvider;
const tokenIdOf = (accessor: string) => emu.state.accessors.get(accessor);
const auditOf = (b: TestBroker) => auditRecords(b.broker.deps.redis, b.broker.deps.keys);
const rotate = (b: TestBroker, who = ADMIN, target = 'vault') => call(b.url, 'POST', '/v1/admin/rotate', b.as(who), { target });

/**
 * Starts the broker as operators do (`node src/main.ts`, config file) on `prefix` with the
 * given KEK and the same Vault settings, and returns how it ended. A separate process, so a
 * refused start cannot leave connections behind in this one.
 */
function runMain(prefix: string, kek: string): Promise<{ code: number | null; stderr: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'jit-rot-'));
  writeFileSync(join(dir, 'kek'), kek);
  const raw = {
    server: { port: 0, publicUrl: 'http://127.0.0.1:8080' },
    redis: { url: REDIS_URL, prefix },
    secrets: { kek: { file: join(dir, 'kek') } },
    trust: [{ name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: a.issuer.bundle().keys } }],
    orchestrators: ['spiffe://dev.local/orchestrator/*'],
    admins: ['spiffe://dev.local/ops/*'],
    policies: resolve('config/policies'),
    ...overrides,
  };
  // JSON is YAML.
  writeFileSync(join(dir, 'broker.yaml'), JSON.stringify(raw));
  return new Promise((done) => {
    const child = execFile(
      process.execPath,
      ['src/main.ts'],
      {
        env: { ...process.env, BROKER_CONFIG: join(dir, 'broker.yaml'), LOG_LEVEL: 'silent' },
        timeout: 20_000,
      },
      (_err, _stdout, stderr) => done({ code: child.exitCode, stderr }),
    );
  });
}

let n = 0;
async function openTask(b: TestBroker): Promise<string> {
  const taskId = `t-rot-${++n}`;
  const r = await call(b.url, 'POST', '/v1/tasks', b.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'rotation',
    ttlSeconds: 600,
    grants: [{ role: 'vault-ops' }, { role: 'orders-db' }],
  });
  expect(r.status).toBe(201);
  return taskId;
}
const issue = (b: TestBroker, taskId: string, role = 'vault-ops') =>
  call(b.url, 'POST', '/v1/credentials', b.as(AGENT), { taskId, role, ttlSeconds: 120 });

beforeAll(async () => {
  emu = await startVaultEmulator({
    policies: { [ROLE]: BROKER_POLICY, 'ops-read': ['secret/ops/*', 'auth/token/lookup-self'], 'ops-write': ['secret/ops-write/*'] },
  });
  emu.createDatabaseRole('orders-readonly');
  ({ roleId, secretId: initialSecretId } = emu.createAppRole({ name: ROLE, policies: [ROLE, 'ops-read', 'ops-write'] }));
  overrides = {
    // A load test of rotation, not of the rate limit: the agent's 50/s budget is spent in a second on a quiet machine.
    server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } },
    providers: {
      vault: { address: emu.url, requestTimeoutMs: 2000, auth: { approle: { roleId, secretId: initialSecretId, roleName: ROLE } } },
    },
    roles: {
      'orders-db': { provider: 'vault', path: 'database/creds/orders-readonly' },
      'vault-ops': { provider: 'vault', token: { policies: ['ops-read', 'ops-write'] } },
    },
    revocation: { backoffMs: 50, reconcileIntervalMs: 60_000, concurrency: 8, lockMs: 1000, stalledCheckMs: 500, sweepMs: 20 },
  };
  a = await startTestBroker('rotation-vault', { config: overrides });
});
afterAll(async () => {
  await a?.close();
  for (const p of extraPrefixes) await dropPrefix(p);
  await emu?.stop();
});
afterEach(() => {
  expect(emu.unhandled).toEqual([]);
});

describe('POST /v1/admin/rotate {"target":"vault"}', () => {
  test('only admins may rotate: 403 for an agent and an orchestrator, 400 for an unknown target; nothing changes', async () => {
    for (const who of [AGENT, ORCH]) {
      const r = await rotate(a, who);
      expect(r.status).toBe(403);
      expect(r.body).toMatchObject({ status: 403, code: 'not_admin' });
    }
    const unknown = await rotate(a, ADMIN, 'nope');
    expect(unknown.status).toBe(400);
    expect(unknown.body.code).toBe('unknown_rotation_target');
    expect(secretIds()).toEqual([initialSecretId]);
    expect(emu.requests.filter((r) => /secret-id/.test(r.path))).toEqual([]);
  });

  test('a rotation that fails halfway answers an error, keeps the old secret-id in use, and is audited', async () => {
    const taskId = await openTask(a);
    const accessor = vaultOf(a).tokenAccessor!;

    // 1) Creating the new secret-id fails with a 5xx. Vault may still carry a create out that it had not
    // answered, so the broker token that sent it is replaced (same secret-id) and revoked.
    emu.injectFault({ path: `auth/approle/role/${ROLE}/custom-secret-id`, method: 'POST', status: 500, errors: ['internal error'] });
    const gen = await rotate(a);
    expect(gen.status).toBe(502);
    expect(gen.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(gen.body).toMatchObject({ status: 502, code: 'upstream_unavailable' });
    const relogged = vaultOf(a).tokenAccessor!;
    expect(relogged).not.toBe(accessor);
    expect(emu.tokenByAccessor(accessor)).toBeUndefined();

    // 2) The new secret-id is made but logging in with it fails: the unused one is destroyed again.
    emu.injectFault({ path: 'auth/approle/login', status: 500, errors: ['internal error'] });
    const half = await rotate(a);
    expect(half.status).toBe(502);
    expect(half.body).toMatchObject({ status: 502, code: 'upstream_unavailable' });
    expect(emu.requests.filter((r) => r.path === `auth/approle/role/${ROLE}/custom-secret-id` && r.status === 200)).toHaveLength(1);

    // The old secret-id and a broker token from it are still the ones in use, and work.
    expect(secretIds()).toEqual([initialSecretId]);
    expect((await login(initialSecretId)).auth.client_token).toEqual(expect.any(String));
    expect(vaultOf(a).tokenAccessor).toBe(relogged);
    expect(emu.tokenByAccessor(relogged)).toBeDefined();
    expect(await a.broker.deps.redis.get(a.broker.deps.keys.secrets('vault'))).toBeNull();
    const ok = await issue(a, taskId);
    expect(ok.status).toBe(201);
    expect(emu.tokenByAccessor(ok.body.credentials.accessor)).toBeDefined();

    const records = (await auditOf(a)).filter((r) => r.action === 'rotate');
    expect(records).toHaveLength(2);
    for (const r of records)
      expect(r).toMatchObject({
        actor: `spiffe://dev.local${ADMIN}`,
        decision: 'error',
        reason: 'upstream_unavailable',
        detail: { target: 'vault' },
      });
    // The rotation lock was released: a rotation can run again (the next test rotates for real).
    expect(await a.broker.deps.redis.get(a.broker.deps.keys.lock('rotate:vault'))).toBeNull();
  });

  test('under concurrent issuance and revocation on two instances: zero failures, both switch, old secret-id and tokens are dead', async () => {
    const b = await startSibling(a);
    try {
      const oldA = vaultOf(a).tokenAccessor!;
      const oldB = vaultOf(b).tokenAccessor!;
      expect(oldB).not.toBe(oldA);
      const oldTokens = [tokenIdOf(oldA)!, tokenIdOf(oldB)!];
      const taskId = await openTask(a);
      const survivor = await issue(a, taskId);
      const survivorDb = await issue(b, taskId, 'orders-db');
      expect([survivor.status, survivorDb.status]).toEqual([201, 201]);

      // Load: on each instance, three loops issuing (token and dynamic-secret roles) and revoking.
      const failures: string[] = [];
      const revoked: { leaseId: string; token?: string; username?: string }[] = [];
      const spans: [number, number][] = [];
      let done = 0;
      let stop = false;
      const loop = async (b2: TestBroker, i: number) => {
        for (let k = 0; !stop; k++) {
          const role = (i + k) % 3 === 0 ? 'orders-db' : 'vault-ops';
          const started = Date.now();
          const r = await issue(b2, taskId, role);
          spans.push([started, Date.now()]);
          if (r.status !== 201) {
            failures.push(`issue ${role} ${r.status} ${JSON.stringify(r.body)}`);
            continue;
          }
          const d = await call(b2.url, 'DELETE', `/v1/leases/${r.body.leaseId}`, b2.as(AGENT));
          if (d.status !== 202) failures.push(`delete ${d.status} ${JSON.stringify(d.body)}`);
          else revoked.push({ leaseId: r.body.leaseId, token: r.body.credentials.token, username: r.body.credentials.username });
          done++;
        }
      };
      const loops = [a, b].flatMap((x) => [0, 1, 2].map((i) => loop(x, i)));
      try {
        await waitFor(async () => done >= 20, 10_000);
        const rotStart = Date.now();
        const r = await rotate(a);
        const rotEnd = Date.now();
        // Issuance really ran while the rotation did.
        await waitFor(async () => spans.filter(([s0, e0]) => s0 <= rotEnd && e0 >= rotStart).length >= 3, 5000);
        expect(r.status).toBe(202);
        expect(r.body).toMatchObject({
          target: 'vault',
          rotated: ['approle-secret-id', 'vault-token'],
          secretIdAccessor: expect.any(String),
          oldSecretIdDestroyed: true,
        });
        await waitFor(async () => vaultOf(b).tokenAccessor !== oldB, 5000);
        const after = done;
        await waitFor(async () => done >= after + 30, 10_000);
      } finally {
        stop = true;
        await Promise.all(loops);
      }
      expect(failures).toEqual([]);

      // One new secret-id; the old one no longer logs in.
      const [fresh] = secretIds();
      expect(secretIds()).toHaveLength(1);
      expect(fresh).not.toBe(initialSecretId);
      expect(emu.isSecretIdValid(ROLE, initialSecretId)).toBe(false);
      expect(await vaultFailure(login(initialSecretId))).toMatchObject({ status: 400, errors: ['invalid role or secret ID'] });
      expect((await login(fresh!)).auth.client_token).toEqual(expect.any(String));
      // Distributed sealed, never in the clear: not in Redis, not in the answer, not in the audit log.
      const sealed = await a.broker.deps.redis.get(a.broker.deps.keys.secrets('vault'));
      expect(sealed).toMatch(/^g\d+\.v1\./);
      expect(sealed).not.toContain(fresh);
      const audit = await auditOf(a);
      expect(JSON.stringify(audit)).not.toContain(fresh);
      expect(audit.filter((x) => x.action === 'rotate' && x.decision === 'ok')).toEqual([
        expect.objectContaining({
          actor: `spiffe://dev.local${ADMIN}`,
          reason: 'vault',
          detail: { rotated: ['approle-secret-id', 'vault-token'] },
        }),
      ]);

      // Both instances moved to new broker tokens; both old tokens are revoked (once idle).
      expect(vaultOf(a).tokenAccessor).not.toBe(oldA);
      await waitFor(async () => oldTokens.every((tok) => !emu.isTokenValid(tok)), 5000);
      expect((await vaultFailure(vault(oldTokens[0]!).tokenLookupSelf())).status).toBe(403);

      // Every revocation asked for under load finished, none failed, and the credentials are dead upstream.
      await waitFor(
        async () => {
          const ls = await a.broker.deps.leases.getMany(revoked.map((x) => x.leaseId));
          return ls.every((l) => l.status === 'revoked');
        },
        10_000,
        50,
      );
      expect(audit.concat(await auditOf(a)).filter((x) => x.action === 'lease.revoke_failed')).toEqual([]);
      for (const x of revoked) {
        if (x.token) expect(emu.isTokenValid(x.token)).toBe(false);
        if (x.username) expect(emu.isDbUserValid(x.username)).toBe(false);
      }
      expect(revoked.length).toBeGreaterThanOrEqual(50);

      // Credentials issued before the rotation are not tied to the old broker token.
      expect(emu.isTokenValid(survivor.body.credentials.token)).toBe(true);
      expect(emu.isDbUserValid(survivorDb.body.credentials.username)).toBe(true);

      // B still issues; and after losing its token it logs in again — which only the NEW secret-id can do.
      expect((await issue(b, taskId)).status).toBe(201);
      const bAccessor = vaultOf(b).tokenAccessor!;
      emu.revokeToken(tokenIdOf(bAccessor)!);
      const relog = await issue(b, taskId);
      expect(relog.status).toBe(201);
      expect(vaultOf(b).tokenAccessor).not.toBe(bAccessor);
      expect(emu.tokenByAccessor(relog.body.credentials.accessor)).toBeDefined();
      const logins = emu.requests.filter((r) => r.path === 'auth/approle/login');
      expect(logins.at(-1)!.status).toBe(200);
    } finally {
      await b.close();
    }
  }, 40_000);

  test('a later instance with the same config and KEK picks up the rotated secret-id and starts', async () => {
    // Its config still names the initial secret-id, which the rotation destroyed.
    const c = await startSibling(a);
    try {
      const accessor = vaultOf(c).tokenAccessor;
      expect(accessor).toEqual(expect.any(String));
      expect(emu.tokenByAccessor(accessor!)).toBeDefined();
      const taskId = await openTask(c);
      expect((await issue(c, taskId)).status).toBe(201);
    } finally {
      await c.broker.close();
    }
  });

  test('an instance with another KEK refuses to start (exit code 1): it cannot decrypt the distributed secret', async () => {
    const sealed = await a.broker.deps.redis.get(a.broker.deps.keys.secrets('vault'));
    expect(sealed).toEqual(expect.any(String));
    const loginsOk = emu.requests.filter((r) => r.path === 'auth/approle/login' && r.status === 200).length;

    // Same prefix, other KEK: refuses (the signing keys are sealed with the KEK too).
    // And a prefix holding only the rotated Vault secret: there the refusal is about that secret.
    const prefix = uniquePrefix('rotation-vault-kek');
    extraPrefixes.push(prefix);
    await a.broker.deps.redis.set(new Keys(prefix).secrets('vault'), sealed!);
    const [same, other] = await Promise.all([
      runMain(a.prefix, randomBytes(32).toString('base64')),
      runMain(prefix, randomBytes(32).toString('base64')),
    ]);
    expect(same.code).toBe(1);
    expect(same.stderr).toContain('jit-broker: startup failed');
    expect(other.code).toBe(1);
    expect(other.stderr).toMatch(/startup failed: cannot decrypt the rotated vault secret/);
    // It never held a Vault token: the configured secret-id is refused, and the rotated one it could not read.
    expect(emu.requests.filter((r) => r.path === 'auth/approle/login' && r.status === 200).length).toBe(loginsOk);

    // Control: the same setup with the right KEK starts, on the rotated secret-id. (A fresh prefix: the refused
    // instance had already stored signing keys under its own KEK before it reached the Vault secret.)
    const control = uniquePrefix('rotation-vault-kek');
    extraPrefixes.push(control);
    await a.broker.deps.redis.set(new Keys(control).secrets('vault'), sealed!);
    const ok = await startTestBroker('rotation-vault-kek', {
      prefix: control,
      issuer: a.issuer,
      config: { ...overrides, secrets: a.config.secrets },
    });
    try {
      expect(vaultOf(ok).tokenAccessor).toEqual(expect.any(String));
      const taskId = await openTask(ok);
      expect((await issue(ok, taskId)).status).toBe(201);
    } finally {
      await ok.close();
    }
  }, 30_000);
});
