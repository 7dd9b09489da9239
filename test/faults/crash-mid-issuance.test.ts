import { jest } from '@jest/globals';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { AGENT, TEST_REVOCATION, call, openAgentTask, testConfigFile, waitFor } from '../helpers/broker.ts';
import { START_TIMEOUT_MS, processFixture } from '../helpers/process.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';

/**
 * Fault: the API process is SIGKILLed while Vault issuances are in flight.
 * Vault has created the tokens; the broker never recorded them. Contract
 * section 5: they are created short-lived and extended only once recorded, so
 * each dies by itself, and the stuck `issuing` leases end `failed`. Before,
 * half of 32 such tokens lived on for their full TTL, never revoked.
 */
// The test starts an API process, allowed START_TIMEOUT_MS, then works for a few seconds.
jest.setTimeout(START_TIMEOUT_MS + 60_000);
let emu: VaultEmulator;
const fx = processFixture();
fx.onCleanup(() => emu?.stop());
const { issuer, as } = fx;
const prefix = fx.prefix('crash');

test('tokens Vault made for a broker that died before recording them all die; their leases end failed', async () => {
  emu = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
  const { token } = emu.createToken({ policies: ['jit-broker', 'ops-read'] });
  const overrides = {
    providers: { vault: { address: emu.url, auth: { token }, requestTimeoutMs: 5000, issueTtlSeconds: 5 } },
    roles: { 'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] } } },
    revocation: { ...TEST_REVOCATION, orphanMs: 2000 },
  };
  const file = testConfigFile(issuer, prefix, overrides);
  const api = await fx.start(file, { args: ['--api'] });
  await openAgentTask({ url: api.url, as }, 't-crash', [{ role: 'vault-ops', scopes: ['ops-read'] }], 'crash');

  const N = 16;
  const hold = emu.holdResponses('auth/token/create-orphan', N);
  const inflight = Array.from({ length: N }, () =>
    call(api.url, 'POST', '/v1/credentials', as(AGENT), { taskId: 't-crash', role: 'vault-ops', ttlSeconds: 600 }).catch(() => undefined),
  );
  await hold.until(N); // Vault made every token; no answer reached the broker
  const made = [...emu.state.tokens.values()].filter((t) => t.policies.includes('ops-read') && t.meta?.task_id === 't-crash');
  expect(made).toHaveLength(N);
  await api.kill('SIGKILL');
  await Promise.all(inflight);
  hold.release();

  // Another instance (worker only) finds the orphans once their window has passed.
  const worker = await fx.startBroker('crash-worker', file, { api: false });
  const ids = await worker.broker.deps.tasks.leaseIds('t-crash');
  expect(ids).toHaveLength(N);
  await waitFor(async () => (await worker.broker.deps.leases.getMany(ids)).every((l) => l.status === 'failed'), 10_000, 100);
  for (const l of await worker.broker.deps.leases.getMany(ids))
    expect(l).toMatchObject({ status: 'failed', lastError: 'issuance_interrupted' });

  // Vault's side: every token made for the dead broker is gone once its short TTL has passed.
  emu.advanceTime(6);
  for (const t of made) expect(emu.isTokenValid(t.id)).toBe(false);
});
