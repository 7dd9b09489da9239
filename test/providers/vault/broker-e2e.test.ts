import { jest } from '@jest/globals';
import nodeVault from 'node-vault';
import { startVaultEmulator, type VaultEmulator } from '../../emulators/vault/index.ts';
import { Redis } from 'ioredis';
import { Keys } from '../../../src/redis/keys.ts';
import { AGENT, ORCH, REDIS_URL, auditRecords, call, startTestBroker, waitFor, type TestBroker } from '../../helpers/broker.ts';
import { BROKER_POLICY, vaultFailure } from './helpers.ts';

/**
 * The real broker (HTTP API + BullMQ worker, real Redis) with `providers.vault`
 * pointing at the strict Vault emulator, token auth. Everything goes through
 * the broker's HTTP API; Vault's side is checked with the real node-vault
 * client and the emulator's inspection helpers.
 */

let emu: VaultEmulator;
let t: TestBroker;
const agentId = `spiffe://dev.local${AGENT}`;

const vault = (token: string) => nodeVault({ endpoint: emu.url, token });

beforeAll(async () => {
  emu = await startVaultEmulator({
    policies: {
      'jit-broker': BROKER_POLICY,
      // lookup-self in the role policies so an agent can check its own token with node-vault.
      'ops-read': ['secret/ops/*', 'auth/token/lookup-self'],
      'ops-write': ['secret/ops-write/*', 'auth/token/lookup-self'],
    },
  });
  emu.createDatabaseRole('orders-readonly', { defaultTtl: 3600, maxTtl: 7200 });
  const { token } = emu.createToken({ policies: ['jit-broker', 'ops-read', 'ops-write'] });
  await vault(emu.rootToken).write('secret/ops/db', { password: 'kv-value' });
  t = await startTestBroker('vault-e2e', {
    config: {
      providers: { vault: { address: emu.url, auth: { token }, requestTimeoutMs: 2000 } },
      roles: {
        'orders-db': { provider: 'vault', path: 'database/creds/orders-readonly' },
        'vault-ops': { provider: 'vault', token: { policies: ['ops-read', 'ops-write'] } },
        'vault-ops-approved': { provider: 'vault', token: { policies: ['ops-read'] }, approval: 'required' },
      },
      revocation: {
        backoffMs: 50,
        maxBackoffMs: 500,
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
afterEach(() => {
  emu.unseal();
  expect(emu.unhandled).toEqual([]);
});

let n = 0;
async function openTask(
  grants: unknown[] = [{ role: 'vault-ops', scopes: ['ops-read', 'ops-write'] }, { role: 'orders-db' }],
): Promise<string> {
  const taskId = `t-vault-${++n}`;
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'vault e2e',
    ttlSeconds: 600,
    grants,
  });
  expect(r.status).toBe(201);
  return taskId;
}
const issue = (body: Record<string, unknown>) => call(t.url, 'POST', '/v1/credentials', t.as(AGENT), body);
const lease = async (leaseId: string) => (await call(t.url, 'GET', `/v1/leases/${leaseId}`, t.as(AGENT))).body;
const leaseStatus = (leaseId: string, status: string) =>
  waitFor(
    async () => {
      const l = await lease(leaseId);
      return l.status === status && l;
    },
    8000,
    25,
  );
const createOrphanCalls = () => emu.requests.filter((r) => r.path === 'auth/token/create-orphan').length;

describe('vault roles through the broker API', () => {
  test('token role: 201 with {token, accessor}, revocable; the token works with node-vault and carries the role policies', async () => {
    const taskId = await openTask();
    const r = await issue({ taskId, role: 'vault-ops', ttlSeconds: 120 });
    expect(r.status).toBe(201);
    expect(r.headers.get('cache-control')).toBe('no-store');
    expect(r.body).toMatchObject({ taskId, role: 'vault-ops', provider: 'vault', revocable: true, ttlSeconds: 120 });
    const c = r.body.credentials;
    expect(c).toMatchObject({ token: expect.stringMatching(/^hvs\./), accessor: expect.any(String), policies: ['ops-read', 'ops-write'] });

    const agent = vault(c.token);
    const self = await agent.tokenLookupSelf();
    // Renewable only up to its explicit max TTL (the granted TTL): it was created short-lived and extended once recorded.
    expect(self.data).toMatchObject({ accessor: c.accessor, policies: ['ops-read', 'ops-write'], explicit_max_ttl: 120, orphan: true });
    expect(self.data.ttl).toBeGreaterThan(100);
    expect(self.data.meta).toMatchObject({ task_id: taskId, lease_id: r.body.leaseId, agent: agentId, role: 'vault-ops' });
    expect(self.data.ttl).toBeGreaterThan(100);
    expect(self.data.ttl).toBeLessThanOrEqual(120);
    expect((await agent.read('secret/ops/db')).data).toEqual({ password: 'kv-value' });
    await agent.write('secret/ops-write/x', { v: '1' });
  });

  test('scopes narrow the token policies; scopes outside the grant are refused with 403 before Vault is asked', async () => {
    const taskId = await openTask();
    const r = await issue({ taskId, role: 'vault-ops', scopes: ['ops-read'], ttlSeconds: 120 });
    expect(r.status).toBe(201);
    expect(r.body.credentials.policies).toEqual(['ops-read']);
    const agent = vault(r.body.credentials.token);
    expect((await agent.tokenLookupSelf()).data.policies).toEqual(['ops-read']);
    expect((await agent.read('secret/ops/db')).data).toEqual({ password: 'kv-value' });
    expect((await vaultFailure(agent.write('secret/ops-write/x', { v: '1' }))).status).toBe(403);

    // A task whose grant is narrower than the role: the role's other policy is outside the grant.
    const narrow = await openTask([{ role: 'vault-ops', scopes: ['ops-read'] }]);
    const before = createOrphanCalls();
    for (const [task, scopes] of [
      [taskId, ['db-admin']],
      [narrow, ['ops-write']],
      [narrow, ['ops-read', 'ops-write']],
    ] as const) {
      const denied = await issue({ taskId: task, role: 'vault-ops', scopes });
      expect(denied.status).toBe(403);
      expect(denied.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(denied.body).toMatchObject({ status: 403, code: 'scope_not_granted' });
    }
    // A role not granted to the task.
    expect((await issue({ taskId: narrow, role: 'orders-db' })).body).toMatchObject({ status: 403, code: 'role_not_granted' });
    expect(createOrphanCalls()).toBe(before);
    // Without scopes the narrow grant's scopes apply.
    const def = await issue({ taskId: narrow, role: 'vault-ops' });
    expect(def.status).toBe(201);
    expect(emu.tokenByAccessor(def.body.credentials.accessor)?.policies).toEqual(['ops-read']);
  });

  test('dynamic secret: the Vault data with its lease_id; no token, password or lease secret in the lease record or the audit log', async () => {
    const taskId = await openTask();
    const db = await issue({ taskId, role: 'orders-db', ttlSeconds: 300 });
    expect(db.status).toBe(201);
    expect(db.body).toMatchObject({ provider: 'vault', revocable: true, ttlSeconds: 300 });
    const c = db.body.credentials;
    expect(c).toMatchObject({
      username: expect.any(String),
      password: expect.any(String),
      lease_id: expect.stringMatching(/^database\/creds\/orders-readonly\//),
    });
    expect(emu.isDbUserValid(c.username)).toBe(true);
    expect(emu.leaseExists(c.lease_id)).toBe(true);
    const tok = await issue({ taskId, role: 'vault-ops' });
    expect(tok.status).toBe(201);

    const redis = t.broker.deps.redis;
    const secrets = [c.password, tok.body.credentials.token];
    for (const id of [db.body.leaseId, tok.body.leaseId]) {
      const raw = await redis.hgetall(t.broker.deps.keys.lease(id));
      expect(raw.status).toBe('active');
      const text = JSON.stringify(raw);
      for (const s of secrets) expect(text).not.toContain(s);
      // The public view has no secrets either.
      const pub = JSON.stringify(await lease(id));
      for (const s of secrets) expect(pub).not.toContain(s);
    }
    // The revoke handle is there (identifiers only): the accessor for a token role.
    expect(JSON.stringify(await redis.hgetall(t.broker.deps.keys.lease(tok.body.leaseId)))).toContain(tok.body.credentials.accessor);
    const audit = JSON.stringify(await auditRecords(t.broker.deps.redis, t.broker.deps.keys));
    expect(audit).toContain(db.body.leaseId);
    for (const s of secrets) expect(audit).not.toContain(s);
  });

  test('completing the task revokes every lease upstream: token unusable (403), database user dropped', async () => {
    const taskId = await openTask();
    const tok = await issue({ taskId, role: 'vault-ops', ttlSeconds: 300 });
    const db = await issue({ taskId, role: 'orders-db', ttlSeconds: 300 });
    expect([tok.status, db.status]).toEqual([201, 201]);
    const agent = vault(tok.body.credentials.token);
    await agent.tokenLookupSelf();

    const done = await call(t.url, 'POST', `/v1/tasks/${taskId}/complete`, t.as(ORCH));
    expect(done.status).toBe(202);
    expect(done.body).toMatchObject({ taskId, status: 'completed', leases: 2 });
    for (const id of [tok.body.leaseId, db.body.leaseId]) {
      const l = await leaseStatus(id, 'revoked');
      expect(l).toMatchObject({ reason: 'task_completed', revokedAt: expect.any(String) });
    }
    const denied = await vaultFailure(agent.tokenLookupSelf());
    expect(denied.status).toBe(403);
    expect(denied.errors!.join()).toContain('permission denied');
    expect(emu.isDbUserValid(db.body.credentials.username)).toBe(false);
    expect(emu.leaseExists(db.body.credentials.lease_id)).toBe(false);
    // The per-lease reader token is gone too.
    expect(emu.tokenByAccessor(tok.body.credentials.accessor)).toBeUndefined();
    // Completing again revokes nothing twice.
    const revokes = emu.requests.filter((r) => r.path === 'auth/token/revoke-accessor' || r.path === 'sys/leases/revoke').length;
    expect((await call(t.url, 'POST', `/v1/tasks/${taskId}/complete`, t.as(ORCH))).status).toBe(202);
    await new Promise((r) => setTimeout(r, 200));
    expect(emu.requests.filter((r) => r.path === 'auth/token/revoke-accessor' || r.path === 'sys/leases/revoke').length).toBe(revokes);
  });

  test('DELETE /v1/leases/:id revokes that one credential and leaves the others working', async () => {
    const taskId = await openTask();
    const one = await issue({ taskId, role: 'vault-ops' });
    const two = await issue({ taskId, role: 'vault-ops' });
    const db = await issue({ taskId, role: 'orders-db' });
    const del = await call(t.url, 'DELETE', `/v1/leases/${one.body.leaseId}`, t.as(AGENT));
    expect(del.status).toBe(202);
    expect((await leaseStatus(one.body.leaseId, 'revoked')).reason).toBe('revoked_by_caller');
    expect((await vaultFailure(vault(one.body.credentials.token).tokenLookupSelf())).status).toBe(403);
    expect((await vault(two.body.credentials.token).tokenLookupSelf()).data.accessor).toBe(two.body.credentials.accessor);
    expect((await lease(two.body.leaseId)).status).toBe('active');

    expect((await call(t.url, 'DELETE', `/v1/leases/${db.body.leaseId}`, t.as(ORCH))).status).toBe(202);
    expect((await leaseStatus(db.body.leaseId, 'revoked')).reason).toBe('revoked_by_caller');
    expect(emu.isDbUserValid(db.body.credentials.username)).toBe(false);
  });

  test('quarantining an approver revokes upstream the credentials issued on its word, and no other', async () => {
    const APPROVER = '/ops/vault-approver';
    const taskId = await openTask([{ role: 'vault-ops-approved', scopes: ['ops-read'] }, { role: 'vault-ops' }]);
    const pending = await issue({ taskId, role: 'vault-ops-approved' });
    expect(pending.status).toBe(202);
    const decided = await call(t.url, 'POST', `/v1/approvals/${pending.body.approvalId}`, t.as(APPROVER), { decision: 'approve' });
    expect(decided.status).toBe(200);
    const approved = await issue({ taskId, role: 'vault-ops-approved' });
    expect(approved.status).toBe(201);
    const other = await issue({ taskId, role: 'vault-ops' });
    expect(other.status).toBe(201);

    const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as('/ops/alice'), {
      agent: `spiffe://dev.local${APPROVER}`,
      reason: 'approver compromised',
    });
    expect(q.status).toBe(201);
    expect(q.body).toMatchObject({ tasks: 0, approvedLeases: 1 });
    // The worker revokes it upstream (before: the token worked until its TTL).
    expect((await leaseStatus(approved.body.leaseId, 'revoked')).reason).toBe('revoked_by_admin');
    expect((await vaultFailure(vault(approved.body.credentials.token).tokenLookupSelf())).status).toBe(403);
    expect((await vault(other.body.credentials.token).tokenLookupSelf()).data.accessor).toBe(other.body.credentials.accessor);
    expect((await lease(other.body.leaseId)).status).toBe('active');
    const records = await auditRecords(t.broker.deps.redis, t.broker.deps.keys);
    expect(records.filter((r) => r.action === 'lease.revoke' && r.leaseId === approved.body.leaseId)).toEqual([
      expect.objectContaining({ actor: 'broker', decision: 'ok', reason: 'revoked_by_admin' }),
    ]);
  });

  test('an approved credential Vault makes while its approver is being quarantined is revoked upstream, answered 409 approval_expired, its approval not given back', async () => {
    const APPROVER = '/ops/vault-approver-held';
    const taskId = await openTask([{ role: 'vault-ops-approved', scopes: ['ops-read'] }]);
    const ask = () => issue({ taskId, role: 'vault-ops-approved' });
    const pending = await ask();
    expect((await call(t.url, 'POST', `/v1/approvals/${pending.body.approvalId}`, t.as(APPROVER), { decision: 'approve' })).status).toBe(
      200,
    );
    const hold = emu.holdResponses('auth/token/create-orphan');
    const issuing = ask();
    await hold.until(1); // Vault has made the token; the broker has not heard back: the lease is `issuing`
    const made = [...emu.state.tokens.values()].at(-1)!;
    const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as('/ops/alice'), {
      agent: `spiffe://dev.local${APPROVER}`,
      reason: 'approver compromised',
    });
    expect(q.status).toBe(201);
    expect(q.body).toMatchObject({ tasks: 0, approvedLeases: 1 });
    hold.release();
    const r = await issuing;
    // Before: 409 task_not_open ("Task ... ended while the credential was being issued") for a task that is open,
    // audited as such, and the quarantined approver's approval handed back as `approved`.
    expect({ status: r.status, code: r.body.code, credentials: r.body.credentials }).toEqual({
      status: 409,
      code: 'approval_expired',
      credentials: undefined,
    });
    await waitFor(async () => !emu.isTokenValid(made.id), 8000);
    const task = (await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH))).body;
    expect(task.status).toBe('open');
    expect(task.leases).toHaveLength(1);
    expect((await leaseStatus(task.leases[0].leaseId, 'revoked')).reason).toBe('revoked_by_admin');
    expect((await call(t.url, 'GET', `/v1/approvals/${pending.body.approvalId}`, t.as(ORCH))).body.status).toBe('consumed');
    const records = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter((x) => x.taskId === taskId);
    expect(records.filter((x) => x.action === 'credential.deny')).toEqual([expect.objectContaining({ reason: 'approval_expired' })]);
    expect(records.filter((x) => x.action === 'credential.issue')).toEqual([]);
    expect(records.filter((x) => x.action === 'approval.decide' && x.decision === 'deny')).toEqual([]);
    // The same request asks again: a new approval, for another approver.
    const again = await ask();
    expect(again.status).toBe(202);
    expect(again.body.approvalId).not.toBe(pending.body.approvalId);
  });

  test('an approved credential whose approver cannot be read again is never made upstream: 503, the approval given back', async () => {
    const APPROVER = '/ops/vault-approver-unread';
    const taskId = await openTask([{ role: 'vault-ops-approved', scopes: ['ops-read'] }]);
    const ask = () => issue({ taskId, role: 'vault-ops-approved' });
    const pending = await ask();
    expect((await call(t.url, 'POST', `/v1/approvals/${pending.body.approvalId}`, t.as(APPROVER), { decision: 'approve' })).status).toBe(
      200,
    );
    // The issuance's second read of the quarantine list (once its lease exists) gets no answer from Redis, once.
    const { quarantine } = t.broker.deps;
    quarantine.stop();
    const reload = jest.spyOn(quarantine, 'reload').mockRejectedValueOnce(new Error('Command timed out'));
    try {
      const tokensBefore = emu.state.tokens.size;
      const r = await ask();
      expect({ status: r.status, credentials: r.body.credentials }).toEqual({ status: 503, credentials: undefined });
      // Before: Vault made the token first, and the failed read left its lease `active` (the token valid, held by
      // nobody) until its TTL and the approval used (the same request got 409 approval_expired).
      expect(emu.state.tokens.size).toBe(tokensBefore);
      const task = (await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH))).body;
      expect(task.leases).toHaveLength(1);
      expect(task.leases[0].status).toBe('failed');
      expect((await call(t.url, 'GET', `/v1/approvals/${pending.body.approvalId}`, t.as(ORCH))).body.status).toBe('approved');
      const again = await ask();
      expect(again.status).toBe(201);
      expect((await vault(again.body.credentials.token).tokenLookupSelf()).data.accessor).toBe(again.body.credentials.accessor);
    } finally {
      reload.mockRestore();
      await quarantine.start();
    }
  });

  test('an approved credential whose approver was quarantined before the upstream call is refused with nothing made upstream', async () => {
    const APPROVER = '/ops/vault-approver-stale';
    const taskId = await openTask([{ role: 'vault-ops-approved', scopes: ['ops-read'] }]);
    const ask = () => issue({ taskId, role: 'vault-ops-approved' });
    const pending = await ask();
    expect((await call(t.url, 'POST', `/v1/approvals/${pending.body.approvalId}`, t.as(APPROVER), { decision: 'approve' })).status).toBe(
      200,
    );
    // In force in Redis, its scan done, this instance's list not re-read yet (held here).
    const { redis, keys, quarantine } = t.broker.deps;
    const pattern = `spiffe://dev.local${APPROVER}`;
    quarantine.stop();
    try {
      await redis.hset(
        keys.quarantine(),
        pattern,
        JSON.stringify({ reason: 'stale list', by: 'spiffe://dev.local/ops/alice', at: new Date().toISOString() }),
      );
      const tokensBefore = emu.state.tokens.size;
      const r = await ask();
      expect({ status: r.status, code: r.body.code, credentials: r.body.credentials }).toEqual({
        status: 409,
        code: 'approval_expired',
        credentials: undefined,
      });
      // Read again before the upstream call: Vault made nothing (before: it made a token, then the broker revoked it).
      expect(emu.state.tokens.size).toBe(tokensBefore);
      const task = (await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH))).body;
      expect(task.leases).toHaveLength(1);
      expect(task.leases[0]).toMatchObject({ status: 'failed' });
      expect((await call(t.url, 'GET', `/v1/approvals/${pending.body.approvalId}`, t.as(ORCH))).body.status).toBe('consumed');
      const records = (await auditRecords(redis, keys)).filter((x) => x.taskId === taskId);
      expect(records.filter((x) => x.action === 'credential.deny')).toEqual([expect.objectContaining({ reason: 'approval_expired' })]);
      expect(records.filter((x) => x.action === 'credential.issue')).toEqual([]);
    } finally {
      await redis.hdel(keys.quarantine(), pattern);
      await quarantine.start();
    }
  });

  test("TTL expiry: the broker revokes at the TTL (Vault's clock is then held back, so Vault alone would not end them yet)", async () => {
    const taskId = await openTask();
    const tok = await issue({ taskId, role: 'vault-ops', ttlSeconds: 1 });
    const db = await issue({ taskId, role: 'orders-db', ttlSeconds: 1 });
    expect([tok.status, db.status]).toEqual([201, 201]);
    expect(tok.body.ttlSeconds).toBe(1);
    // Vault's clock 60 s behind from now on: the token and the reader token would live another minute by themselves.
    emu.advanceTime(-60);
    try {
      await vault(tok.body.credentials.token).tokenLookupSelf();
      const l = await leaseStatus(tok.body.leaseId, 'expired');
      expect(l.reason).toBe('ttl_expired');
      expect((await leaseStatus(db.body.leaseId, 'expired')).reason).toBe('ttl_expired');
      expect(emu.isTokenValid(tok.body.credentials.token)).toBe(false);
      expect((await vaultFailure(vault(tok.body.credentials.token).tokenLookupSelf())).status).toBe(403);
      expect(emu.isDbUserValid(db.body.credentials.username)).toBe(false);
    } finally {
      emu.advanceTime(60);
    }
  });

  test('a flood of /readyz is not a flood of Vault: one sys/health per second at most, shared by concurrent probes', async () => {
    await new Promise((r) => setTimeout(r, 1100));
    const health = () => emu.requests.filter((q) => q.path === 'sys/health').length;
    const before = health();
    const answers = await Promise.all(Array.from({ length: 50 }, () => call(t.url, 'GET', '/readyz', {})));
    expect(answers.every((a) => a.status === 200 && a.body.upstreams.vault === true)).toBe(true);
    expect(health() - before).toBe(1);
    await new Promise((r) => setTimeout(r, 1100));
  });

  test('Vault sealed during issuance: 502 upstream_sealed (contract: 502 upstream failed), the lease is failed (not active), and /readyz reports the upstream down while staying ready', async () => {
    const taskId = await openTask();
    emu.seal();
    for (const role of ['vault-ops', 'orders-db']) {
      const r = await issue({ taskId, role });
      expect(r.status).toBe(502);
      expect(r.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(r.body).toMatchObject({
        status: 502,
        code: 'upstream_sealed',
        type: expect.any(String),
        title: expect.any(String),
        detail: expect.any(String),
      });
    }
    // A sealed Vault is reported, but does not take the broker out of rotation: JWT roles still issue.
    const ready = await call(t.url, 'GET', '/readyz', {});
    expect(ready.status).toBe(200);
    expect(ready.body.upstreams.vault).toBe(false);

    const task = await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH));
    expect(task.body.leases).toHaveLength(2);
    for (const l of task.body.leases) {
      expect(l).toMatchObject({ status: 'failed', lastError: 'upstream_sealed' });
      expect((await lease(l.leaseId)).status).toBe('failed');
    }
    expect(
      await t.broker.deps.redis.zscore(
        t.broker.deps.keys.liveLeases(t.broker.deps.keys.bucketOfId(task.body.leases[0].leaseId)!),
        task.body.leases[0].leaseId,
      ),
    ).toBeNull();

    emu.unseal();
    expect((await issue({ taskId, role: 'vault-ops' })).status).toBe(201);
    expect((await call(t.url, 'GET', '/readyz', {})).status).toBe(200);
  });

  test('Vault sealed during revocation: revoke_failed while sealed, revoked after unseal', async () => {
    const taskId = await openTask();
    const tok = await issue({ taskId, role: 'vault-ops', ttlSeconds: 300 });
    const db = await issue({ taskId, role: 'orders-db', ttlSeconds: 300 });
    expect([tok.status, db.status]).toEqual([201, 201]);
    emu.seal();
    expect((await call(t.url, 'POST', `/v1/tasks/${taskId}/complete`, t.as(ORCH))).status).toBe(202);
    for (const id of [tok.body.leaseId, db.body.leaseId]) {
      expect(await leaseStatus(id, 'revoke_failed')).toMatchObject({ lastError: 'upstream_sealed', reason: 'task_completed' });
    }
    // Still sealed a while later: still failing, and the credentials are still alive upstream (not falsely reported).
    await new Promise((r) => setTimeout(r, 300));
    expect((await lease(tok.body.leaseId)).status).toBe('revoke_failed');
    expect(emu.isTokenValid(tok.body.credentials.token)).toBe(true);
    expect(emu.isDbUserValid(db.body.credentials.username)).toBe(true);
    const audit = await auditRecords(t.broker.deps.redis, t.broker.deps.keys);
    expect(audit.filter((a) => a.action === 'lease.revoke_failed' && a.leaseId === tok.body.leaseId)[0]).toMatchObject({
      decision: 'error',
      reason: 'upstream_sealed',
    });

    emu.unseal();
    for (const id of [tok.body.leaseId, db.body.leaseId]) {
      expect((await leaseStatus(id, 'revoked')).reason).toBe('task_completed');
    }
    expect((await vaultFailure(vault(tok.body.credentials.token).tokenLookupSelf())).status).toBe(403);
    expect(emu.isDbUserValid(db.body.credentials.username)).toBe(false);
  });
});

