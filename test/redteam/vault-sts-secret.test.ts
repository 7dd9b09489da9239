import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { AGENT, ORCH, auditRecords, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';

/**
 * Red team: a Vault path role on Vault's AWS secrets engine with an STS credential type
 * (`aws/sts/<role>`, or `aws/creds/<role>` of an `assumed_role` / `federation_token` role). Vault makes
 * STS credentials that live the engine role's `default_sts_ttl` (1 h here), whatever TTL the broker
 * granted, and revoking their Vault lease (or the reader token holding it) ends nothing on AWS: STS
 * credentials cannot be revoked. The broker handed them out as `revocable: true` with a 60 s
 * `lease_duration`, and completing the task "revoked" them while they kept working for the hour, past the
 * task's end. Like a static KV secret (no lease), a secret that revocation cannot cut off is refused.
 * An `iam_user` credential (an IAM user Vault deletes on revocation) is still issued and revoked.
 */
let emu: VaultEmulator;
let t: TestBroker;
const agentId = `spiffe://dev.local${AGENT}`;

beforeAll(async () => {
  emu = await startVaultEmulator({ policies: { 'jit-broker': [...BROKER_POLICY, 'aws/*'] } });
  emu.createAwsRole('deploy-sts', { credentialType: 'assumed_role', defaultTtl: 3600 });
  emu.createAwsRole('deploy-user', { credentialType: 'iam_user', defaultTtl: 3600 });
  const { token } = emu.createToken({ policies: ['jit-broker'] });
  t = await startTestBroker('rt3-vault-sts', {
    config: {
      providers: { vault: { address: emu.url, auth: { token }, requestTimeoutMs: 2000 } },
      roles: {
        'aws-sts': { provider: 'vault', path: 'aws/sts/deploy-sts' },
        'aws-sts-creds': { provider: 'vault', path: 'aws/creds/deploy-sts' },
        'aws-user': { provider: 'vault', path: 'aws/creds/deploy-user' },
      },
      revocation: { backoffMs: 50, maxBackoffMs: 300, reconcileIntervalMs: 60_000, lockMs: 1000, stalledCheckMs: 500, sweepMs: 20 },
    },
  });
});
afterAll(async () => {
  await t?.close();
  await emu?.stop();
});

async function openTask(taskId: string): Promise<void> {
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'vault sts',
    ttlSeconds: 120,
    grants: [{ role: 'aws-sts' }, { role: 'aws-sts-creds' }, { role: 'aws-user' }],
  });
  expect(r.status).toBe(201);
}

test.each(['aws-sts', 'aws-sts-creds'])(
  'role %s: STS credentials Vault cannot revoke are never handed out; what was read is given back to Vault',
  async (role) => {
    const taskId = `t-rt3-${role}`;
    await openTask(taskId);
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role, ttlSeconds: 60 });
    expect(r.status).toBe(502);
    expect(r.body.code).toBe('upstream_not_leased');
    expect(JSON.stringify(r.body)).not.toMatch(/ASIA/);
    // The reader token and its Vault lease are revoked; nothing the broker made in Vault is left.
    const readers = [...emu.state.tokens.values()].filter((tk) => tk.meta?.task_id === taskId);
    expect(readers).toEqual([]);
    expect([...emu.state.leases.values()].filter((l) => l.path.startsWith('aws/'))).toEqual([]);
    const task = await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(AGENT));
    expect(task.body.leases).toEqual([expect.objectContaining({ role, status: 'failed' })]);
    const records = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter((a) => a.taskId === taskId);
    expect(records.find((a) => a.action === 'credential.fail')).toMatchObject({ reason: 'upstream_not_leased' });
  },
);

test('an iam_user credential (revocable: Vault deletes the user) is issued and revoked with its task', async () => {
  const taskId = 't-rt3-aws-user';
  await openTask(taskId);
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'aws-user', ttlSeconds: 60 });
  expect(r.status).toBe(201);
  expect(r.body).toMatchObject({ revocable: true, credentials: { access_key: expect.stringMatching(/^AKIA/), session_token: null } });
  expect(emu.isAwsKeyValid(r.body.credentials.access_key)).toBe(true);
  expect((await call(t.url, 'POST', `/v1/tasks/${taskId}/complete`, t.as(ORCH))).status).toBe(202);
  await waitFor(async () => (await call(t.url, 'GET', `/v1/leases/${r.body.leaseId}`, t.as(AGENT))).body.status === 'revoked', 8000, 25);
  expect(emu.isAwsKeyValid(r.body.credentials.access_key)).toBe(false);
});
