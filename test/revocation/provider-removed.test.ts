import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { join } from 'node:path';
import { validateConfig } from '../../src/config/load.ts';
import {
  AGENT,
  ORCH,
  auditRecords,
  call,
  dropPrefix,
  startTestBroker,
  testRawConfig,
  uniquePrefix,
  waitFor,
  type TestBroker,
} from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';
import { leaseEndJobId } from '../../src/revocation/queue.ts';

/**
 * A restart without the provider of live leases (an operator removed `providers.vault` while tokens
 * were out). Found from outside: completing the task left the lease `revoking` with no error, no
 * audit record and no metric, while the token stayed valid upstream. A revocation that cannot run
 * is a failed revocation: `revoke_failed`, audited, counted, retried, and done once the provider is back.
 */
let emu: VaultEmulator;
const prefix = uniquePrefix('provider-removed');
const issuer = new TestIssuer();
const brokers: TestBroker[] = [];
afterAll(async () => {
  for (const b of brokers) await b.broker.close().catch(() => {});
  await emu?.stop();
  await dropPrefix(prefix);
});

const CONFIG_PATH = join(process.cwd(), 'config/test.yaml');
const revocation = { backoffMs: 50, maxBackoffMs: 300, reconcileIntervalMs: 60_000, sweepMs: 50 };

/** Starts instances on one prefix and KEK (they share the Redis data), with or without providers.vault. */
function setup() {
  const { token } = emu.createToken({ policies: ['jit-broker', 'ops-read'] });
  const raw = testRawConfig(issuer, prefix, {
    providers: { vault: { address: emu.url, auth: { token }, requestTimeoutMs: 5000 } },
    roles: { 'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] }, maxTtlSeconds: 3600 } },
    revocation,
  });
  const without = structuredClone(raw) as { providers: Record<string, unknown>; roles: Record<string, unknown> };
  delete without.providers.vault;
  without.roles = { 'tickets-api': { provider: 'jwt', audience: 'https://tickets.internal', maxTtlSeconds: 300 } };
  const start = async (config: Record<string, unknown>) => {
    const b = await startTestBroker('provider-removed', { prefix, issuer, loaded: validateConfig(config, {}, CONFIG_PATH) });
    brokers.push(b);
    return b;
  };
  return { start: (vault: boolean) => start(vault ? raw : without) };
}

async function vaultLease(b: TestBroker, taskId: string, ttlSeconds?: number) {
  const open = await call(b.url, 'POST', '/v1/tasks', b.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'provider removed',
    ttlSeconds: 3600,
    grants: [{ role: 'vault-ops', scopes: ['ops-read'] }],
  });
  expect(open.status).toBe(201);
  const c = await call(b.url, 'POST', '/v1/credentials', b.as(AGENT), { taskId, role: 'vault-ops', ...(ttlSeconds ? { ttlSeconds } : {}) });
  expect(c.status).toBe(201);
  return c.body as { leaseId: string; credentials: { token: string } };
}

let start: ReturnType<typeof setup>['start'];
beforeAll(async () => {
  emu = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
  ({ start } = setup());
});

test('a lease whose provider is no longer configured shows revoke_failed, audited, and is revoked once the provider is back', async () => {
  const a = await start(true);
  const c = { body: await vaultLease(a, 'pr-1') };
  await a.broker.close(); // keeps its Redis data (TestBroker.close drops the prefix)

  const b = await start(false);
  expect((await call(b.url, 'POST', '/v1/tasks/pr-1/complete', b.as(ORCH))).status).toBe(202);
  // Before: `revoking` for good, no lastError, no record.
  const failed = await waitFor(async () => {
    const l = (await b.broker.deps.leases.get(c.body.leaseId))!;
    return l.status === 'revoke_failed' && l;
  }, 10_000);
  expect(failed.lastError).toBe('provider_unavailable');
  const records = await auditRecords(b.broker.deps.redis, b.broker.deps.keys);
  expect(records).toContainEqual(
    expect.objectContaining({ action: 'lease.revoke_failed', leaseId: c.body.leaseId, reason: 'provider_unavailable' }),
  );
  expect(emu.isTokenValid(c.body.credentials.token)).toBe(true);
  await b.broker.close();

  const back = await start(true);
  await waitFor(async () => (await back.broker.deps.leases.get(c.body.leaseId))!.status === 'revoked', 20_000);
  expect(emu.isTokenValid(c.body.credentials.token)).toBe(false);
}, 60_000);

test('a stale TTL hand-over reaching a worker without the provider leaves the live lease alone', async () => {
  // Found in review of the fix above: the missing-provider check ran before the stale hand-over check, so
  // the live lease went revoke_failed, and a worker with the provider later ended it `expired` ~50 min early.
  const a = await start(true);
  const c = { body: await vaultLease(a, 'pr-2', 3000) };
  await a.broker.close();
  const b = await start(false);
  const { queue } = b.broker.deps;
  await queue.endLease({ leaseId: c.body.leaseId }, 'ttl_expired', Date.now()); // what a stale sweeper hand-over queues
  const q = queue.queues[queue.groupOf(b.broker.deps.keys.bucketOfId(c.body.leaseId)!)]!;
  await waitFor(async () => !(await q.getJob(leaseEndJobId(c.body.leaseId))), 10_000, 25);
  const l = (await b.broker.deps.leases.get(c.body.leaseId))!;
  expect({ status: l.status, lastError: l.lastError }).toEqual({ status: 'active', lastError: undefined });
  expect(emu.isTokenValid(c.body.credentials.token)).toBe(true);
}, 60_000);
