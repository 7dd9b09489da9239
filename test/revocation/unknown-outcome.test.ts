import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { AwsEmulator } from '../emulators/aws/index.ts';
import { AGENT, ORCH, auditRecords, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';
import { awsForBroker, callerIdentityAs } from '../providers/aws/helpers.ts';

/**
 * An upstream call whose answer never came (a timeout, a reset connection) may still have made the
 * credential. Found in review: such a call ended its lease `failed` like a refusal, and the AWS session
 * STS had made lived on, never revoked. Its lease now stays `issuing` for the worker, which gives the
 * issuance up at its orphan deadline, revokes what the intent names, and ends it `failed`.
 */
let emu: AwsEmulator;
let t: TestBroker;
beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  t = await startTestBroker('unknown-outcome', {
    config: {
      providers: { aws: { ...aws.providers.aws, revocation: 'iam-deny', requestTimeoutMs: 300, maxAttempts: 1 } },
      roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
      revocation: { backoffMs: 50, maxBackoffMs: 500, sweepMs: 20, orphanMs: 1000 },
    },
  });
}, 60_000);
afterAll(async () => {
  await t?.close();
  await emu?.stop();
});

test('an AssumeRole STS carried out but answered too late is revoked, and its lease ends failed only then', async () => {
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'uo-1',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'unknown outcome',
    ttlSeconds: 7200,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
  });
  expect(open.status).toBe(201);
  const before = emu.sessions().length;
  emu.holdAnswer('AssumeRole', 1500);
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'uo-1', role: 'reports-bucket' });
  expect({ status: r.status, code: r.body.code }).toEqual({ status: 502, code: 'upstream_unavailable' });
  const made = emu.sessions().slice(before);
  expect(made).toHaveLength(1);
  const [leaseId] = await t.broker.deps.tasks.leaseIds('uo-1');
  // The outcome is unknown: not a refusal.
  expect((await t.broker.deps.leases.get(leaseId!))?.status).not.toBe('failed');
  // Before: failed at once, and the session still worked after every background pass.
  await waitFor(async () => (await t.broker.deps.leases.get(leaseId!))?.status === 'failed', 15_000, 50);
  expect(await callerIdentityAs(emu.url, made[0]!)).not.toBe('ok');
  const fails = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter(
    (a) => a.leaseId === leaseId && a.action === 'credential.fail',
  );
  expect(fails).toHaveLength(1);
}, 60_000);
