import { jest } from '@jest/globals';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { AGENT, ORCH, call, openAgentTask, testConfigFile, waitFor } from '../helpers/broker.ts';
import { START_TIMEOUT_MS, processFixture } from '../helpers/process.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';

/**
 * Red team, the revocation promise across a SIGKILL, for what test/faults/crash-mid-issuance.test.ts does
 * not cover: Vault path roles (a reader token, then the database user it reads) and the last step of an
 * issuance (the lease recorded `active`, the credential being extended to its TTL). The API process is
 * killed with Vault's answers held; nothing may outlive Vault's short issue TTL, and the leases end
 * `failed` (never handed out) or stay `active` until their task revokes them.
 */
jest.setTimeout(2 * START_TIMEOUT_MS + 90_000);
let emu: VaultEmulator;
const fx = processFixture();
fx.onCleanup(() => emu?.stop());
const { issuer, as } = fx;
const prefix = fx.prefix('rt3-crash-secret');

test('SIGKILL while Vault answers a secret read, or an extension, leaves nothing alive past the issue TTL', async () => {
  emu = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
  emu.createDatabaseRole('orders', { defaultTtl: 3600, maxTtl: 7200 });
  const { token } = emu.createToken({ policies: ['jit-broker', 'ops-read'] });
  const file = testConfigFile(issuer, prefix, {
    providers: { vault: { address: emu.url, auth: { token }, requestTimeoutMs: 5000, issueTtlSeconds: 5 } },
    roles: {
      'orders-db': { provider: 'vault', path: 'database/creds/orders' },
      'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] } },
    },
    revocation: {
      backoffMs: 50,
      maxBackoffMs: 500,
      reconcileIntervalMs: 60_000,
      lockMs: 1000,
      stalledCheckMs: 500,
      sweepMs: 20,
      orphanMs: 2000,
    },
  });
  const open = (url: string, taskId: string) => openAgentTask({ url, as }, taskId, [{ role: 'orders-db' }, { role: 'vault-ops' }], 'crash');

  // 1. Killed while Vault's database answers are held: readers and users exist in Vault, no lease knows them.
  const first = await fx.start(file, { args: ['--api'] });
  await open(first.url, 't-crash-read');
  const N = 4;
  const reads = emu.holdResponses(/^database\/creds\//, N);
  const inflight = Array.from({ length: N }, () =>
    call(first.url, 'POST', '/v1/credentials', as(AGENT), { taskId: 't-crash-read', role: 'orders-db', ttlSeconds: 600 }).catch(
      () => undefined,
    ),
  );
  await reads.until(N);
  const users = [...emu.state.dbUsers.values()].map((u) => u.username);
  expect(users).toHaveLength(N);
  await first.kill('SIGKILL');
  await Promise.all(inflight);
  reads.release();

  // 2. Killed while the extension of a recorded credential is held: the lease is `active`, the token short-lived.
  const second = await fx.start(file, { args: ['--api'] });
  await open(second.url, 't-crash-confirm');
  const extend = emu.holdResponses('auth/token/renew-accessor', 1);
  const pending = call(second.url, 'POST', '/v1/credentials', as(AGENT), {
    taskId: 't-crash-confirm',
    role: 'vault-ops',
    ttlSeconds: 600,
  }).catch(() => undefined);
  await extend.until(1);
  const extended = [...emu.state.tokens.values()].filter((t) => t.meta?.task_id === 't-crash-confirm');
  expect(extended).toHaveLength(1);
  await second.kill('SIGKILL');
  await pending;
  extend.release();

  const worker = await fx.startBroker('rt3-crash-worker', file);
  const readIds = await worker.broker.deps.tasks.leaseIds('t-crash-read');
  expect(readIds).toHaveLength(N);
  await waitFor(async () => (await worker.broker.deps.leases.getMany(readIds)).every((l) => l.status === 'failed'), 10_000, 100);

  // Vault's side: past the 5 s issue TTL every reader token is gone, and with it every database user.
  emu.advanceTime(6);
  for (const u of users) expect(emu.isDbUserValid(u)).toBe(false);
  expect([...emu.state.tokens.values()].filter((t) => t.meta?.task_id === 't-crash-read')).toEqual([]);
  // The extension Vault carried out for a broker that died: the lease was recorded `active` before it was
  // sent, so the token is on the books and ends with its task.
  const [confirmId] = await worker.broker.deps.tasks.leaseIds('t-crash-confirm');
  expect((await worker.broker.deps.leases.get(confirmId!))?.status).toBe('active');
  expect(emu.isTokenValid(extended[0]!.id)).toBe(true);
  expect((await call(worker.url, 'POST', '/v1/tasks/t-crash-confirm/complete', as(ORCH))).status).toBe(202);
  await waitFor(async () => (await worker.broker.deps.leases.get(confirmId!))?.status === 'revoked', 10_000, 100);
  expect(emu.isTokenValid(extended[0]!.id)).toBe(false);
});
