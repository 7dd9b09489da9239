import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { BrokerClient, fromBroker } from '../../src/client/index.ts';
import type { AwsEmulator } from '../emulators/aws/index.ts';
import { awsForBroker } from '../providers/aws/helpers.ts';
import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * fromBroker as the credentials of a real AWS SDK v3 client, against the
 * real broker issuing through the STS/IAM emulator. The client's clock is
 * moved forward to reach the refresh margin without waiting 15 minutes.
 */
let emu: AwsEmulator;
let t: TestBroker;
let n = 0;

beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  const role = aws.role;
  t = await startTestBroker('from-broker', {
    config: {
      providers: aws.providers,
      roles: {
        'reports-bucket': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 },
        'tickets-api': { provider: 'jwt', audience: 'https://tickets.internal', maxTtlSeconds: 900 },
      },
    },
  });
}, 60_000);
afterAll(async () => {
  await t?.close();
  await emu?.stop();
});

async function openTask(): Promise<string> {
  const taskId = `t-fb-${++n}`;
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: 'spiffe://dev.local/agent/support',
    tenant: 'acme',
    purpose: 'fromBroker',
    ttlSeconds: 7200,
    grants: [
      { role: 'reports-bucket', scopes: ['s3:GetObject'] },
      { role: 'tickets-api', scopes: [] },
    ],
  });
  expect(r.status).toBe(201);
  return taskId;
}
const leases = async (taskId: string) => (await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH))).body.leases as { leaseId: string }[];
/** A fresh SDK client each time: the SDK memoizes credentials per client, the test is about the provider. */
async function whoAmI(credentials: ReturnType<typeof fromBroker>): Promise<string> {
  const sts = new STSClient({ region: 'us-east-1', endpoint: emu.url, maxAttempts: 1, credentials });
  try {
    return (await sts.send(new GetCallerIdentityCommand({}))).Arn!;
  } finally {
    sts.destroy();
  }
}

describe('fromBroker({ taskId, role })', () => {
  it('signs real SDK calls with the task’s STS session, reuses it, and refreshes it shortly before it expires', async () => {
    const taskId = await openTask();
    let clock = Date.now();
    const provider = fromBroker({ taskId, role: 'reports-bucket', url: t.url, token: () => t.issuer.svid(AGENT), now: () => clock });

    const arn1 = await whoAmI(provider);
    expect(arn1).toMatch(/:assumed-role\/agent-reports\/jit-[a-z2-7]{10}-[a-z2-7]{8}-[0-9a-f]{32}$/);
    const [first] = await leases(taskId);
    expect(arn1.endsWith(first!.leaseId)).toBe(true);
    const c1 = await provider();
    // STS's minimum is 900 s; the grant asked nothing shorter than the role's 3600 s.
    const lifetime = c1.expiration!.getTime() - Date.now();
    expect(lifetime).toBeGreaterThan(3_500_000);

    // Up to the refresh margin (60 s before expiry): the same session, no new lease.
    clock = c1.expiration!.getTime() - 61_000;
    expect(await whoAmI(provider)).toBe(arn1);
    expect(await leases(taskId)).toHaveLength(1);

    // Inside the margin: a new session, before the old one has expired.
    clock = c1.expiration!.getTime() - 59_000;
    const arn2 = await whoAmI(provider);
    expect(arn2).not.toBe(arn1);
    const all = await leases(taskId);
    expect(all).toHaveLength(2);
    expect(arn2.endsWith(all[1]!.leaseId)).toBe(true);
    expect((await provider()).accessKeyId).not.toBe(c1.accessKeyId);
  });

  it('concurrent SDK clients share one request to the broker', async () => {
    const taskId = await openTask();
    const broker = new BrokerClient({ url: t.url, token: () => t.issuer.svid(AGENT) });
    const provider = fromBroker({ taskId, role: 'reports-bucket', client: broker });
    const arns = await Promise.all([whoAmI(provider), whoAmI(provider), whoAmI(provider)]);
    expect(new Set(arns).size).toBe(1);
    expect(await leases(taskId)).toHaveLength(1);
  });

  it('a role of another provider is an error the SDK surfaces', async () => {
    const taskId = await openTask();
    const provider = fromBroker({ taskId, role: 'tickets-api', url: t.url, token: () => t.issuer.svid(AGENT) });
    await expect(whoAmI(provider)).rejects.toMatchObject({ code: 'not_aws_role' });
  });

  it('a refusal is the broker’s error (code, status) and is not cached', async () => {
    const taskId = await openTask();
    const provider = fromBroker({ taskId, role: 'reports-bucket', url: t.url, token: () => t.issuer.svid('/agent/other') });
    await expect(provider()).rejects.toMatchObject({ status: 403, code: 'not_task_agent' });
  });
});
