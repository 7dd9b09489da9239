import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { AGENT, ORCH, call, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';

/**
 * The per-process memory of task incarnations the lease scripts found closed (CredentialService `closed`)
 * must hold only tasks that are closed. An upstream issuance whose own lease was revoked while the upstream
 * call ran ends 409 task_not_open (lease-activate.lua answers `revoke` with the lease's endRequested reason),
 * but the task is still open: remembering it refused every later request of the task in that process.
 */
let emu: VaultEmulator;
let t: TestBroker;
beforeAll(async () => {
  emu = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
  const { token } = emu.createToken({ policies: ['jit-broker', 'ops-read'] });
  t = await startTestBroker('closed-task-cache', {
    config: {
      providers: { vault: { address: emu.url, auth: { token }, requestTimeoutMs: 10_000, issueTtlSeconds: 5 } },
      roles: { 'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] }, maxTtlSeconds: 3600 } },
    },
  });
}, 60_000);
afterAll(async () => {
  await t?.close();
  await emu?.stop();
});

test('a lease revoked while its upstream call ran does not close its (open) task to later requests', async () => {
  const r0 = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'ctc-1',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'closed task cache',
    ttlSeconds: 3600,
    grants: [{ role: 'vault-ops' }],
  });
  expect(r0.status).toBe(201);
  const deps = t.broker.deps;
  const hold = emu.holdResponses('auth/token/create-orphan', 1);
  const pending = call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'ctc-1', role: 'vault-ops', ttlSeconds: 600 });
  const leaseId = await waitFor(async () => (await deps.tasks.leaseIds('ctc-1'))[0]);
  // The agent revokes the lease of its own request while Vault has not answered (an end requested, deferred).
  const rv = await call(t.url, 'DELETE', `/v1/leases/${leaseId}`, t.as(AGENT));
  expect(rv.status).toBeLessThan(300);
  hold.release();
  const first = await pending;
  expect([first.status, first.body.code]).toEqual([409, 'task_not_open']);
  // The task is open: the next request is served.
  const task = await call(t.url, 'GET', '/v1/tasks/ctc-1', t.as(ORCH));
  expect(task.body.status).toBe('open');
  const again = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'ctc-1', role: 'vault-ops', ttlSeconds: 600 });
  // Before: 409 task_not_open for the life of the process (or until 10,000 other tasks were refused).
  expect(again.status).toBe(201);
}, 30_000);
