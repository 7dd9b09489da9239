import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { AwsEmulator } from '../emulators/aws/index.ts';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { AGENT, ORCH, auditRecords, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';
import { awsForBroker, callerIdentityAs } from '../providers/aws/helpers.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';
import { RetryableUpstreamError, upstreamFailed } from '../../src/errors.ts';
import { leaseEndJobId } from '../../src/revocation/queue.ts';

/**
 * An issuance whose process stalls past its orphan deadline (GC, a frozen container, a slow upstream)
 * while the worker gives it up. Found from outside: an activation past the deadline still succeeded
 * and was handed out, and then either the queued hand-over ended the live lease `expired` (AWS: the
 * session outlived its task) or the worker ended it `failed` after the activation (Vault: the
 * extended token outlived its task). Now the deadline is decided in Redis, in one step with the
 * lease: past it nothing is handed out and what was made is revoked; and a stale TTL hand-over never
 * ends a live lease early.
 */
const revocation = {
  backoffMs: 50,
  maxBackoffMs: 500,
  reconcileIntervalMs: 60_000,
  concurrency: 8,
  lockMs: 1000,
  stalledCheckMs: 500,
  sweepMs: 20,
  orphanMs: 1000, // the minimum: compresses the wait, changes nothing else
};

async function openTask(t: TestBroker, taskId: string, role: string, scopes?: string[]): Promise<void> {
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'late activation',
    ttlSeconds: 7200,
    grants: [{ role, ...(scopes ? { scopes } : {}) }],
  });
  expect(r.status).toBe(201);
}

