import { afterAll, afterEach, beforeAll, describe, expect, test } from '@jest/globals';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetCallerIdentityCommand, STSClient, type STSClientConfig } from '@aws-sdk/client-sts';
import { fromHttp, fromProcess } from '@aws-sdk/credential-providers';
import { startAwsEmulator, type AwsEmulator, type EmulatedUser } from '../../emulators/aws/index.ts';
import { agentKeyFor, sessionNameFor, taskKeyFor } from '../../../src/providers/aws/session-name.ts';
import { ADMIN, AGENT, ORCH, call, startTestBroker, waitFor, type TestBroker } from '../../helpers/broker.ts';
import { JIT, NODE20, ensureBuilt } from '../../helpers/cli.ts';

/**
 * The real broker (HTTP API + BullMQ worker, real Redis) with `providers.aws`
 * pointing at the strict STS/IAM emulator, signing as the broker's own IAM
 * user. Everything goes through the broker's HTTP API; the agent's side uses
 * the real AWS SDK (client-sts, fromHttp, fromProcess).
 */

let emu: AwsEmulator;
let user: EmulatedUser;
let role: { roleName: string; roleId: string; arn: string };
let t: TestBroker;
let dir: string;
const agentId = `spiffe://dev.local${AGENT}`;
const POLICY = 'jit-broker-revoked-sessions';

function awsSettings(more: Record<string, unknown> = {}) {
  return {
    region: 'us-east-1',
    endpoint: emu.url,
    userName: user.userName,
    credentials: { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
    revocation: 'iam-deny',
    retryBaseDelayMs: 5,
    requestTimeoutMs: 2000,
    ...more,
  };
}
function brokerConfig(more: Record<string, unknown> = {}) {
  return {
    providers: { aws: awsSettings(more) },
    roles: {
      'reports-bucket': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 },
      'reports-approved': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600, approval: 'required' },
      // A well-formed ARN of a role that does not exist in the account.
      'ghost-bucket': { provider: 'aws', roleArn: `arn:aws:iam::${emu.accountId}:role/no-such-role`, maxTtlSeconds: 3600 },
      'tickets-api': { provider: 'jwt', audience: 'https://tickets.internal', maxTtlSeconds: 900 },
    },
  };
}

beforeAll(async () => {
  emu = await startAwsEmulator();
  user = emu.createUser('jit-broker');
  role = emu.createRole('agent-reports', { maxSessionDuration: 3600, trust: [user.arn] });
  dir = mkdtempSync(join(tmpdir(), 'jit-aws-e2e-'));
  await ensureBuilt();
  t = await startTestBroker('aws-e2e', { config: brokerConfig() });
});
afterAll(async () => {
  await t?.close();
  await emu?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});
afterEach(() => {
  emu.setDown(false);
});

let n = 0;
async function openTask(
  b: TestBroker = t,
  grants: unknown[] = [
    { role: 'reports-bucket', scopes: ['s3:GetObject'] },
    { role: 'ghost-bucket', scopes: ['s3:GetObject'] },
  ],
): Promise<string> {
  const taskId = `t-aws-${++n}`;
  const r = await call(b.url, 'POST', '/v1/tasks', b.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'aws e2e',
    ttlSeconds: 7200,
    grants,
  });
  expect(r.status).toBe(201);
  return taskId;
}
const issue = (body: Record<string, unknown>, b: TestBroker = t) => call(b.url, 'POST', '/v1/credentials', b.as(AGENT), body);
const lease = async (leaseId: string) => (await call(t.url, 'GET', `/v1/leases/${leaseId}`, t.as(AGENT))).body;

function file(name: string, content: string): string {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
}

/** GetCallerIdentity with the given credentials: the Arn, or the error code. */
async function whoAmI(
  credentials: NonNullable<STSClientConfig['credentials']>,
): Promise<{ ok: true; arn: string; userId: string } | { ok: false; code: string }> {
  const sts = new STSClient({ region: 'us-east-1', endpoint: emu.url, maxAttempts: 1, credentials });
  try {
    const out = await sts.send(new GetCallerIdentityCommand({}));
    return { ok: true, arn: out.Arn!, userId: out.UserId! };
  } catch (err) {
    return { ok: false, code: (err as { Code?: string }).Code ?? (err as Error).name };
  } finally {
    sts.destroy();
  }
}
const sessionCreds = (c: Record<string, string>) => ({
  accessKeyId: c.AccessKeyId!,
  secretAccessKey: c.SecretAccessKey!,
  sessionToken: c.SessionToken!,
});

