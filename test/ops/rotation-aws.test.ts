import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import { startAwsEmulator, type AwsEmulator, type EmulatedUser } from '../emulators/aws/index.ts';
import { ADMIN, AGENT, ORCH, call, startSibling, startTestBroker, waitFor, type TestBroker, auditRecords } from '../helpers/broker.ts';
import { ROTATABLE, brokerAwsSettings, callerIdentityAs } from '../providers/aws/helpers.ts';

/**
 * Issue 6 for target `aws` (the broker's own IAM user access key) and for the
 * signing key: POST /v1/admin/rotate rotates without failing a concurrent
 * request, every instance on the prefix switches, and a rotation that fails
 * halfway leaves the old secret in use and is audited.
 */

let emu: AwsEmulator;
let user: EmulatedUser;
let role: { roleName: string; roleId: string; arn: string };
let a: TestBroker;
const agentId = `spiffe://dev.local${AGENT}`;

const auditOf = (b: TestBroker) => auditRecords(b.broker.deps.redis, b.broker.deps.keys);
const rotate = (b: TestBroker, target = 'aws', who = ADMIN) => call(b.url, 'POST', '/v1/admin/rotate', b.as(who), { target });

const keyWorks = (keys: { accessKeyId: string; secretAccessKey: string }) => callerIdentityAs(emu.url, keys);

let n = 0;
async function openTask(b: TestBroker): Promise<string> {
  const taskId = `t-rot-aws-${++n}`;
  const r = await call(b.url, 'POST', '/v1/tasks', b.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'rotation',
    ttlSeconds: 7200,
    grants: [
      { role: 'reports-bucket', scopes: ['s3:GetObject'] },
      { role: 'tickets-api', scopes: ['tickets:read'] },
    ],
  });
  expect(r.status).toBe(201);
  return taskId;
}
const issue = (b: TestBroker, taskId: string, role = 'reports-bucket') =>
  call(b.url, 'POST', '/v1/credentials', b.as(AGENT), { taskId, role, ttlSeconds: 900 });

/** Runs issuing loops on each broker until `stop()`; collects every non-201. */
function load(brokers: TestBroker[], taskId: string, role: string, perBroker = 3) {
  const failures: string[] = [];
  const issued: { startedAt: number; at: number; via: number; body: any }[] = [];
  let stopped = false;
  const loop = async (b: TestBroker) => {
    while (!stopped) {
      const startedAt = Date.now();
      const r = await issue(b, taskId, role);
      if (r.status !== 201) failures.push(`${r.status} ${JSON.stringify(r.body)}`);
      else issued.push({ startedAt, at: Date.now(), via: brokers.indexOf(b), body: r.body });
    }
  };
  const loops = brokers.flatMap((b) => Array.from({ length: perBroker }, () => loop(b)));
  return {
    failures,
    issued,
    async stop() {
      stopped = true;
      await Promise.all(loops);
    },
  };
}

beforeAll(async () => {
  emu = await startAwsEmulator();
  user = emu.createUser('jit-broker');
  role = emu.createRole('agent-reports', { maxSessionDuration: 3600, trust: [user.arn] });
  a = await startTestBroker('rotation-aws', {
    config: {
      // The load below issues far beyond one identity's default budget (50/s); this file tests rotation, not limits.
      server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } },
      providers: {
        jwt: { publishLeadSeconds: 1, retireGraceSeconds: 60 },
        aws: brokerAwsSettings(emu.url, user, { ...ROTATABLE, requestTimeoutMs: 2000 }),
      },
      roles: {
        'reports-bucket': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 },
        'tickets-api': { provider: 'jwt', audience: 'https://tickets.internal', maxTtlSeconds: 900 },
      },
    },
  });
});
afterAll(async () => {
  await a?.close();
  await emu?.stop();
});