describe('aws', () => {
  let emu: AwsEmulator;
  let t: TestBroker;
  beforeAll(async () => {
    const aws = await awsForBroker();
    emu = aws.emu;
    t = await startTestBroker('late-activation-aws', {
      config: {
        providers: { aws: { ...aws.providers.aws, revocation: 'iam-deny' } },
        roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
        revocation,
      },
    });
  }, 60_000);
  afterAll(async () => {
    await t?.close();
    await emu?.stop();
  });
  const whoAmI = (c: Record<string, string>) =>
    callerIdentityAs(emu.url, { accessKeyId: c.AccessKeyId!, secretAccessKey: c.SecretAccessKey!, sessionToken: c.SessionToken! });
  /** Failed aws revocation attempts counted in jit_revocations_total. */
  const failedRevocations = async () =>
    (await t.broker.deps.metrics.revocations.get()).values
      .filter((v) => v.labels.result === 'failed' && v.labels.provider === 'aws')
      .reduce((n, v) => n + v.value, 0);

  test('a session STS made before the deadline but recorded after it, with the hand-over still queued, is never handed out and is denied', async () => {
    await openTask(t, 'la-aws-1', 'reports-bucket', ['s3:GetObject']);
    const deps = t.broker.deps;
    const aws = deps.providers.get('aws')!;
    const realIssue = aws.issue.bind(aws);
    let release!: () => void;
    const stalled = new Promise<void>((r) => {
      release = r;
    });
    let made: Record<string, string> | undefined;
    aws.issue = async (req) => {
      const out = await realIssue(req);
      made = out.credentials as Record<string, string>;
      await stalled; // the issuing process stalls between STS's answer and recording it
      return out;
    };
    const workers = t.broker.worker!.workers;
    await Promise.all(workers.map((w) => w.pause())); // a backlog: the hand-over waits in the queue
    try {
      const pending = call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'la-aws-1', role: 'reports-bucket' });
      const leaseId = await waitFor(async () => (await deps.tasks.leaseIds('la-aws-1'))[0], 5000);
      const q = deps.queue.queues[deps.queue.groupOf(deps.keys.bucketOfId(leaseId)!)]!;
      await waitFor(async () => (await q.getJob(leaseEndJobId(leaseId))) ?? false, 10_000, 50);
      release();
      const res = await pending;
      // Before: 201 with a live session, which the queued job then "expired" (nothing denied upstream).
      expect(res.status).toBe(502);
      expect(res.body.credentials).toBeUndefined();
      expect(await whoAmI(made!)).toBe('AccessDenied');
      await Promise.all(workers.map((w) => w.resume()));
      const ended = await waitFor(async () => {
        const l = (await deps.leases.get(leaseId))!;
        return l.status === 'failed' && l;
      }, 10_000);
      expect(ended.lastError).toBe('issuance_interrupted');
    } finally {
      aws.issue = realIssue;
      await Promise.all(workers.map((w) => w.resume()));
    }
  }, 60_000);

  test('a session made after a stall before the STS call is denied, and its policy ends at the deadline the lease recorded', async () => {
    await openTask(t, 'la-aws-3', 'reports-bucket', ['s3:GetObject']);
    const deps = t.broker.deps;
    const aws = deps.providers.get('aws')!;
    const realIssue = aws.issue.bind(aws);
    let leaseId = '';
    aws.issue = async (req) => {
      leaseId = req.leaseId;
      // The issuing process stalls before calling STS until the worker has given the issuance up.
      await waitFor(async () => (await deps.leases.get(req.leaseId))?.status === 'failed', 10_000);
      return realIssue(req);
    };
    try {
      const res = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'la-aws-3', role: 'reports-bucket' });
      expect(res.status).toBe(502);
      const lease = (await deps.leases.get(leaseId))!;
      expect(lease.lastError).toBe('issuance_interrupted');
      const session = emu.sessions().at(-1)!;
      expect(session.sessionName).toBe(lease.handle.sessionName);
      // What was recorded before the call bounds the session, not the (later) time of the call.
      const deadline = new Date(Math.ceil((Number(lease.handle.expiresAt) + 300_000) / 1000) * 1000).toISOString().replace('.000Z', 'Z');
      expect(JSON.parse(session.policyText!).Statement[0].Condition).toEqual({ DateLessThan: { 'aws:CurrentTime': deadline } });
      expect(
        await whoAmI({ AccessKeyId: session.accessKeyId, SecretAccessKey: session.secretAccessKey, SessionToken: session.sessionToken }),
      ).toBe('AccessDenied');
    } finally {
      aws.issue = realIssue;
    }
  }, 60_000);

  test('a given-up issuance whose revoke keeps failing shows revoke_failed, is on the work list, refuses a late activation, then ends failed', async () => {
    await openTask(t, 'la-aws-4', 'reports-bucket', ['s3:GetObject']);
    const deps = t.broker.deps;
    const aws = deps.providers.get('aws')!;
    const realIssue = aws.issue.bind(aws);
    const realRevoke = aws.revoke.bind(aws);
    let leaseId = '';
    let proceed!: () => void;
    const stalled = new Promise<void>((r) => {
      proceed = r;
    });
    let made: Record<string, string> | undefined;
    // The issuing process stalls before calling STS, past its orphan deadline, until the test lets it go.
    aws.issue = async (req) => {
      leaseId = req.leaseId;
      await stalled;
      const out = await realIssue(req);
      made = out.credentials as Record<string, string>;
      return out;
    };
    let failing = true;
    aws.revoke = async (lease, role, ctx) => {
      if (failing) throw new RetryableUpstreamError('upstream_error', 'iam unreachable');
      return realRevoke(lease, role, ctx);
    };
    const failedBefore = await failedRevocations();
    try {
      const pending = call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'la-aws-4', role: 'reports-bucket' });
      await waitFor(async () => leaseId !== '' && (await deps.redis.hget(deps.keys.lease(leaseId), 'attempts')) !== null, 15_000, 10);
      // Before: `issuing` (with lastError) until the credential's expiry, and on no work list.
      const shown = await call(t.url, 'GET', `/v1/leases/${leaseId}`, t.as(AGENT));
      expect(shown.status).toBe(200);
      expect(shown.body).toMatchObject({ status: 'revoke_failed', lastError: 'upstream_error' });
      const bucket = deps.keys.bucketOfId(leaseId)!;
      expect(await deps.redis.zscore(deps.keys.leasesRevoking(bucket), leaseId)).not.toBeNull();
      // The reconciler takes it up as it does any revoke_failed lease of an open task.
      expect(await t.broker.sweeper!.reconcile()).toBeGreaterThanOrEqual(1);
      const records = (await auditRecords(deps.redis, deps.keys)).filter((x) => x.leaseId === leaseId);
      expect(records.filter((x) => x.action === 'lease.revoke_failed').map((x) => x.reason)).toContain('upstream_error');
      expect(await failedRevocations()).toBeGreaterThan(failedBefore);
      // A DELETE asks for the revocation again; the lease still ends `failed`, for no revoke reason.
      expect((await call(t.url, 'DELETE', `/v1/leases/${leaseId}`, t.as(AGENT))).status).toBe(202);
      expect(await deps.leases.get(leaseId)).toMatchObject({ status: 'revoke_failed' });
      // The stalled issuance now gets STS's answer: refused (a 502, nothing handed out), its handle kept for revocation.
      expect((await deps.leases.get(leaseId))!.handle.tokenIssuedAt).toBeUndefined();
      proceed();
      const res = await pending;
      expect(res.status).toBe(502);
      expect(res.body.credentials).toBeUndefined();
      const after = (await deps.leases.get(leaseId))!;
      expect(after.status).toBe('revoke_failed');
      expect(after.handle.tokenIssuedAt).toBeDefined();
      failing = false;
      const ended = await waitFor(async () => {
        const l = (await deps.leases.get(leaseId))!;
        return l.status === 'failed' && l;
      }, 15_000);
      expect(ended.lastError).toBe('issuance_interrupted');
      expect(ended.reason).toBeUndefined();
      expect(await deps.redis.zscore(deps.keys.leasesRevoking(bucket), leaseId)).toBeNull();
      expect(await whoAmI(made!)).toBe('AccessDenied');
      const fails = (await auditRecords(deps.redis, deps.keys)).filter((x) => x.leaseId === leaseId && x.action === 'credential.fail');
      expect(fails.map((f) => f.reason)).toEqual(['issuance_interrupted']);
    } finally {
      proceed();
      aws.issue = realIssue;
      aws.revoke = realRevoke;
    }
  }, 60_000);

  test('a stale TTL hand-over for a live lease does not end it: completing the task still denies the session', async () => {
    await openTask(t, 'la-aws-2', 'reports-bucket', ['s3:GetObject']);
    const deps = t.broker.deps;
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'la-aws-2', role: 'reports-bucket' });
    expect(r.status).toBe(201);
    // What the sweeper left queued for this lease while it was issuing (an interrupted issuance's hand-over).
    await deps.queue.endLease({ leaseId: r.body.leaseId }, 'issuance_interrupted', deps.clock.now());
    const q = deps.queue.queues[deps.queue.groupOf(deps.keys.bucketOfId(r.body.leaseId)!)]!;
    await waitFor(async () => !(await q.getJob(leaseEndJobId(r.body.leaseId))), 10_000, 25);
    // Before: the job ended the lease `expired` (ttl_expired) with an hour left, and nothing was denied.
    expect((await deps.leases.get(r.body.leaseId))!.status).toBe('active');
    expect(await whoAmI(r.body.credentials)).toBe('ok');
    expect((await call(t.url, 'POST', '/v1/tasks/la-aws-2/complete', t.as(ORCH))).status).toBe(202);
    await waitFor(async () => (await deps.leases.get(r.body.leaseId))!.status === 'revoked', 10_000);
    expect(await whoAmI(r.body.credentials)).toBe('AccessDenied');
  }, 60_000);
});

