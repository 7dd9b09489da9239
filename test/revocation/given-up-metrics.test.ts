import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { AwsEmulator } from '../emulators/aws/index.ts';
import { AGENT, ORCH, auditRecords, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';
import { awsForBroker } from '../providers/aws/helpers.ts';

/**
 * Found by a red-team pass: an issuance given up by the worker (its upstream call got no answer, or its
 * process died) whose revoke then failed upstream was counted in jit_revocations_total as
 * `reason="ttl_expired"`, as if a live credential's TTL had run out; a failure that lasted until the
 * credential's expiry ended the lease `expired` with reason `ttl_expired` though nothing was ever handed
 * out. Now every revocation of a given-up issuance is counted with `reason="issuance_interrupted"` (failed
 * attempts, then `revoked` or `expired` once), and the lease always ends `failed`, as the contract says of
 * an issuance that failed. The AWS emulator answers STS with 500s (the outcome is unknown: the lease stays
 * `issuing` for the worker) and IAM with 500s (the revoke fails), through the real SDK clients.
 */
let emu: AwsEmulator;
let t: TestBroker;

beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  t = await startTestBroker('given-up-metrics', {
    config: {
      providers: { aws: { ...aws.providers.aws, revocation: 'iam-deny' } },
      roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
      revocation: {
        backoffMs: 50,
        maxBackoffMs: 200,
        reconcileIntervalMs: 60_000,
        concurrency: 4,
        lockMs: 1000,
        stalledCheckMs: 500,
        sweepMs: 20,
        orphanMs: 1000, // the minimum: the worker gives the issuance up a second after it started
      },
    },
  });
}, 60_000);
afterAll(async () => {
  await t?.close();
  await emu?.stop();
});

/** jit_revocations_total for the aws provider, as `result/reason` → count. */
async function counted(): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const v of (await t.broker.deps.metrics.revocations.get()).values) {
    if (v.labels.provider === 'aws') out[`${v.labels.result}/${v.labels.reason}`] = v.value;
  }
  return out;
}

/** Asks for a credential while STS answers only 500s: a 502, and an `issuing` lease the worker gives up. */
async function interruptedIssuance(taskId: string): Promise<string> {
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'given-up metrics',
    ttlSeconds: 7200,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
  });
  expect(open.status).toBe(201);
  emu.failNext(3, { action: 'AssumeRole' }); // every attempt (maxAttempts 3): no answer understood
  const res = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'reports-bucket' });
  expect(res.status).toBe(502);
  const [leaseId] = await t.broker.deps.tasks.leaseIds(taskId);
  return leaseId!;
}

test('a given-up issuance whose revoke fails is counted as issuance_interrupted, never ttl_expired, and ends failed once revoked', async () => {
  const before = await counted();
  emu.failNext(6, { action: 'GetRolePolicy' }); // the first two revoke attempts fail (3 IAM attempts each)
  const leaseId = await interruptedIssuance('t-gum-1');
  const deps = t.broker.deps;
  const ended = await waitFor(async () => {
    const l = (await deps.leases.get(leaseId))!;
    return l.status === 'failed' && l;
  }, 20_000);
  expect(ended.lastError).toBe('issuance_interrupted');
  expect(ended.reason).toBeUndefined();
  const after = await counted();
  const delta = (k: string) => (after[k] ?? 0) - (before[k] ?? 0);
  // Before: result="failed", reason="ttl_expired" for each failed attempt, and nothing once it was revoked.
  expect(delta('failed/ttl_expired')).toBe(0);
  expect(delta('failed/issuance_interrupted')).toBeGreaterThanOrEqual(2);
  expect(delta('revoked/issuance_interrupted')).toBe(1);
  // The session's name is denied on the role.
  const policy = JSON.stringify(emu.rolePolicy('agent-reports', 'jit-broker-revoked-sessions'));
  expect(policy).toContain(String(ended.handle.sessionName));
  const records = await waitFor(async () => {
    const all = (await auditRecords(deps.redis, deps.keys)).filter((r) => r.leaseId === leaseId);
    return all.some((r) => r.action === 'credential.fail') && all;
  });
  expect(records.filter((r) => r.action === 'lease.revoke_failed').length).toBe(1);
  expect(records.filter((r) => r.action === 'credential.fail').map((r) => r.reason)).toEqual(['issuance_interrupted']);
}, 60_000);

