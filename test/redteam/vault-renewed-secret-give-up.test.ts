import nodeVault from 'node-vault';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { AGENT, ORCH, auditRecords, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';

/**
 * Red team: a Vault dynamic secret whose Vault lease is shorter than the granted TTL. The broker reads it
 * with a reader token that lives the granted TTL, and records the lease as ending at Vault's
 * `lease_duration`. Vault's built-in `default` policy lets any token renew any lease by id
 * (`sys/leases/renew`), so the agent, holding a Vault token of its own (here one the broker issued in the
 * same task, from a token role with `defaultPolicy: true`), renews the secret's lease up to the reader
 * token's end. A revocation that fails until the recorded `lease_duration` has passed (Vault sealed or
 * throttled for a while) was then given up as "expired on its own": the lease ended `expired` and nothing
 * retried, while the database user kept working after its task ended, until the granted TTL. Contract
 * section 5: nothing is given up before the credential's own expiry, whatever the error.
 */
let emu: VaultEmulator;
let t: TestBroker;
const agentId = `spiffe://dev.local${AGENT}`;

beforeAll(async () => {
  emu = await startVaultEmulator({
    policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] },
  });
  // Vault's lease on the database user: 5 s, renewable up to 10 min.
  emu.createDatabaseRole('orders-short', { defaultTtl: 5, maxTtl: 600 });
  const { token } = emu.createToken({ policies: ['jit-broker', 'ops-read'] });
  t = await startTestBroker('rt3-renewed', {
    config: {
      providers: { vault: { address: emu.url, auth: { token }, requestTimeoutMs: 2000 } },
      roles: {
        'orders-db': { provider: 'vault', path: 'database/creds/orders-short', maxTtlSeconds: 600 },
        'vault-self': { provider: 'vault', token: { policies: ['ops-read'], defaultPolicy: true }, maxTtlSeconds: 600 },
      },
      revocation: {
        backoffMs: 50,
        maxBackoffMs: 300,
        reconcileIntervalMs: 60_000,
        concurrency: 8,
        lockMs: 1000,
        stalledCheckMs: 500,
        sweepMs: 20,
      },
    },
  });
});
afterAll(async () => {
  await t?.close();
  await emu?.stop();
});
afterEach(() => emu.unseal());

const lease = async (leaseId: string) => (await call(t.url, 'GET', `/v1/leases/${leaseId}`, t.as(AGENT))).body;

test('a renewed Vault secret whose revocation fails past its first lease_duration is still revoked once Vault is back', async () => {
  const taskId = 't-rt3-renewed';
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'renewed secret',
    ttlSeconds: 600,
    grants: [{ role: 'orders-db' }, { role: 'vault-self' }],
  });
  expect(open.status).toBe(201);
  const self = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'vault-self', ttlSeconds: 300 });
  expect(self.status).toBe(201);
  const db = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'orders-db', ttlSeconds: 300 });
  expect(db.status).toBe(201);
  expect(db.body.credentials.lease_duration).toBe(5);

  // The agent renews the database user's Vault lease with its own token (the default policy allows it).
  const agentVault = nodeVault({ endpoint: emu.url, token: self.body.credentials.token });
  const renewed = await agentVault.write('sys/leases/renew', { lease_id: db.body.credentials.lease_id, increment: '300s' });
  expect(renewed.lease_duration).toBeGreaterThan(200);

  // Vault is sealed while the task ends, for longer than the secret's first lease_duration.
  emu.seal();
  expect((await call(t.url, 'POST', `/v1/tasks/${taskId}/complete`, t.as(ORCH))).status).toBe(202);
  await waitFor(async () => (await lease(db.body.leaseId)).status === 'revoke_failed', 8000, 25);
  // Past the secret's first lease_duration (the lease's expiresAt), with a second of slack.
  await new Promise((r) => setTimeout(r, Math.max(0, Date.parse(db.body.expiresAt) + 1000 - Date.now())));
  // The database user still works upstream: the broker must not have called it expired.
  expect(emu.isDbUserValid(db.body.credentials.username)).toBe(true);
  expect((await lease(db.body.leaseId)).status).toBe('revoke_failed');

  emu.unseal();
  const ended = await waitFor(
    async () => {
      const l = await lease(db.body.leaseId);
      return ['revoked', 'expired'].includes(l.status) && l;
    },
    8000,
    25,
  );
  expect(ended).toMatchObject({ status: 'revoked', reason: 'task_completed' });
  expect(emu.isDbUserValid(db.body.credentials.username)).toBe(false);
  const records = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter((r) => r.leaseId === db.body.leaseId);
  expect(records.map((r) => r.action)).toEqual(expect.arrayContaining(['lease.revoke_failed', 'lease.revoke']));
});

test('a renewed Vault secret whose TTL-end revocation fails is retried, not ended expired at once', async () => {
  const taskId = 't-rt3-renewed-ttl';
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'renewed secret, ttl end',
    ttlSeconds: 600,
    grants: [{ role: 'orders-db' }, { role: 'vault-self' }],
  });
  expect(open.status).toBe(201);
  const self = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'vault-self', ttlSeconds: 300 });
  const db = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'orders-db', ttlSeconds: 300 });
  expect([db.status, self.status]).toEqual([201, 201]);
  const agentVault = nodeVault({ endpoint: emu.url, token: self.body.credentials.token });
  await agentVault.write('sys/leases/renew', { lease_id: db.body.credentials.lease_id, increment: '300s' });

  // Vault is sealed when the broker's record of the secret runs out (its first lease_duration, 5 s).
  emu.seal();
  await waitFor(async () => (await lease(db.body.leaseId)).status === 'revoke_failed', 12_000, 25);
  await new Promise((r) => setTimeout(r, 500));
  expect(emu.isDbUserValid(db.body.credentials.username)).toBe(true);
  expect((await lease(db.body.leaseId)).status).toBe('revoke_failed');
  emu.unseal();
  await waitFor(async () => ['expired', 'revoked'].includes((await lease(db.body.leaseId)).status), 8000, 25);
  expect(emu.isDbUserValid(db.body.credentials.username)).toBe(false);
});
