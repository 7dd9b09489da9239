import { afterAll, beforeAll, expect, jest, test } from '@jest/globals';
import type { AwsEmulator } from '../emulators/aws/index.ts';
import { ADMIN, AGENT, call, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { awsForBroker } from '../providers/aws/helpers.ts';

jest.setTimeout(60_000);

/**
 * Red team (what approvers read): an approval showed the TTL the agent asked for, not the one approving gives.
 * An agent asking an AWS role (STS's minimum is 900 s) for 60 s was shown to the approver as "1 min" and issued
 * for 15 min; one asking beyond the role's maximum was shown as that and issued for less. The approval now says
 * `issuedTtlSeconds`: at most what a credential issued under it lives (the console and `jit approvals` show it).
 */
let emu: AwsEmulator;
let t: TestBroker;
beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  t = await startTestBroker('approval-issued-ttl', {
    config: {
      providers: aws.providers,
      roles: {
        'reports-approved': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600, approval: 'required' },
        'prod-deploy': { provider: 'jwt', audience: 'https://deploy.internal', maxTtlSeconds: 300, approval: 'required' },
      },
    },
  });
}, 60_000);
afterAll(async () => {
  await t?.close();
  await emu?.stop();
});

async function askAndApprove(taskId: string, req: Record<string, unknown>) {
  const pending = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, ...req });
  expect(pending.status).toBe(202);
  const approvalId = pending.body.approvalId as string;
  const shown = (await call(t.url, 'GET', `/v1/approvals/${approvalId}`, t.as(ADMIN))).body;
  const listed = (await call(t.url, 'GET', '/v1/approvals?status=pending&limit=500', t.as(ADMIN))).body.items.find(
    (a: { approvalId: string }) => a.approvalId === approvalId,
  );
  expect((await call(t.url, 'POST', `/v1/approvals/${approvalId}`, t.as(ADMIN), { decision: 'approve' })).status).toBe(200);
  const issued = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, ...req });
  expect(issued.status).toBe(201);
  const lives = Math.round((Date.parse(issued.body.expiresAt) - Date.now()) / 1000);
  return { shown, listed, lives };
}

test("an AWS request for less than STS's minimum shows the approver the TTL it is issued with", async () => {
  await openAgentTask(t, 'issued-ttl-aws', [{ role: 'reports-approved', scopes: ['s3:GetObject'] }], 'issued ttl', 3600);
  const { shown, listed, lives } = await askAndApprove('issued-ttl-aws', { role: 'reports-approved', ttlSeconds: 60 });
  // Issued for STS's minimum, 15 min, whatever was asked.
  expect(lives).toBeGreaterThan(850);
  // The request as sent (what "the same request" is compared on), and what approving it gives.
  expect([shown.ttlSeconds, shown.issuedTtlSeconds]).toEqual([60, 900]);
  expect([listed.ttlSeconds, listed.issuedTtlSeconds]).toEqual([60, 900]);
});

test("a request beyond the role's maximum shows the approver the role's maximum", async () => {
  await openAgentTask(t, 'issued-ttl-jwt', [{ role: 'prod-deploy' }], 'issued ttl', 3600);
  const { shown, lives } = await askAndApprove('issued-ttl-jwt', { role: 'prod-deploy', ttlSeconds: 86_400 });
  expect(lives).toBeLessThanOrEqual(300);
  expect([shown.ttlSeconds, shown.issuedTtlSeconds]).toEqual([86_400, 300]);
});

test("an approval gives no more than it showed, even after the role's maximum was raised before it was used (found in review)", async () => {
  // Before: issuance under an approval clamped the TTL again on the configuration of the instance it reached. The
  // approver was shown the role's maximum then (300 s); an operator raising it (a config rollout, another instance
  // already on it) before the agent asked again got the agent the grant's 3600 s on the same approval.
  await openAgentTask(t, 'issued-ttl-raised', [{ role: 'prod-deploy', maxTtlSeconds: 3600 }], 'issued ttl', 3600);
  const req = { taskId: 'issued-ttl-raised', role: 'prod-deploy', ttlSeconds: 3600 };
  const pending = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), req);
  expect(pending.status).toBe(202);
  const approvalId = pending.body.approvalId as string;
  const shown = (await call(t.url, 'GET', `/v1/approvals/${approvalId}`, t.as(ADMIN))).body;
  expect([shown.ttlSeconds, shown.issuedTtlSeconds]).toEqual([3600, 300]);
  expect((await call(t.url, 'POST', `/v1/approvals/${approvalId}`, t.as(ADMIN), { decision: 'approve' })).status).toBe(200);
  // Another instance, on the same Redis, with the role's maximum raised.
  const raised = await startTestBroker('approval-issued-ttl-raised', {
    prefix: t.prefix,
    issuer: t.issuer,
    loaded: { ...t.config, roles: { ...t.config.roles, 'prod-deploy': { ...t.config.roles['prod-deploy']!, maxTtlSeconds: 3600 } } },
  });
  try {
    const issued = await call(raised.url, 'POST', '/v1/credentials', raised.as(AGENT), req);
    expect(issued.status).toBe(201);
    expect(issued.body.ttlSeconds).toBeLessThanOrEqual(300);
    expect(Math.round((Date.parse(issued.body.expiresAt) - Date.now()) / 1000)).toBeLessThanOrEqual(300);
  } finally {
    await raised.broker.close();
  }
});
