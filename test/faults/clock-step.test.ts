import { resolve } from 'node:path';
import { jest } from '@jest/globals';
import { loadConfig } from '../../src/config/load.ts';
import { startAwsEmulator, type AwsEmulator } from '../emulators/aws/index.ts';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import {
  AGENT,
  ORCH,
  call,
  dropPrefix,
  startTestBroker,
  testConfigFile,
  uniquePrefix,
  waitFor,
  type TestBroker,
} from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { type BrokerProcess, START_TIMEOUT_MS, startBrokerProcess } from '../helpers/process.ts';
import { brokerAwsSettings } from '../providers/aws/helpers.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';

/**
 * Fault: a worker's wall clock is an hour behind (NTP broken; test/faults/clock-skew.test.ts shows the broker
 * decides on Redis's clock anyway), then NTP sets it right in one step, while Vault is sealed and a task is
 * completed. The worker estimated Redis's clock as its wall clock plus the offset measured at the last sync
 * (every 10 s): right after the step that estimate was an hour ahead, so the first failed revoke attempt found
 * the token's expiry passed and ended the lease `expired` for good, while the token worked on in Vault for the
 * rest of its TTL, nobody retrying. The estimate now adds the lesser of the wall and monotonic clocks' elapsed
 * time (src/redis/clock.ts): the revocation is retried until Vault confirms it.
 */
jest.setTimeout(START_TIMEOUT_MS + 60_000);
const SHIM = resolve('test/faults/step-clock.mjs');
const HOUR = 3_600_000;
const issuer = new TestIssuer();
const prefix = uniquePrefix('clock-step');
let emu: VaultEmulator | undefined;
let aws: AwsEmulator | undefined;
const workers: BrokerProcess[] = [];
const apis: TestBroker[] = [];

afterAll(async () => {
  for (const w of workers) await w.kill();
  for (const a of apis) await a.broker.close();
  await emu?.stop();
  await aws?.stop();
  await dropPrefix(prefix);
  await dropPrefix(`${prefix}-aws`);
  await dropPrefix(`${prefix}-fast`);
});

/** The only worker, its clock an hour behind until `step` sets it right (SIGUSR2); an API without a worker. */
async function stack(
  name: string,
  pfx: string,
  overrides: Record<string, unknown>,
  opts: { skewMs?: number; reconcileIntervalMs?: number } = {},
) {
  const file = testConfigFile(issuer, pfx, {
    ...overrides,
    revocation: {
      backoffMs: 100,
      maxBackoffMs: 500,
      reconcileIntervalMs: opts.reconcileIntervalMs ?? 60_000,
      lockMs: 1000,
      stalledCheckMs: 500,
      sweepMs: 50,
    },
  });
  const worker = await startBrokerProcess(file, {
    args: ['--worker'],
    env: { NODE_OPTIONS: `--import=${SHIM}`, JIT_TEST_CLOCK_SKEW_MS: String(opts.skewMs ?? -HOUR) },
  });
  workers.push(worker);
  const api = await startTestBroker(name, { prefix: pfx, issuer, loaded: loadConfig({}, file), broker: { worker: false } });
  apis.push(api);
  const step = async () => {
    const from = worker.output().length;
    worker.child.kill('SIGUSR2');
    await waitFor(async () => worker.output().slice(from).includes('clock stepped'), 10_000, 10);
  };
  return { api, step };
}

const as = (path: string) => ({ authorization: `Bearer ${issuer.svid(path)}` });

