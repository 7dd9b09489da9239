import { resolve } from 'node:path';
import { jest } from '@jest/globals';
import { openDeployTask } from '../helpers/approvals.ts';
import { AGENT, ADMIN, call, testConfigFile } from '../helpers/broker.ts';
import { START_TIMEOUT_MS, processFixture } from '../helpers/process.ts';

/**
 * Red team, clock skew: deadlines are decided on Redis's clock, but the approval an agent's request
 * creates or finds was read back with the API process's own clock. An API instance whose clock ran ahead
 * by more than the time left on the task answered a fresh, legitimate request for an approval-required
 * role 409 `approval_expired` (and the approved request the same), though on Redis's clock the task and
 * its approval were live. The read now uses the broker's clock.
 */
const SHIM = resolve('test/faults/skew-clock.mjs');
const fx = processFixture();
const { issuer, as } = fx;
const prefix = fx.prefix('rt3-approval-skew');
jest.setTimeout(START_TIMEOUT_MS + 60_000);

test('an API instance 5 minutes fast still creates, shows and honours an approval on a task with 2 minutes left', async () => {
  const api = await fx.start(testConfigFile(issuer, prefix), {
    args: ['--api'],
    env: { NODE_OPTIONS: `--import=${SHIM}`, JIT_TEST_CLOCK_SKEW_MS: String(300_000) },
  });
  const taskId = 't-rt3-approval-skew';
  await openDeployTask({ url: api.url, as }, taskId, AGENT, 120);
  const ask = () => call(api.url, 'POST', '/v1/credentials', as(AGENT), { taskId, role: 'prod-deploy', ttlSeconds: 60 });
  const pending = await ask();
  expect({ status: pending.status, body: pending.body }).toEqual({
    status: 202,
    body: { approvalId: expect.any(String), status: 'pending' },
  });
  const shown = await call(api.url, 'GET', `/v1/approvals/${pending.body.approvalId}`, as(AGENT));
  expect(shown.body.status).toBe('pending');
  const decided = await call(api.url, 'POST', `/v1/approvals/${pending.body.approvalId}`, as(ADMIN), { decision: 'approve', reason: 'ok' });
  expect(decided.status).toBe(200);
  const issued = await ask();
  expect(issued.status).toBe(201);
});
