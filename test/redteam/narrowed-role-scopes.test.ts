import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { join } from 'node:path';
import { validateConfig } from '../../src/config/load.ts';
import { AGENT, ORCH, auditRecords, call, startTestBroker, testRawConfig, uniquePrefix, type TestBroker } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';

/**
 * Red team: an operator narrows a role (drops `ops-write` from a Vault token role's policies, a scope
 * from a jwt role) and rolls the new config out. Tasks opened before keep their grants in Redis, and
 * issuance checked a request's scopes against the grant only: the agent of such a task still got Vault
 * tokens carrying the policy the role no longer has, and JWTs with the scope. The TTL bound already
 * followed the role's current config; the scopes now do too (403 scope_not_granted, audited), and a
 * request for what the role still allows is issued.
 */
let emu: VaultEmulator;
let before: TestBroker;
let after: TestBroker;
const agentId = `spiffe://dev.local${AGENT}`;

const roles = (policies: string[], scopes: string[]) => ({
  'vault-ops': { provider: 'vault', token: { policies } },
  'tickets-api': { provider: 'jwt', audience: 'https://tickets.internal', scopes },
});

beforeAll(async () => {
  emu = await startVaultEmulator({
    policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'], 'ops-write': ['secret/ops/*'] },
  });
  const { token } = emu.createToken({ policies: ['jit-broker', 'ops-read', 'ops-write'] });
  const vault = { vault: { address: emu.url, auth: { token }, requestTimeoutMs: 2000 } };
  const issuer = new TestIssuer();
  const prefix = uniquePrefix('rt3-narrowed');
  const raw = testRawConfig(issuer, prefix, {
    providers: vault,
    roles: roles(['ops-read', 'ops-write'], ['tickets:read', 'tickets:write']),
  });
  const file = join(process.cwd(), 'config/test.yaml');
  before = await startTestBroker('rt3-narrowed', { prefix, issuer, loaded: validateConfig(raw, {}, file) });
  // The same deployment after the rollout: same Redis prefix and KEK, the roles narrowed.
  const narrowed = { ...raw, roles: roles(['ops-read'], ['tickets:read']) };
  after = await startTestBroker('rt3-narrowed', { prefix, issuer, loaded: validateConfig(narrowed, {}, file) });
});
afterAll(async () => {
  await after?.broker.close();
  await before?.close();
  await emu?.stop();
});

test('a task opened before a role was narrowed gets only what the role still allows', async () => {
  const taskId = 't-rt3-narrowed';
  const open = await call(before.url, 'POST', '/v1/tasks', before.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'narrowed role',
    ttlSeconds: 600,
    grants: [{ role: 'vault-ops' }, { role: 'tickets-api' }],
  });
  expect(open.status).toBe(201);
  expect(open.body.grants).toEqual(
    expect.arrayContaining([expect.objectContaining({ role: 'vault-ops', scopes: ['ops-read', 'ops-write'] })]),
  );

  const issue = (body: Record<string, unknown>) => call(after.url, 'POST', '/v1/credentials', after.as(AGENT), { taskId, ...body });
  for (const body of [{ role: 'vault-ops' }, { role: 'vault-ops', scopes: ['ops-write'] }, { role: 'tickets-api' }]) {
    const r = await issue(body);
    expect({ status: r.status, code: r.body.code }).toEqual({ status: 403, code: 'scope_not_granted' });
  }
  // Nothing with the dropped policy exists in Vault.
  expect([...emu.state.tokens.values()].filter((tk) => tk.policies.includes('ops-write') && tk.meta?.task_id === taskId)).toEqual([]);

  const narrow = await issue({ role: 'vault-ops', scopes: ['ops-read'] });
  expect(narrow.status).toBe(201);
  expect(narrow.body.credentials.policies).toEqual(['ops-read']);
  const jwt = await issue({ role: 'tickets-api', scopes: ['tickets:read'] });
  expect(jwt.status).toBe(201);
  expect(jwt.body.credentials.scope).toBe('tickets:read');

  const denials = (await auditRecords(after.broker.deps.redis, after.broker.deps.keys)).filter(
    (a) => a.taskId === taskId && a.action === 'credential.deny',
  );
  expect(denials.length).toBeGreaterThan(0);
  expect(denials[0]).toMatchObject({ decision: 'deny', reason: 'scope_not_granted' });
});
