import { jest } from '@jest/globals';
import type { AwsEmulator } from '../emulators/aws/index.ts';
import { ADMIN, AGENT, call, openAgentTask, testConfigFile } from '../helpers/broker.ts';
import { START_TIMEOUT_MS, processFixture } from '../helpers/process.ts';
import { awsForBroker } from '../providers/aws/helpers.ts';

/**
 * Red team: an approved AWS request whose process dies while STS is asked the broker's own account
 * (`GetCallerIdentity`, what `revocable` needs, asked once per set of keys). Nothing can have been made by then,
 * yet the approval had been consumed before that call: killed there, it stayed `consumed` for good, with no
 * lease and no credential, and the same request needed a second approver's decision. It is now asked before the
 * approval is taken: the approval is still `approved`, and the same request, asked again, is issued under it.
 */
jest.setTimeout(START_TIMEOUT_MS + 60_000);
let emu: AwsEmulator;
const fx = processFixture();
fx.onCleanup(() => emu?.stop());
const { issuer, as } = fx;
const prefix = fx.prefix('rt-crash-aws-approval');

test('killed while STS is asked its account, an approved request leaves its approval approved', async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  const file = testConfigFile(issuer, prefix, {
    providers: { aws: { ...aws.providers.aws, revocation: 'iam-deny', requestTimeoutMs: 20_000, maxAttempts: 1 } },
    roles: { 'reports-approved': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600, approval: 'required' } },
  });
  const api = await fx.start(file, { args: ['--api'] });
  const taskId = 't-crash-aws-approval';
  await openAgentTask({ url: api.url, as }, taskId, [{ role: 'reports-approved', scopes: ['s3:GetObject'] }], 'crash', 3600);
  const ask = (url: string) => call(url, 'POST', '/v1/credentials', as(AGENT), { taskId, role: 'reports-approved' });
  const pending = await ask(api.url);
  expect(pending.status).toBe(202);
  const approvalId = pending.body.approvalId as string;
  expect((await call(api.url, 'POST', `/v1/approvals/${approvalId}`, as(ADMIN), { decision: 'approve' })).status).toBe(200);

  // The process has not asked its account yet (no /readyz, no credential): the approved request asks it, and dies there.
  const held = emu.holdRequest('GetCallerIdentity');
  const inflight = ask(api.url).catch(() => undefined);
  await held.arrived;
  await api.kill('SIGKILL');
  await inflight;
  held.release();

  const next = await fx.startBroker('rt-crash-aws-approval-next', file);
  expect((await next.broker.deps.approvals.get(approvalId))?.status).toBe('approved');
  expect(await next.broker.deps.tasks.leaseIds(taskId)).toEqual([]);
  // The same request is issued under it: no second decision needed.
  const issued = await ask(next.url);
  expect([issued.status, issued.body.revocable]).toEqual([201, true]);
  expect((await call(next.url, 'GET', `/v1/approvals/${approvalId}`, as(ADMIN))).body.status).toBe('consumed');
});