describe('least privilege and revocation truth (issue: scopes literal, late credentials revoked)', () => {
  test('scopes: [] never means every policy of the role: 400 scopes_empty, for a request and for a grant', async () => {
    const taskId = await openTask();
    const before = createOrphanCalls();
    const r = await issue({ taskId, role: 'vault-ops', scopes: [] });
    expect(r.status).toBe(400);
    expect(r.body.code).toBe('scopes_empty');
    const narrow = await openTask([{ role: 'vault-ops', scopes: [] }]);
    const g = await issue({ taskId: narrow, role: 'vault-ops' });
    expect(g.status).toBe(400);
    expect(g.body.code).toBe('scopes_empty');
    // A sub-task granted [] cannot get a token either.
    const sub = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
      parentTaskId: taskId,
      agent: agentId,
      ttlSeconds: 60,
      grants: [{ role: 'vault-ops', scopes: [] }],
    });
    expect(sub.status).toBe(201);
    expect((await issue({ taskId: sub.body.taskId, role: 'vault-ops' })).body.code).toBe('scopes_empty');
    expect(createOrphanCalls()).toBe(before); // Vault was never asked
  });

  test('a token Vault creates after its lease record vanished (a failover or a wipe) is revoked by the issuing broker, never handed out', async () => {
    const taskId = await openTask();
    const hold = emu.holdResponses('auth/token/create-orphan');
    const pending = issue({ taskId, role: 'vault-ops', scopes: ['ops-read'] });
    await hold.until(1);
    const made = [...emu.state.tokens.values()].at(-1)!;
    const [issuing] = (await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH))).body.leases as { leaseId: string }[];
    const redis = new Redis(REDIS_URL);
    try {
      expect(await redis.del(new Keys(t.prefix).lease(issuing!.leaseId))).toBe(1);
    } finally {
      redis.disconnect();
    }
    hold.release();
    const r = await pending;
    expect(r.status).toBe(502);
    expect(r.body.credentials).toBeUndefined();
    // Before, nothing revoked it: the token lived out its issue TTL (and nothing held its accessor).
    expect(emu.isTokenValid(made.id)).toBe(false);
  });

  test('a token Vault creates while its task is completing is revoked upstream, never handed out', async () => {
    const taskId = await openTask();
    const hold = emu.holdResponses('auth/token/create-orphan');
    const pending = issue({ taskId, role: 'vault-ops', scopes: ['ops-read'] });
    await hold.until(1); // Vault has made the token; the broker has not heard back yet
    const made = [...emu.state.tokens.values()].at(-1)!;
    expect(emu.isTokenValid(made.id)).toBe(true);
    expect((await call(t.url, 'POST', `/v1/tasks/${taskId}/complete`, t.as(ORCH))).status).toBe(202);
    hold.release();
    const r = await pending;
    expect(r.status).toBe(409);
    expect(r.body.code).toBe('task_not_open');
    await waitFor(async () => !emu.isTokenValid(made.id), 8000);
    const task = await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH));
    expect(task.body.leases).toHaveLength(1);
    expect(task.body.leases[0]).toMatchObject({ status: 'revoked', reason: 'task_completed' });
  });
});
