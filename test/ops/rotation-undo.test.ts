import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { startAwsEmulator, type AwsEmulator, type EmulatedUser } from '../emulators/aws/index.ts';
import {
  ADMIN,
  AGENT,
  ORCH,
  call,
  dropPrefix,
  startSibling,
  startTestBroker,
  waitFor,
  type TestBroker,
  auditRecords,
} from '../helpers/broker.ts';
import { ROTATABLE, brokerAwsSettings, callerIdentityAs } from '../providers/aws/helpers.ts';

/**
 * An AWS rotation that fails after the new key was handed to the other
 * instances (UpdateAccessKey of the old key fails): the old key is handed out
 * again before the new one is deleted, so every instance, and every instance
 * started later from Redis, ends on the key that still exists. When the old
 * key cannot be handed out again, both keys are kept.
 */

let emu: AwsEmulator;
let user: EmulatedUser;
let role: { roleName: string; roleId: string; arn: string };
let a: TestBroker;
let first: TestBroker | undefined;
const closed = new Set<TestBroker>();
const agentId = `spiffe://dev.local${AGENT}`;

const rotate = (b: TestBroker) => call(b.url, 'POST', '/v1/admin/rotate', b.as(ADMIN), { target: 'aws' });
const issue = (b: TestBroker, taskId: string) =>
  call(b.url, 'POST', '/v1/credentials', b.as(AGENT), { taskId, role: 'reports-bucket', ttlSeconds: 900 });
/** The key the last successful AssumeRole was signed with. */
const lastSigner = () => emu.requests('AssumeRole').at(-1);

let n = 0;
async function openTask(b: TestBroker): Promise<string> {
  const taskId = `t-rot-undo-${++n}`;
  const r = await call(b.url, 'POST', '/v1/tasks', b.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'rotation',
    ttlSeconds: 7200,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
  });
  expect(r.status).toBe(201);
  return taskId;
}

beforeAll(async () => {
  emu = await startAwsEmulator();
  user = emu.createUser('jit-broker');
  role = emu.createRole('agent-reports', { maxSessionDuration: 3600, trust: [user.arn] });
  a = await startTestBroker('rotation-undo', {
    config: {
      rotation: { switchGraceMs: 200 },
      providers: {
        aws: brokerAwsSettings(emu.url, user, { ...ROTATABLE, requestTimeoutMs: 2000 }),
      },
      roles: { 'reports-bucket': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 } },
    },
  });
  first = a;
});
afterAll(async () => {
  // The first instance is closed in the first test and replaced by a sibling: close what is still open.
  for (const b of new Set([first, a])) if (b && !closed.has(b)) await b.broker.close();
  if (first) await dropPrefix(first.prefix);
  await emu?.stop();
});

describe('an AWS rotation failing after the new key was handed out', () => {
  test('every instance, and one started later, ends on the old key, which still exists; revocation works', async () => {
    const b = await startSibling(a);
    let c: TestBroker | undefined;
    try {
      const old = user.accessKeyId;
      const taskId = await openTask(a);
      const early = await issue(b, taskId);
      expect(early.status).toBe(201);

      emu.failNext(20, { action: 'UpdateAccessKey' });
      const r = await rotate(a);
      expect(r.status).toBe(502);
      expect(r.body).toMatchObject({ code: 'rotation_failed' });
      expect(emu.accessKeys(user.userName)).toEqual([{ accessKeyId: old, status: 'Active' }]);

      // The sibling that had switched to the new key is back on the old one.
      const viaB = await issue(b, taskId);
      expect(viaB.status).toBe(201);
      expect(lastSigner()).toMatchObject({ status: 200, accessKeyId: old });
      // So is an instance started now with the deployment's config (it reads the sealed secret in Redis).
      c = await startSibling(a);
      const viaC = await issue(c, taskId);
      expect(viaC.status).toBe(201);
      expect(lastSigner()).toMatchObject({ status: 200, accessKeyId: old });

      // Revocation from the sibling runs on a key that exists.
      await a.broker.close();
      closed.add(a);
      expect((await call(b.url, 'POST', `/v1/tasks/${taskId}/complete`, b.as(ORCH))).status).toBe(202);
      await waitFor(async () => (await b.broker.deps.leases.get(early.body.leaseId))?.status === 'revoked', 10_000, 50);
    } finally {
      await c?.broker.close();
      await b.broker.close();
    }
  }, 40_000);

  test('when the old key cannot be handed out again, both keys stay active and every instance keeps working', async () => {
    a = await startSibling(a);
    const b = await startSibling(a);
    try {
      const old = emu.accessKeys(user.userName)[0]!.accessKeyId;
      const taskId = await openTask(a);
      // Redis takes the new key's sealed copy, then refuses the old key's (a Redis failing mid-rotation).
      const redis = a.broker.deps.redis;
      const secretKey = a.broker.deps.keys.secrets('aws');
      // The sealed copy is written by a script fenced on the rotation lock: KEYS are the lock, then the secret.
      const evalsha = redis.evalsha.bind(redis);
      let writes = 0;
      (redis as unknown as { evalsha: (...args: unknown[]) => Promise<unknown> }).evalsha = (...args: unknown[]) => {
        if (args[3] === secretKey && ++writes > 1) return Promise.reject(new Error('READONLY injected'));
        return (evalsha as (...x: unknown[]) => Promise<unknown>)(...args);
      };
      emu.failNext(20, { action: 'UpdateAccessKey' });
      const r = await rotate(a);
      (redis as unknown as { evalsha: unknown }).evalsha = evalsha;
      expect(r.status).toBe(502);
      expect(r.body).toMatchObject({ code: 'rotation_incomplete' });
      const keys = emu.accessKeys(user.userName);
      expect(keys).toHaveLength(2);
      expect(keys.every((k) => k.status === 'Active')).toBe(true);
      const fresh = keys.find((k) => k.accessKeyId !== old)!.accessKeyId;

      for (const x of [a, b]) expect((await issue(x, taskId)).status).toBe(201);
      // The rotating instance stays on the key Redis names (the new one), like its sibling.
      expect(lastSigner()).toMatchObject({ status: 200, accessKeyId: fresh });
      expect(await callerIdentityAs(emu.url, { accessKeyId: old, secretAccessKey: user.secretAccessKey })).toBe('ok');
      const records = (await auditRecords(redis, a.broker.deps.keys)).filter((x) => x.action === 'rotate');
      expect(records.at(-1)).toMatchObject({
        decision: 'error',
        reason: 'rotation_incomplete',
        detail: { target: 'aws', bothSecretsValid: true },
      });
    } finally {
      await b.broker.close();
    }
  }, 40_000);
});