describe('vault', () => {
  let emu: VaultEmulator;
  let t: TestBroker;
  beforeAll(async () => {
    emu = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
    const { token } = emu.createToken({ policies: ['jit-broker', 'ops-read'] });
    t = await startTestBroker('late-activation-vault', {
      config: {
        providers: { vault: { address: emu.url, auth: { token }, requestTimeoutMs: 10_000, issueTtlSeconds: 5 } },
        roles: { 'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] }, maxTtlSeconds: 3600 } },
        revocation,
      },
    });
  }, 60_000);
  afterAll(async () => {
    await t?.close();
    await emu?.stop();
  });

  test('an answer recorded just as the worker gives the issuance up is not handed out, and the token is revoked', async () => {
    await openTask(t, 'la-vault-1', 'vault-ops');
    const deps = t.broker.deps;
    // Vault creates the token at once; its answer arrives after the 1-s orphan deadline.
    const hold = emu.holdResponses('auth/token/create-orphan', 1);
    const realGiveUp = deps.leases.giveUp.bind(deps.leases);
    let raced = 0;
    // The worker has read the lease as `issuing`: the answer lands right before it gives it up.
    deps.leases.giveUp = async (leaseId) => {
      raced++;
      hold.release();
      await waitFor(async () => (await deps.redis.hget(deps.keys.lease(leaseId), 'givenUp')) !== null, 5000, 5);
      return realGiveUp(leaseId);
    };
    try {
      const res = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'la-vault-1', role: 'vault-ops', ttlSeconds: 3600 });
      expect(raced).toBeGreaterThanOrEqual(1);
      // Before: 201, the lease `failed`, and the extended token lived its hour after the task.
      expect(res.status).toBe(502);
      expect(res.body.credentials).toBeUndefined();
      const [leaseId] = await deps.tasks.leaseIds('la-vault-1');
      const ended = await waitFor(async () => {
        const l = (await deps.leases.get(leaseId!))!;
        return l.status === 'failed' && l;
      }, 10_000);
      const accessor = ended.handle.accessor as string;
      expect(accessor).toBeTruthy();
      expect(emu.tokenByAccessor(accessor)).toBeUndefined();
    } finally {
      deps.leases.giveUp = realGiveUp;
    }
  }, 60_000);

  test('a given-up issuance that its caller ended failed meanwhile (the upstream call failed late) gets one credential.fail record', async () => {
    await openTask(t, 'la-vault-2', 'vault-ops');
    const deps = t.broker.deps;
    const vault = deps.providers.get('vault')!;
    const realIssue = vault.issue.bind(vault);
    const realRevoke = vault.revoke.bind(vault);
    const leaseHash = async (): Promise<Record<string, string>> => {
      const [id] = await deps.tasks.leaseIds('la-vault-2');
      return id ? deps.redis.hgetall(deps.keys.lease(id)) : {};
    };
    // The upstream call stalls past the orphan deadline, then fails; the worker's revoke is slower still.
    vault.issue = async () => {
      await waitFor(async () => (await leaseHash()).givenUp !== undefined, 15_000, 10);
      throw upstreamFailed('upstream_error', 'upstream timed out');
    };
    vault.revoke = async (lease, role, opts) => {
      await waitFor(async () => (await leaseHash()).status === 'failed', 15_000, 10);
      return realRevoke(lease, role, opts);
    };
    try {
      const res = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'la-vault-2', role: 'vault-ops' });
      expect(res.status).toBe(502);
      const [leaseId] = await deps.tasks.leaseIds('la-vault-2');
      const q = deps.queue.queues[deps.queue.groupOf(deps.keys.bucketOfId(leaseId!)!)]!;
      await waitFor(async () => !(await q.getJob(leaseEndJobId(leaseId!))), 15_000, 50);
      const fails = (await auditRecords(deps.redis, deps.keys)).filter((x) => x.leaseId === leaseId && x.action === 'credential.fail');
      // Before: two, the caller's (upstream_error) and the worker's (issuance_interrupted).
      expect(fails.map((f) => f.reason)).toEqual(['upstream_error']);
    } finally {
      vault.issue = realIssue;
      vault.revoke = realRevoke;
    }
  }, 60_000);

  test('the worker ends a given-up issuance first, then its upstream call fails: still one credential.fail record', async () => {
    await openTask(t, 'la-vault-3', 'vault-ops');
    const deps = t.broker.deps;
    const vault = deps.providers.get('vault')!;
    const realIssue = vault.issue.bind(vault);
    const leaseHash = async (): Promise<Record<string, string>> => {
      const [id] = await deps.tasks.leaseIds('la-vault-3');
      return id ? deps.redis.hgetall(deps.keys.lease(id)) : {};
    };
    vault.issue = async () => {
      await waitFor(async () => (await leaseHash()).status === 'failed', 20_000, 10);
      throw upstreamFailed('upstream_error', 'upstream timed out');
    };
    try {
      const res = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'la-vault-3', role: 'vault-ops' });
      expect(res.status).toBe(502);
      const [leaseId] = await deps.tasks.leaseIds('la-vault-3');
      const fails = (await auditRecords(deps.redis, deps.keys)).filter((x) => x.leaseId === leaseId && x.action === 'credential.fail');
      // Before: the worker's (issuance_interrupted) and then the caller's (upstream_error).
      expect(fails.map((f) => f.reason)).toEqual(['issuance_interrupted']);
    } finally {
      vault.issue = realIssue;
    }
  }, 60_000);
});