test('a worker clock stepped an hour forward gives up no revocation while its Vault token still works', async () => {
  emu = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
  const { token } = emu.createToken({ policies: ['jit-broker', 'ops-read'] });
  const { api, step } = await stack('clock-step-vault', prefix, {
    providers: { vault: { address: emu.url, auth: { token }, requestTimeoutMs: 2000 } },
    roles: { 'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] }, maxTtlSeconds: 600 } },
  });
  const { leases } = api.broker.deps;

  const open = await call(api.url, 'POST', '/v1/tasks', as(ORCH), {
    taskId: 't-step',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'clock step',
    ttlSeconds: 900,
    grants: [{ role: 'vault-ops', scopes: ['ops-read'] }],
  });
  expect(open.status).toBe(201);
  const cred = await call(api.url, 'POST', '/v1/credentials', as(AGENT), { taskId: 't-step', role: 'vault-ops', ttlSeconds: 600 });
  expect(cred.status).toBe(201);
  const vaultToken = cred.body.credentials.token as string;
  expect(emu.isTokenValid(vaultToken)).toBe(true);

  // Vault cannot revoke anything for a while; the worker's clock is set right; the orchestrator ends the task.
  emu.seal();
  await step();
  const done = await call(api.url, 'POST', '/v1/tasks/t-step/complete', as(ORCH));
  expect(done.status).toBe(202);

  // The first attempt fails (sealed). Before: the lease ended `expired` there, with the token ten minutes from
  // its end. Now it shows `revoke_failed`, and is retried.
  const failing = await waitFor(async () => {
    const l = await leases.get(cred.body.leaseId);
    return l && (l.status === 'revoke_failed' || LeaseEnded.has(l.status)) && l;
  }, 20_000);
  expect(failing).toMatchObject({ status: 'revoke_failed', lastError: expect.any(String) });
  expect(emu.isTokenValid(vaultToken)).toBe(true);

  // Vault is back: the retry revokes the token, and only then does the lease end.
  emu.unseal();
  const ended = await waitFor(async () => {
    const l = await leases.get(cred.body.leaseId);
    return l && LeaseEnded.has(l.status) && l;
  }, 20_000);
  expect(ended).toMatchObject({ status: 'revoked', reason: 'task_completed' });
  expect(emu.isTokenValid(vaultToken)).toBe(false);
});

/**
 * The same step on AWS, where nothing upstream has to fail: the deny of a session whose end (plus
 * `clockSkewSeconds`) the estimate put in the past was skipped as needless, and the lease ended `revoked`
 * with the session still allowed (and any deny list write in that moment pruned live denies as expired).
 */
test('a worker clock stepped an hour forward denies the AWS session of a completed task', async () => {
  aws = await startAwsEmulator();
  const user = aws.createUser('jit-broker');
  const role = aws.createRole('agent-reports', { maxSessionDuration: 3600, trust: [user.arn] });
  const { api, step } = await stack('clock-step-aws', `${prefix}-aws`, {
    providers: { aws: brokerAwsSettings(aws.url, user, { revocation: 'iam-deny', requestTimeoutMs: 2000 }) },
    roles: { 'reports-bucket': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 } },
  });
  const open = await call(api.url, 'POST', '/v1/tasks', as(ORCH), {
    taskId: 't-step-aws',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'clock step',
    ttlSeconds: 3600,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
  });
  expect(open.status).toBe(201);
  const cred = await call(api.url, 'POST', '/v1/credentials', as(AGENT), { taskId: 't-step-aws', role: 'reports-bucket', ttlSeconds: 900 });
  expect(cred.status).toBe(201);
  const key = cred.body.credentials.AccessKeyId as string;
  expect(aws.evaluate(key, 's3:GetObject', 'arn:aws:s3:::reports/x')).toBe('allow');

  await step();
  expect((await call(api.url, 'POST', '/v1/tasks/t-step-aws/complete', as(ORCH))).status).toBe(202);
  const ended = await waitFor(async () => {
    const l = await api.broker.deps.leases.get(cred.body.leaseId);
    return l && LeaseEnded.has(l.status) && l;
  }, 20_000);
  expect(ended).toMatchObject({ status: 'revoked', reason: 'task_completed' });
  // Before: `revoked`, and still allowed.
  expect(aws.evaluate(key, 's3:GetObject', 'arn:aws:s3:::reports/x')).toBe('explicit-deny');
});

/**
 * The other way: a worker an hour fast set right. BullMQ schedules a failed job's retry on the worker's wall
 * clock (its own `Date.now()` plus the backoff): the last retry that worker scheduled before the step was due
 * an hour out, and the reconciler's re-enqueue of the `revoke_failed` lease was a no-op beside it (same job
 * id). Vault back, the token stayed valid for that hour with nobody retrying. The reconciler now brings
 * forward a lease's retry due further away than `maxBackoffMs` on Redis's clock (RevocationQueue.promoteFarRetries).
 */
test('a retry a fast worker scheduled before its clock was set right is not left an hour away', async () => {
  // The first test's Vault when it ran (it is left sealed), a new one when this test runs alone.
  emu ??= await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
  const vault = emu;
  const { token } = vault.createToken({ policies: ['jit-broker', 'ops-read'] });
  const { api, step } = await stack(
    'clock-step-fast',
    `${prefix}-fast`,
    {
      providers: { vault: { address: vault.url, auth: { token }, requestTimeoutMs: 2000 } },
      roles: { 'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] }, maxTtlSeconds: 600 } },
    },
    { skewMs: HOUR, reconcileIntervalMs: 1000 },
  );
  const { leases } = api.broker.deps;
  vault.unseal();
  const open = await call(api.url, 'POST', '/v1/tasks', as(ORCH), {
    taskId: 't-step-fast',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'clock step',
    ttlSeconds: 900,
    grants: [{ role: 'vault-ops', scopes: ['ops-read'] }],
  });
  expect(open.status).toBe(201);
  const cred = await call(api.url, 'POST', '/v1/credentials', as(AGENT), { taskId: 't-step-fast', role: 'vault-ops', ttlSeconds: 600 });
  expect(cred.status).toBe(201);
  const vaultToken = cred.body.credentials.token as string;

  vault.seal();
  expect((await call(api.url, 'POST', '/v1/tasks/t-step-fast/complete', as(ORCH))).status).toBe(202);
  await waitFor(async () => (await leases.get(cred.body.leaseId))?.status === 'revoke_failed', 20_000);
  // Its retry is scheduled on the worker's clock, an hour out by Redis's (BullMQ's delayed set of the one
  // queue, `revocation.queues` 1: due ms × 0x1000).
  const { queue } = api.broker.deps;
  await waitFor(async () => {
    const score = await api.broker.deps.redis.zscore(queue.queues[0]!.keys.delayed!, `lease-end-${cred.body.leaseId}`);
    return score !== null && Number(score) / 0x1000 > Date.now() + HOUR / 2;
  }, 20_000);
  await step();
  vault.unseal();
  // Before: still `revoke_failed` an hour later, the token valid.
  const ended = await waitFor(async () => {
    const l = await leases.get(cred.body.leaseId);
    return l && LeaseEnded.has(l.status) && l;
  }, 20_000);
  expect(ended).toMatchObject({ status: 'revoked', reason: 'task_completed' });
  expect(vault.isTokenValid(vaultToken)).toBe(false);
});

const LeaseEnded = new Set(['revoked', 'expired', 'failed']);