test("the issuing process's own revoke of a session recorded past its deadline, failing, is counted as issuance_interrupted", async () => {
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-gum-3',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'given-up metrics',
    ttlSeconds: 7200,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
  });
  expect(open.status).toBe(201);
  const deps = t.broker.deps;
  const workers = t.broker.worker!.workers;
  await Promise.all(workers.map((w) => w.pause())); // the worker's own revoke waits: only the issuing process's runs
  try {
    const before = await counted();
    // STS makes the session at once; its answer arrives past the 1-s orphan deadline (within the 2-s request timeout).
    emu.holdAnswer('AssumeRole', 1500);
    emu.failNext(3, { action: 'GetRolePolicy' }); // and the issuing process's revoke of it fails
    const res = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-gum-3', role: 'reports-bucket' });
    expect(res.status).toBe(502);
    const after = await counted();
    // Before: not counted at all (only logged), though the session it holds lives on until the worker revokes it.
    expect((after['failed/issuance_interrupted'] ?? 0) - (before['failed/issuance_interrupted'] ?? 0)).toBe(1);
    await Promise.all(workers.map((w) => w.resume()));
    const [leaseId] = await deps.tasks.leaseIds('t-gum-3');
    await waitFor(async () => (await deps.leases.get(leaseId!))?.status === 'failed', 20_000);
    expect(((await counted())['revoked/issuance_interrupted'] ?? 0) - (before['revoked/issuance_interrupted'] ?? 0)).toBe(1);
  } finally {
    await Promise.all(workers.map((w) => w.resume()));
  }
}, 60_000);

test('a given-up issuance whose revoke fails until its credential expires ends failed, counted expired with issuance_interrupted', async () => {
  const before = await counted();
  emu.failNext(100_000, { action: 'GetRolePolicy' }); // IAM never answers the revoke (the last test: the emulator stops after it)
  const deps = t.broker.deps;
  {
    const leaseId = await interruptedIssuance('t-gum-2');
    const failing = await waitFor(async () => {
      const l = (await deps.leases.get(leaseId))!;
      return l.status === 'revoke_failed' && l;
    }, 20_000);
    // The broker's clock passes the credential's expiry (AWS's does not: the deny would still be needed).
    const clock = deps.clock;
    const realNow = clock.now.bind(clock);
    const ahead = failing.expiresAt - realNow() + 1000;
    clock.now = () => realNow() + ahead;
    try {
      const ended = await waitFor(async () => {
        const l = (await deps.leases.get(leaseId))!;
        return l.status !== 'revoke_failed' && l;
      }, 20_000);
      // Before: `expired` with reason ttl_expired, a TTL that ran out on a lease never handed out.
      expect(ended.status).toBe('failed');
      expect(ended.reason).toBeUndefined();
      expect(ended.lastError).toBe('issuance_interrupted');
    } finally {
      clock.now = realNow;
    }
    const after = await counted();
    const delta = (k: string) => (after[k] ?? 0) - (before[k] ?? 0);
    expect(delta('failed/ttl_expired')).toBe(0);
    expect(delta('expired/ttl_expired')).toBe(0);
    expect(delta('failed/issuance_interrupted')).toBeGreaterThanOrEqual(1);
    expect(delta('expired/issuance_interrupted')).toBe(1);
    const records = await waitFor(async () => {
      const all = (await auditRecords(deps.redis, deps.keys)).filter((r) => r.leaseId === leaseId);
      return all.some((r) => r.action === 'credential.fail') && all;
    });
    const fail = records.filter((r) => r.action === 'credential.fail');
    expect(fail.map((r) => r.reason)).toEqual(['issuance_interrupted']);
    expect(fail[0]!.detail).toMatchObject({ revoke: 'expired', lastError: 'upstream_unavailable' });
    expect(records.map((r) => r.action)).not.toContain('lease.expire');
  }
}, 60_000);
