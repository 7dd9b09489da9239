import { jest } from '@jest/globals';
import type { AwsEmulator } from '../emulators/aws/index.ts';
import { AGENT, call, openAgentTask, testConfigFile, waitFor } from '../helpers/broker.ts';
import { START_TIMEOUT_MS, processFixture } from '../helpers/process.ts';
import { awsForBroker, callerIdentityAs } from '../providers/aws/helpers.ts';

/**
 * Red team, the revocation promise across a SIGKILL on the AWS side (test/revocation/unknown-outcome.test.ts
 * covers a late answer to a live process): the API process is killed after STS made the sessions and before
 * their answers came back. The session names were written down before the calls, so another instance gives
 * the issuances up at their orphan deadline and denies each session in IAM; every lease ends `failed`.
 */
jest.setTimeout(START_TIMEOUT_MS + 90_000);
let emu: AwsEmulator;
const fx = processFixture();
fx.onCleanup(() => emu?.stop());
const { issuer, as } = fx;
const prefix = fx.prefix('rt3-crash-aws');

test('sessions STS made for an API process killed before their answers are denied by another instance', async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  const file = testConfigFile(issuer, prefix, {
    providers: { aws: { ...aws.providers.aws, revocation: 'iam-deny', requestTimeoutMs: 20_000, maxAttempts: 1 } },
    roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
    revocation: { backoffMs: 50, maxBackoffMs: 500, sweepMs: 20, orphanMs: 1000, lockMs: 1000, stalledCheckMs: 500 },
  });
  const api = await fx.start(file, { args: ['--api'] });
  const grants = [{ role: 'reports-bucket', scopes: ['s3:GetObject', 'sts:GetCallerIdentity'] }];
  await openAgentTask({ url: api.url, as }, 't-crash-aws', grants, 'crash', 7200);
  const before = emu.sessions().length;
  const N = 3;
  for (let i = 0; i < N; i++) emu.holdAnswer('AssumeRole', 60_000);
  const inflight = Array.from({ length: N }, () =>
    call(api.url, 'POST', '/v1/credentials', as(AGENT), { taskId: 't-crash-aws', role: 'reports-bucket' }).catch(() => undefined),
  );
  await waitFor(async () => emu.sessions().length - before === N, 10_000, 25);
  const made = emu.sessions().slice(before);
  for (const s of made) expect(await callerIdentityAs(emu.url, s)).toBe('ok');
  await api.kill('SIGKILL');
  await Promise.all(inflight);

  const worker = await fx.startBroker('rt3-crash-aws-worker', file, { api: false });
  const ids = await worker.broker.deps.tasks.leaseIds('t-crash-aws');
  expect(ids).toHaveLength(N);
  await waitFor(async () => (await worker.broker.deps.leases.getMany(ids)).every((l) => l.status === 'failed'), 20_000, 100);
  for (const s of made) expect(await callerIdentityAs(emu.url, s)).not.toBe('ok');
});