describe('aws roles through the broker API', () => {
  test('201 with STS session credentials, revocable, TTL raised to 900; the session is scoped to exactly the granted action', async () => {
    const taskId = await openTask();
    const before = Date.now();
    const r = await issue({ taskId, role: 'reports-bucket', scopes: ['s3:GetObject'], ttlSeconds: 120 });
    expect(r.status).toBe(201);
    expect(r.headers.get('cache-control')).toBe('no-store');
    expect(r.body).toMatchObject({
      taskId,
      role: 'reports-bucket',
      provider: 'aws',
      revocable: true,
      ttlSeconds: 900,
      scopes: ['s3:GetObject'],
    });
    const c = r.body.credentials;
    expect(Object.keys(c).sort()).toEqual(['AccessKeyId', 'Expiration', 'SecretAccessKey', 'SessionToken']);
    expect(c.AccessKeyId).toMatch(/^ASIA/);
    const exp = Date.parse(c.Expiration);
    expect(exp).toBeGreaterThanOrEqual(before + 899_000);
    expect(exp).toBeLessThanOrEqual(Date.now() + 901_000);
    // The lease's end is on the broker's clock: no earlier than the session's (here the clocks agree).
    expect(Date.parse(r.body.expiresAt)).toBeGreaterThanOrEqual(exp);
    expect(Date.parse(r.body.expiresAt)).toBeLessThanOrEqual(exp + 3000);

    // What the emulator received: DurationSeconds 900 (not 120, which STS refuses), signed by the broker user.
    const assume = emu.requests('AssumeRole').at(-1)!;
    expect(assume).toMatchObject({ accessKeyId: user.accessKeyId, status: 200 });
    expect(assume.params).toMatchObject({
      RoleArn: role.arn,
      RoleSessionName: sessionNameFor(r.body.leaseId, agentId, taskId),
      DurationSeconds: '900',
    });
    const session = emu.sessions().find((s) => s.accessKeyId === c.AccessKeyId)!;
    const policy = JSON.parse(session.policyText!);
    expect(policy).toEqual({
      Version: '2012-10-17',
      Statement: [
        {
          Effect: 'Allow',
          Action: ['s3:GetObject'],
          Resource: ['*'],
          Condition: { DateLessThan: { 'aws:CurrentTime': expect.any(String) } },
        },
      ],
    });
    // Useless after the deadline its recorded intent promised: after STS's Expiration, never long after.
    const notAfter = Date.parse(policy.Statement[0].Condition.DateLessThan['aws:CurrentTime']);
    expect(notAfter).toBeGreaterThan(exp);
    expect(notAfter).toBeLessThanOrEqual(exp + 10 * 60_000);
    expect(emu.evaluate(c.AccessKeyId, 's3:GetObject', 'arn:aws:s3:::reports/q3.csv')).toBe('allow');
    expect(emu.evaluate(c.AccessKeyId, 's3:PutObject', 'arn:aws:s3:::reports/q3.csv')).toBe('implicit-deny');
    expect(emu.evaluate(c.AccessKeyId, 's3:ListBucket', 'arn:aws:s3:::reports')).toBe('implicit-deny');

    // The credentials work with the real SDK.
    const who = await whoAmI(sessionCreds(c));
    expect(who).toEqual({
      ok: true,
      arn: `arn:aws:sts::${emu.accountId}:assumed-role/agent-reports/${sessionNameFor(r.body.leaseId, agentId, taskId)}`,
      userId: `${role.roleId}:${sessionNameFor(r.body.leaseId, agentId, taskId)}`,
    });

    // The lease: active, and the record in Redis holds no secret.
    expect(await lease(r.body.leaseId)).toMatchObject({ leaseId: r.body.leaseId, status: 'active', role: 'reports-bucket' });
    const raw = JSON.stringify(await t.broker.deps.redis.hgetall(t.broker.deps.keys.lease(r.body.leaseId)));
    expect(raw).toContain(r.body.leaseId);
    expect(raw).not.toContain(c.SecretAccessKey);
    expect(raw).not.toContain(c.SessionToken);
    expect(raw).not.toContain(c.SessionToken.slice(0, 40));
    expect(raw).not.toMatch(/SecretAccessKey|SessionToken/);
  });

  test('scopes outside the grant are refused before STS is asked', async () => {
    const taskId = await openTask();
    const calls = emu.requests('AssumeRole').length;
    const r = await issue({ taskId, role: 'reports-bucket', scopes: ['s3:PutObject'] });
    expect(r.status).toBe(403);
    expect(r.body.code).toBe('scope_not_granted');
    expect(emu.requests('AssumeRole')).toHaveLength(calls);
  });

  test("completing the task revokes the lease: status revoked, and the session is denied upstream; another task's session keeps working", async () => {
    const taskId = await openTask();
    const other = await openTask();
    const r = await issue({ taskId, role: 'reports-bucket', ttlSeconds: 900 });
    const keep = await issue({ taskId: other, role: 'reports-bucket' });
    expect([r.status, keep.status]).toEqual([201, 201]);
    const creds = sessionCreds(r.body.credentials);
    expect((await whoAmI(creds)).ok).toBe(true);

    const done = await call(t.url, 'POST', `/v1/tasks/${taskId}/complete`, t.as(ORCH));
    expect(done.status).toBe(202);
    expect(done.body).toMatchObject({ taskId, status: 'completed', leases: 1 });
    const ended = await waitFor(
      async () => {
        const l = await lease(r.body.leaseId);
        return l.status === 'revoked' && l;
      },
      8000,
      25,
    );
    expect(ended).toMatchObject({ reason: 'task_completed', revokedAt: expect.anything() });

    expect(await whoAmI(creds)).toEqual({ ok: false, code: 'AccessDenied' });
    expect(emu.evaluate(creds.accessKeyId, 's3:GetObject', 'arn:aws:s3:::reports/q3.csv')).toBe('explicit-deny');
    // The task ended: denied by the wildcard on its session names, one entry however many sessions it had.
    expect(JSON.stringify(emu.rolePolicy(role.roleName, POLICY))).toContain(
      `"aws:userid":["*:jit-${agentKeyFor(agentId)}-${taskKeyFor(taskId)}-*"]`,
    );
    expect((await whoAmI(sessionCreds(keep.body.credentials))).ok).toBe(true);

    // The lease, even revoked, never held the secret.
    const raw = JSON.stringify(await t.broker.deps.redis.hgetall(t.broker.deps.keys.lease(r.body.leaseId)));
    expect(raw).not.toContain(creds.secretAccessKey);
    expect(raw).not.toContain(creds.sessionToken);
  });

  test("an admin's DELETE of one lease records revoked_by_admin and denies that session only; the agent's other sessions work", async () => {
    // Before: recorded as revoked_by_caller (the contract's reasons tell an admin's revocation apart). And
    // revoked_by_admin alone must not widen the deny to every session of the agent, as the kill switch does.
    const taskId = await openTask();
    const r = await issue({ taskId, role: 'reports-bucket' });
    const sibling = await issue({ taskId, role: 'reports-bucket' });
    expect([r.status, sibling.status]).toEqual([201, 201]);
    expect((await call(t.url, 'DELETE', `/v1/leases/${r.body.leaseId}`, t.as(ADMIN))).status).toBe(202);
    const ended = await waitFor(async () => {
      const l = await lease(r.body.leaseId);
      return l.status === 'revoked' && l;
    }, 8000);
    expect(ended.reason).toBe('revoked_by_admin');
    expect(await whoAmI(sessionCreds(r.body.credentials))).toEqual({ ok: false, code: 'AccessDenied' });
    expect((await whoAmI(sessionCreds(sibling.body.credentials))).ok).toBe(true);
    expect((await lease(sibling.body.leaseId)).status).toBe('active');
  });

  test("quarantining an orchestrator denies its tasks' sessions, not their agent's sessions in other tasks (found in review)", async () => {
    const rogue = '/orchestrator/rogue-aws';
    const opened = await call(t.url, 'POST', '/v1/tasks', t.as(rogue), {
      taskId: `t-aws-rogue-${++n}`,
      agent: agentId,
      tenant: 'acme',
      purpose: 'opened by an orchestrator later quarantined',
      ttlSeconds: 7200,
      grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
    });
    expect(opened.status).toBe(201);
    const bad = await issue({ taskId: opened.body.taskId, role: 'reports-bucket' });
    const good = await issue({ taskId: await openTask(), role: 'reports-bucket' });
    expect([bad.status, good.status]).toEqual([201, 201]);
    const pattern = `spiffe://dev.local${rogue}`;
    const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: pattern, reason: 'key leaked' });
    expect(q.status).toBe(201);
    await waitFor(async () => (await lease(bad.body.leaseId)).status === 'revoked', 8000);
    expect(await whoAmI(sessionCreds(bad.body.credentials))).toEqual({ ok: false, code: 'AccessDenied' });
    // Before: denied too (a deny on the agent's SourceIdentity), while its lease still said active.
    expect((await whoAmI(sessionCreds(good.body.credentials))).ok).toBe(true);
    expect((await lease(good.body.leaseId)).status).toBe('active');
    await call(t.url, 'DELETE', `/v1/admin/quarantine/${encodeURIComponent(pattern)}`, t.as(ADMIN));
  });

  test("quarantining an approver denies the session issued on its word only: not the task's other sessions", async () => {
    const APPROVER = '/ops/aws-approver';
    const taskId = await openTask(t, [
      { role: 'reports-bucket', scopes: ['s3:GetObject'] },
      { role: 'reports-approved', scopes: ['s3:GetObject'] },
    ]);
    const pending = await issue({ taskId, role: 'reports-approved' });
    expect(pending.status).toBe(202);
    expect((await call(t.url, 'POST', `/v1/approvals/${pending.body.approvalId}`, t.as(APPROVER), { decision: 'approve' })).status).toBe(
      200,
    );
    const approved = await issue({ taskId, role: 'reports-approved' });
    const sibling = await issue({ taskId, role: 'reports-bucket' });
    expect([approved.status, sibling.status]).toEqual([201, 201]);
    const pattern = `spiffe://dev.local${APPROVER}`;
    const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: pattern, reason: 'approver key leaked' });
    expect(q.body).toMatchObject({ tasks: 0, approvedLeases: 1 });
    const ended = await waitFor(async () => {
      const l = await lease(approved.body.leaseId);
      return l.status === 'revoked' && l;
    }, 8000);
    expect(ended.reason).toBe('revoked_by_admin');
    expect(await whoAmI(sessionCreds(approved.body.credentials))).toEqual({ ok: false, code: 'AccessDenied' });
    // The task, its agent and its other session are not suspect: no deny by task tag or SourceIdentity.
    expect((await whoAmI(sessionCreds(sibling.body.credentials))).ok).toBe(true);
    expect((await lease(sibling.body.leaseId)).status).toBe('active');
    await call(t.url, 'DELETE', `/v1/admin/quarantine/${encodeURIComponent(pattern)}`, t.as(ADMIN));
  });

  test('a session STS makes after its lease record vanished (a failover or a wipe) is denied upstream by the issuing broker, never handed out', async () => {
    const taskId = await openTask();
    const provider = t.broker.deps.providers.get('aws')!;
    const realIssue = provider.issue.bind(provider);
    let made: Record<string, string> | undefined;
    // STS answers; before the broker records the answer, the lease record is gone (as after a failover to a replica without it).
    provider.issue = async (req) => {
      const out = await realIssue(req);
      made = out.credentials as Record<string, string>;
      expect(await t.broker.deps.redis.del(t.broker.deps.keys.lease(req.leaseId))).toBe(1);
      return out;
    };
    try {
      const r = await issue({ taskId, role: 'reports-bucket', scopes: ['s3:GetObject'] });
      expect(r.status).toBe(502);
      expect(r.body.credentials).toBeUndefined();
    } finally {
      provider.issue = realIssue;
    }
    // Before, nothing denied it: the session lived out its TTL, and no record led revocation to it.
    expect(await whoAmI(sessionCreds(made!))).toEqual({ ok: false, code: 'AccessDenied' });
    expect(emu.evaluate(made!.AccessKeyId!, 's3:GetObject', 'arn:aws:s3:::reports/q3.csv')).toBe('explicit-deny');
  });

  test('STS unreachable: 502 with a stable code, the lease is not active, nothing half-issued', async () => {
    const taskId = await openTask();
    emu.setDown(true);
    const r = await issue({ taskId, role: 'reports-bucket' });
    emu.setDown(false);
    expect(r.status).toBe(502);
    expect(r.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(r.body).toMatchObject({ status: 502, code: 'upstream_unavailable' });
    expect(JSON.stringify(r.body)).not.toMatch(/ECONNRESET|socket/i);

    const task = await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH));
    expect(task.status).toBe(200);
    expect(task.body.leases).toHaveLength(1);
    const [l] = task.body.leases;
    expect(l.status).not.toBe('active');
    // A reset connection may come after STS made the session: the lease is left to the worker, which gives
    // it up at its orphan deadline, revokes the session name and ends it failed (test/revocation/unknown-outcome).
    expect(await lease(l.leaseId)).toMatchObject({ status: 'issuing', lastError: 'upstream_unavailable' });

    // Back up: the same request succeeds.
    const ok = await issue({ taskId, role: 'reports-bucket' });
    expect(ok.status).toBe(201);
  });

  test('a role ARN STS cannot assume (no such role): 502 upstream_denied and the lease failed', async () => {
    const taskId = await openTask();
    const r = await issue({ taskId, role: 'ghost-bucket' });
    expect(r.status).toBe(502);
    expect(r.body).toMatchObject({ status: 502, code: 'upstream_denied' });
    expect(emu.requests('AssumeRole').at(-1)).toMatchObject({
      status: 403,
      code: 'AccessDenied',
      params: expect.objectContaining({ RoleArn: `arn:aws:iam::${emu.accountId}:role/no-such-role` }),
    });
    const task = await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH));
    expect(task.body.leases.map((l: { status: string }) => l.status)).toEqual(['failed']);
  });

  test('an unmodified SDK: fromHttp with AWS_CONTAINER_CREDENTIALS_FULL_URI and a token file gets working, scoped credentials', async () => {
    const taskId = await openTask();
    const env = {
      AWS_CONTAINER_CREDENTIALS_FULL_URI: `${t.url}/v1/aws/container-credentials/${taskId}/reports-bucket`,
      AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: file('container-jwt', `Bearer ${t.issuer.svid(AGENT, { ttl: 600 })}`),
    };
    const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
    Object.assign(process.env, env);
    let creds;
    try {
      creds = await fromHttp({})();
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
    expect(creds.accessKeyId).toMatch(/^ASIA/);
    expect(creds.expiration!.getTime()).toBeGreaterThan(Date.now() + 800_000);
    const who = await whoAmI(creds);
    expect(who).toMatchObject({
      ok: true,
      userId: expect.stringMatching(new RegExp(`^${role.roleId}:jit-[a-z2-7]{10}-[a-z2-7]{8}-[0-9a-f]{32}$`)),
    });
    // It is an ordinary lease of the task.
    const task = await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH));
    expect(task.body.leases).toEqual([expect.objectContaining({ role: 'reports-bucket', status: 'active' })]);
    expect(who.ok && who.userId.endsWith(task.body.leases[0].leaseId)).toBe(true);
    expect(emu.evaluate(creds.accessKeyId, 's3:GetObject', '*')).toBe('allow');

    // A wrong identity is refused in the shape fromHttp reads.
    const bad = await fetch(env.AWS_CONTAINER_CREDENTIALS_FULL_URI, {
      headers: { authorization: `Bearer ${t.issuer.svid('/agent/other')}` },
    });
    expect(bad.status).toBe(403);
    expect(await bad.json()).toMatchObject({ Code: 'not_task_agent' });
  });

  test('the container-credentials endpoint refuses a role of another kind before anything is issued', async () => {
    const taskId = await openTask(t, [
      { role: 'reports-bucket', scopes: ['s3:GetObject'] },
      { role: 'tickets-api', scopes: ['tickets:read'] },
    ]);
    const headers = { authorization: `Bearer ${t.issuer.svid(AGENT, { ttl: 600 })}` };
    const res = await fetch(`${t.url}/v1/aws/container-credentials/${taskId}/tickets-api`, { headers });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ Code: 'not_an_aws_role' });
    const task = await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH));
    expect(task.body.leases).toEqual([]); // no token was minted and thrown away
  });

  test('an unmodified SDK: fromProcess runs `jit cred get --format aws-process` against the broker and gets working credentials', async () => {
    const taskId = await openTask();
    const jit = `"${NODE20}" "${JIT}" cred get --format aws-process`;
    const tokenFile = file('process-jwt', `${t.issuer.svid(AGENT, { ttl: 600 })}\n`);
    const config = file(
      'aws-config',
      `[profile agent]\ncredential_process = ${jit} --broker ${t.url} --task ${taskId} --role reports-bucket --token-file ${tokenFile} --scopes s3:GetObject --ttl 120\n`,
    );
    const creds = await fromProcess({ profile: 'agent', configFilepath: config, filepath: file('aws-credentials', '') })();
    expect(creds.accessKeyId).toMatch(/^ASIA/);
    expect(creds.sessionToken).toEqual(expect.any(String));
    expect(creds.expiration!.getTime()).toBeGreaterThan(Date.now() + 800_000);
    const who = await whoAmI(creds);
    expect(who).toMatchObject({
      ok: true,
      arn: expect.stringMatching(/:assumed-role\/agent-reports\/jit-[a-z2-7]{10}-[a-z2-7]{8}-[0-9a-f]{32}$/),
    });
    const task = await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH));
    expect(task.body.leases).toEqual([expect.objectContaining({ role: 'reports-bucket', status: 'active' })]);

    // The broker's refusal reaches the SDK as an error (not-granted role).
    const denied = file(
      'aws-config-denied',
      `[profile agent]\ncredential_process = ${jit} --broker ${t.url} --task ${taskId} --role tickets-api --token-file ${tokenFile}\n`,
    );
    await expect(fromProcess({ profile: 'agent', configFilepath: denied, filepath: file('aws-credentials', '') })()).rejects.toThrow(
      /403 role_not_granted/,
    );
  }, 30_000);
});

