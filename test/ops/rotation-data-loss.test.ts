import { afterAll, describe, expect, test } from '@jest/globals';
import { Redis } from 'ioredis';
import { startAwsEmulator, type AwsEmulator } from '../emulators/aws/index.ts';
import type { VaultEmulator } from '../emulators/vault/index.ts';
import {
  ADMIN,
  AGENT,
  ORCH,
  REDIS_URL,
  call,
  startSibling,
  startTestBroker,
  waitFor,
  type TestBroker,
  auditRecords,
} from '../helpers/broker.ts';
import { ROTATABLE, brokerAwsSettings } from '../providers/aws/helpers.ts';
import { vaultWithBroker } from '../providers/vault/helpers.ts';

/**
 * A rotated upstream secret's only shared copy is sealed in Redis. When Redis
 * loses its data (contract section 8), an instance that runs with the rotated
 * secret writes it back during recovery, so an instance started afterwards
 * with the deployment's config (whose secret the rotation retired) loads it
 * instead of failing.
 */

let aws: AwsEmulator | undefined;
let vault: VaultEmulator | undefined;
const open: TestBroker[] = [];
afterAll(async () => {
  for (const b of open.reverse()) await b.close().catch(() => {});
  await aws?.stop();
  await vault?.stop();
});
const agentId = `spiffe://dev.local${AGENT}`;

/** Every key of the prefix gone: a Redis restart without persistence. */
async function wipe(prefix: string): Promise<void> {
  const r = new Redis(REDIS_URL);
  let cursor = '0';
  do {
    const [next, found] = await r.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    if (found.length) await r.del(...found);
  } while (cursor !== '0');
  await r.quit();
}

async function rotateWipeRecover(a: TestBroker, target: string): Promise<void> {
  expect((await call(a.url, 'POST', '/v1/admin/rotate', a.as(ADMIN), { target })).status).toBe(202);
  await wipe(a.prefix);
  // Noticed within a second; the sealed secret is written back before the instance answers ready again.
  const raw = await waitFor(async () => a.broker.deps.redis.get(a.broker.deps.keys.secrets(target)), 15_000, 100);
  await waitFor(async () => (await call(a.url, 'GET', '/readyz', {})).status === 200, 15_000, 100);
  // Sealed again, not in the clear.
  expect(raw).toMatch(/^g\d+\.v1\./);
  expect((await auditRecords(a.broker.deps.redis, a.broker.deps.keys)).filter((r) => r.action === 'secret.restored')).toEqual([
    expect.objectContaining({ actor: 'broker', decision: 'ok', reason: 'redis_data_lost', detail: { target } }),
  ]);
}

async function issueOn(b: TestBroker, taskId: string, role: string, scopes: string[]) {
  const t = await call(b.url, 'POST', '/v1/tasks', b.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'x',
    ttlSeconds: 3600,
    grants: [{ role, scopes }],
  });
  expect(t.status).toBe(201);
  return call(b.url, 'POST', '/v1/credentials', b.as(AGENT), { taskId, role });
}

describe('a rotated upstream secret survives a Redis data loss', () => {
  test('aws: an instance started after the loss signs with the rotated key, not the deleted configured one', async () => {
    aws = await startAwsEmulator();
    const user = aws.createUser('jit-broker');
    const role = aws.createRole('agent-reports', { maxSessionDuration: 3600, trust: [user.arn] });
    const a = await startTestBroker('rot-loss-aws', {
      config: {
        rotation: { switchGraceMs: 100 },
        providers: {
          aws: brokerAwsSettings(aws.url, user, ROTATABLE),
        },
        roles: { 'reports-bucket': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 } },
      },
    });
    open.push(a);
    await rotateWipeRecover(a, 'aws');
    const [rotated] = aws.accessKeys(user.userName);
    expect(rotated!.accessKeyId).not.toBe(user.accessKeyId);

    const c = await startSibling(a);
    open.push(c);
    expect((await call(c.url, 'GET', '/readyz', {})).status).toBe(200);
    expect((await issueOn(c, 'loss-aws-1', 'reports-bucket', ['s3:GetObject'])).status).toBe(201);
    expect(aws.requests('AssumeRole').at(-1)).toMatchObject({ status: 200, accessKeyId: rotated!.accessKeyId });
  }, 60_000);

  test('vault: an instance started after the loss logs in with the rotated secret-id', async () => {
    const v = await vaultWithBroker();
    vault = v.emu;
    const a = await startTestBroker('rot-loss-vault', {
      config: {
        rotation: { switchGraceMs: 100 },
        providers: {
          vault: {
            address: vault.url,
            auth: { approle: { roleId: v.roleId, secretId: v.secretId, mount: 'approle', roleName: 'jit-broker' } },
          },
        },
        roles: { 'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] }, maxTtlSeconds: 3600 } },
      },
    });
    open.push(a);
    await rotateWipeRecover(a, 'vault');
    const c = await startSibling(a);
    open.push(c);
    expect((await issueOn(c, 'loss-vault-1', 'vault-ops', ['ops-read'])).status).toBe(201);
  }, 60_000);
});