describe('POST /v1/admin/rotate {"target":"aws"}', () => {
  test('only admins may rotate; nothing is created upstream otherwise', async () => {
    for (const who of [AGENT, ORCH]) {
      const r = await rotate(a, 'aws', who);
      expect(r.status).toBe(403);
      expect(r.body.code).toBe('not_admin');
    }
    expect(emu.requests('CreateAccessKey')).toEqual([]);
  });

  test('a rotation failing halfway answers an error, leaves the old key working and in use, and is audited', async () => {
    const old = { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey };
    const taskId = await openTask(a);

    // 1) IAM CreateAccessKey keeps failing (more often than the retry budget).
    emu.failNext(3, { action: 'CreateAccessKey' });
    const create = await rotate(a);
    expect(create.status).toBe(502);
    expect(create.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(create.body).toMatchObject({ status: 502, code: 'rotation_failed' });
    expect(emu.requests('CreateAccessKey').map((r) => r.status)).toEqual([500, 500, 500]);
    // IAM may have made a key: the intent keeps the call's window, and the next rotation waits for IAM to be
    // able to list it (409 until 35 s after the window). Moved back 2 minutes here, as if it had failed then.
    const { redis, keys } = a.broker.deps;
    const kept = JSON.parse((await redis.get(keys.rotationIntent('aws')))!);
    await redis.set(
      keys.rotationIntent('aws'),
      JSON.stringify({ ...kept, creating: kept.creating - 120_000, until: kept.until - 120_000 }),
    );

    // 2) The new key is created but never verifies: it is deleted again.
    emu.failNext(3, { action: 'GetCallerIdentity' });
    const verify = await rotate(a);
    expect(verify.status).toBe(502);
    expect(verify.body).toMatchObject({ status: 502, code: 'rotation_failed' });
    const created = emu.requests('CreateAccessKey').filter((r) => r.status === 200);
    expect(created).toHaveLength(1);
    expect(
      emu
        .requests('GetCallerIdentity')
        .slice(-3)
        .map((r) => r.code),
    ).toEqual(['InternalFailure', 'InternalFailure', 'InternalFailure']);
    expect(emu.requests('DeleteAccessKey').at(-1)).toMatchObject({ status: 200, accessKeyId: old.accessKeyId });
    expect(emu.requests('UpdateAccessKey')).toEqual([]);

    // The old key is the only key, still active, still working, and still the one the broker signs with.
    expect(emu.accessKeys(user.userName)).toEqual([{ accessKeyId: old.accessKeyId, status: 'Active' }]);
    expect(await keyWorks(old)).toBe('ok');
    expect(await a.broker.deps.redis.get(a.broker.deps.keys.secrets('aws'))).toBeNull();
    const ok = await issue(a, taskId);
    expect(ok.status).toBe(201);
    expect(emu.requests('AssumeRole').at(-1)).toMatchObject({ status: 200, accessKeyId: old.accessKeyId });

    const records = (await auditOf(a)).filter((r) => r.action === 'rotate');
    expect(records).toHaveLength(2);
    for (const r of records)
      expect(r).toMatchObject({
        actor: `spiffe://dev.local${ADMIN}`,
        decision: 'error',
        reason: 'rotation_failed',
        detail: { target: 'aws', oldSecretInUse: true },
      });
    expect(await a.broker.deps.redis.get(a.broker.deps.keys.lock('rotate:aws'))).toBeNull();
  });

  test('under concurrent issuance on two instances: zero failures, both switch to the new key, the old key is dead', async () => {
    const b = await startSibling(a);
    try {
      const old = { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey };
      const taskId = await openTask(a);
      const survivor = await issue(b, taskId);
      expect(survivor.status).toBe(201);

      const l = load([a, b, b], taskId, 'reports-bucket');
      let r: Awaited<ReturnType<typeof rotate>> | undefined;
      try {
        await waitFor(async () => l.issued.length >= 20, 10_000);
        r = await rotate(a);
        const after = l.issued.length;
        await waitFor(async () => l.issued.length >= after + 40, 10_000);
      } finally {
        await l.stop();
      }
      expect(r.status).toBe(202);
      expect(l.failures).toEqual([]);
      const freshId: string = r.body.accessKeyId;
      expect(r.body).toEqual({ target: 'aws', rotated: ['iam-access-key'], accessKeyId: expect.stringMatching(/^AKIA/) });
      expect(freshId).not.toBe(old.accessKeyId);

      // Upstream: one key left, the new one; the old key is refused.
      expect(emu.accessKeys(user.userName)).toEqual([{ accessKeyId: freshId, status: 'Active' }]);
      expect(await keyWorks(old)).toBe('InvalidClientTokenId');
      // Requests were signed with both keys during the run, and none after the switch with the old one succeeded.
      const signers = new Set(
        emu
          .requests('AssumeRole')
          .filter((x) => x.status === 200)
          .map((x) => x.accessKeyId),
      );
      expect(signers).toEqual(new Set([old.accessKeyId, freshId]));

      // The new secret travels sealed: not in Redis in the clear, not in the answer, not in the audit log.
      const sealed = await a.broker.deps.redis.get(a.broker.deps.keys.secrets('aws'));
      expect(sealed).toEqual(expect.any(String));
      expect(sealed).not.toContain(freshId);
      const audit = await auditOf(a);
      expect(audit.filter((x) => x.action === 'rotate' && x.decision === 'ok')).toEqual([
        expect.objectContaining({ actor: `spiffe://dev.local${ADMIN}`, reason: 'aws', detail: { rotated: ['iam-access-key'] } }),
      ]);

      // B (which never rotated) now signs with the new key.
      const viaB = await issue(b, taskId);
      expect(viaB.status).toBe(201);
      expect(emu.requests('AssumeRole').at(-1)).toMatchObject({ status: 200, accessKeyId: freshId });
      const viaA = await issue(a, taskId);
      expect(viaA.status).toBe(201);
      expect(emu.requests('AssumeRole').at(-1)).toMatchObject({ status: 200, accessKeyId: freshId });

      // Session credentials issued before the rotation are not tied to the broker's key.
      const c = survivor.body.credentials;
      const sts = new STSClient({
        region: 'us-east-1',
        endpoint: emu.url,
        maxAttempts: 1,
        credentials: { accessKeyId: c.AccessKeyId, secretAccessKey: c.SecretAccessKey, sessionToken: c.SessionToken },
      });
      await expect(sts.send(new GetCallerIdentityCommand({}))).resolves.toMatchObject({
        UserId: expect.stringMatching(new RegExp(`^${role.roleId}:jit-[a-z2-7]{10}-[a-z2-7]{8}-${survivor.body.leaseId}$`)),
      });
      sts.destroy();

      // Revocation (IAM PutRolePolicy through the worker) also runs on the new key.
      expect((await call(a.url, 'POST', `/v1/tasks/${taskId}/complete`, a.as(ORCH))).status).toBe(202);
      await waitFor(async () => (await a.broker.deps.leases.get(survivor.body.leaseId))?.status === 'revoked', 10_000, 25);
      expect(emu.requests('PutRolePolicy').at(-1)).toMatchObject({ status: 200, accessKeyId: freshId });
    } finally {
      await b.close();
    }
  }, 40_000);

  test('a later instance with the original config picks up the rotated key from Redis', async () => {
    const c = await startSibling(a);
    try {
      const [current] = emu.accessKeys(user.userName);
      expect(current!.accessKeyId).not.toBe(user.accessKeyId); // the configured key is gone
      const taskId = await openTask(c);
      expect((await issue(c, taskId)).status).toBe(201);
      expect(emu.requests('AssumeRole').at(-1)).toMatchObject({ status: 200, accessKeyId: current!.accessKeyId });
    } finally {
      await c.broker.close();
    }
  });
});

describe('POST /v1/admin/rotate {"target":"signing-key"}', () => {
  const introspect = async (b: TestBroker, token: string) =>
    (
      await fetch(`${b.url}/v1/introspect`, {
        method: 'POST',
        headers: { ...b.as('/resource/tickets'), 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ token }),
      })
    ).json() as Promise<Record<string, unknown>>;
  const jwksKids = async (b: TestBroker) =>
    ((await (await fetch(`${b.url}/.well-known/jwks.json`)).json()) as { keys: { kid: string }[] }).keys.map((k) => k.kid);
  const kidOf = (token: string) => decodeProtectedHeader(token).kid!;

  test('under concurrent issuance: zero failures; the new key is published before it signs; old tokens still verify and introspect active', async () => {
    const b = await startSibling(a);
    try {
      const taskId = await openTask(a);
      const before = await issue(a, taskId, 'tickets-api');
      expect(before.status).toBe(201);
      const oldToken: string = before.body.credentials.access_token;
      const oldKid = kidOf(oldToken);
      expect(await jwksKids(a)).toEqual([oldKid]);

      const l = load([a, b], taskId, 'tickets-api', 2);
      let r: Awaited<ReturnType<typeof rotate>> | undefined;
      let rotateStartedAt = 0;
      let rotateEndedAt = 0;
      let early: Awaited<ReturnType<typeof issue>> | undefined;
      try {
        await waitFor(async () => l.issued.length >= 20, 10_000);
        rotateStartedAt = Date.now();
        r = await rotate(a, 'signing-key');
        rotateEndedAt = Date.now();
        expect(r.status).toBe(202);
        // Published at once on the rotating instance, and on the other one once it hears of it.
        expect(await jwksKids(a)).toEqual(expect.arrayContaining([oldKid, r.body.kid]));
        await waitFor(async () => (await jwksKids(b)).includes(r!.body.kid), 15_000);
        // Issued right after the rotation: within the publish lead on an idle machine (the old key), maybe
        // after it on a loaded one; judged below by its own iat, whichever.
        early = await issue(a, taskId, 'tickets-api');
        expect(early.status).toBe(201);
        // After the lead the new key signs, on both instances.
        await waitFor(async () => Date.now() > Date.parse(r!.body.activatesAt) + 50, 5000);
        const after = l.issued.length;
        await waitFor(async () => l.issued.length >= after + 30, 10_000);
        // And until each instance has signed with the new key: each decides on its own estimate of Redis's clock,
        // which a loaded machine can leave behind the test's (CI once saw one instance's issuances after the
        // activation all fall before its estimate reached it). One that never switches fails here.
        const newKid = r.body.kid as string;
        await waitFor(
          async () => [0, 1].every((via) => l.issued.some((x) => x.via === via && kidOf(x.body.credentials.access_token) === newKid)),
          15_000,
        );
      } finally {
        await l.stop();
      }
      expect(l.failures).toEqual([]);
      expect(r.body).toMatchObject({ target: 'signing-key', rotated: ['signing-key'], kid: expect.any(String), retiring: [oldKid] });
      const newKid: string = r.body.kid;
      expect(newKid).not.toBe(oldKid);
      const activatesAt = Date.parse(r.body.activatesAt);
      // publishLeadSeconds: 1 — the key signs one second after it was published, and it was in both JWKS before that.
      expect(activatesAt).toBeGreaterThanOrEqual(rotateStartedAt + 1000);
      expect(activatesAt).toBeLessThanOrEqual(rotateEndedAt + 1000);

      // No token carries the new kid before the key signs, and none the old kid after: judged on each token's own
      // iat (Redis's clock, read in the same turn as the key is chosen: src/providers/jwt/provider.ts), not on when
      // the test saw the answer (a loaded machine answers seconds late). iat is in whole seconds: a token of the
      // old key was signed before activatesAt, so at an iat second that began before it; one of the new key at or
      // after it, so at an iat second that ends after it. The early token too, issued within the lead or not.
      const kids = l.issued.map((x) => ({
        ...x,
        kid: kidOf(x.body.credentials.access_token),
        token: x.body.credentials.access_token as string,
      }));
      const signedAt = (token: string) => (JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { iat: number }).iat;
      const misdated = [
        ...kids,
        { kid: kidOf(early!.body.credentials.access_token), token: early!.body.credentials.access_token as string },
      ]
        .map((x) => ({ kid: x.kid === oldKid ? 'old' : 'new', iatMs: signedAt(x.token) * 1000, activatesAt }))
        .filter((x) => (x.kid === 'old' ? x.iatMs >= activatesAt : x.iatMs + 1000 < activatesAt));
      expect(misdated).toEqual([]);
      expect(new Set(kids.map((x) => x.kid))).toEqual(new Set([oldKid, newKid]));
      // Both instances switched: each signed with the new key (and, by the check above, with the old one only
      // before the activation). Not by comparing the test's clock with activatesAt: each instance decides on its
      // own estimate of Redis's clock, a few ms off the test's (a token of the new key was seen answered 1 ms
      // 'before' activatesAt).
      expect([0, 1].map((via) => kids.some((x) => x.via === via && x.kid === newKid))).toEqual([true, true]);
      const fresh = await issue(b, taskId, 'tickets-api');
      expect(kidOf(fresh.body.credentials.access_token)).toBe(newKid);

      // A resource server with a fresh JWKS cache verifies old and new tokens alike.
      const jwks = createRemoteJWKSet(new URL(`${a.url}/.well-known/jwks.json`));
      const opts = { issuer: a.config.server.publicUrl, audience: 'https://tickets.internal', typ: 'at+jwt' };
      await expect(jwtVerify(oldToken, jwks, opts)).resolves.toMatchObject({ protectedHeader: { kid: oldKid } });
      await expect(jwtVerify(fresh.body.credentials.access_token, jwks, opts)).resolves.toMatchObject({ protectedHeader: { kid: newKid } });
      for (const k of kids) await jwtVerify(k.token, jwks, opts);
      expect(await introspect(a, oldToken)).toMatchObject({ active: true, jti: before.body.leaseId });
      expect(await introspect(b, oldToken)).toMatchObject({ active: true, jti: before.body.leaseId });
      expect(await introspect(b, fresh.body.credentials.access_token)).toMatchObject({ active: true });

      expect((await auditOf(a)).filter((x) => x.action === 'rotate' && x.reason === 'signing-key')).toEqual([
        expect.objectContaining({ decision: 'ok', detail: { rotated: ['signing-key'] } }),
      ]);
    } finally {
      await b.broker.close();
    }
  }, 40_000);
});