describe('revocation: none', () => {
  test('the response says revocable: false; completing the task ends the lease but the session lives until it expires', async () => {
    const b = await startTestBroker('aws-e2e-norevoke', { config: brokerConfig({ revocation: 'none' }), issuer: t.issuer });
    try {
      const taskId = await openTask(b, [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }]);
      const r = await issue({ taskId, role: 'reports-bucket' }, b);
      expect(r.status).toBe(201);
      expect(r.body).toMatchObject({ provider: 'aws', revocable: false, ttlSeconds: 3600 });
      const creds = sessionCreds(r.body.credentials);
      expect((await whoAmI(creds)).ok).toBe(true);
      const puts = emu.requests('PutRolePolicy').length;
      expect((await call(b.url, 'POST', `/v1/tasks/${taskId}/complete`, b.as(ORCH))).status).toBe(202);
      await waitFor(
        async () => (await call(b.url, 'GET', `/v1/leases/${r.body.leaseId}`, b.as(AGENT))).body.status === 'revoked',
        8000,
        25,
      );
      // Honest: nothing was (or could be) cut off upstream.
      expect(emu.requests('PutRolePolicy')).toHaveLength(puts);
      expect((await whoAmI(creds)).ok).toBe(true);
      // ...until STS lets it expire.
      emu.advanceTime(3601_000);
      expect(await whoAmI(creds)).toEqual({ ok: false, code: 'ExpiredToken' });
    } finally {
      await b.close();
    }
  });
});
