import { resolve } from 'node:path';
import { jest } from '@jest/globals';
import { AGENT, ORCH, call, testConfigFile, waitFor } from '../helpers/broker.ts';
import { START_TIMEOUT_MS, processFixture } from '../helpers/process.ts';

/**
 * Fault: a process whose clock is a minute off. Deadlines, expiries and key
 * activation are decided on Redis's clock, so it neither ends tasks and
 * leases early nor creates a signing key the others cannot use. Before: a
 * worker 60 s fast ended a 90 s task at 30 s; a fast instance that started
 * first made every other instance answer 500 for a minute.
 */
const SHIM = resolve('test/faults/skew-clock.mjs');
const skewed = (ms: number) => ({ NODE_OPTIONS: `--import=${SHIM}`, JIT_TEST_CLOCK_SKEW_MS: String(ms) });
const fx = processFixture();
const { issuer, as } = fx;

// Long enough that a loaded machine does not let the task or the lease really expire over the calls that set
// them up (a task of 6 s did: the credential call was answered 409 on a machine running the suite beside two
// others), short against the skew: a worker deciding on its own clock, 60 s fast, ends both at once.
const TASK_S = 15;
const LEASE_S = 5;
// Each test starts a broker process first: its timeout allows for the helper's START_TIMEOUT_MS and 60 s more,
// and for the first test's setup to try twice more on a loaded machine.
jest.setTimeout(START_TIMEOUT_MS + 60_000 + 2 * TASK_S * 1000);

test('a worker 60 s fast ends neither tasks nor leases early', async () => {
  const file = testConfigFile(issuer, fx.prefix('skew-worker'));
  await fx.start(file, { args: ['--worker'], env: skewed(60_000) });
  // The API (right clock) runs no worker: only the skewed one sweeps.
  const t = await fx.startBroker('skew-api', file, { worker: false });
  const { redis, keys } = t.broker.deps;
  // Setup: a task, and a credential of it. Should the two calls take longer than the task's TTL (a loaded
  // machine), the task has really lapsed by the second (409 task_not_open): that is the setup's time, not the
  // skew, so another task is opened. Told apart on the record: refused no sooner than the task's deadline. A
  // worker that ended it early (the bug) is refused before, and fails here.
  let taskId = '';
  let beforeOpen = 0; // measured from before each call: under load a call can take a second, and the deadline starts inside it
  let beforeIssue = 0;
  let cred!: Awaited<ReturnType<typeof call>>;
  for (let attempt = 1; attempt <= 3; attempt++) {
    taskId = `t-skew-${attempt}`;
    beforeOpen = Date.now();
    const open = await call(t.url, 'POST', '/v1/tasks', as(ORCH), {
      taskId,
      agent: `spiffe://dev.local${AGENT}`,
      tenant: 'acme',
      purpose: 'p',
      ttlSeconds: TASK_S,
      grants: [{ role: 'demo-api' }],
    });
    expect(open.status).toBe(201);
    beforeIssue = Date.now();
    cred = await call(t.url, 'POST', '/v1/credentials', as(AGENT), { taskId, role: 'demo-api', ttlSeconds: LEASE_S });
    const answeredAt = Date.now();
    if (cred.status !== 409 || cred.body.code !== 'task_not_open') break;
    const deadline = Number(await redis.hget(keys.task(taskId), 'expiresAt'));
    expect({ refusedBeforeDeadlineMs: Math.max(0, deadline - answeredAt), taskId }).toEqual({ refusedBeforeDeadlineMs: 0, taskId });
  }
  // Not ended before their time: seen ended no sooner than their deadlines after the call (lower bounds: a
  // loaded machine only makes them later), and on the record, ended (revokedAt, endedAt: the sweep's time) not
  // before the deadline and not after now (a sweep stamping its own clock, 60 s fast, would be). Not by the
  // status read some time after the issue: on a loaded machine the calls took seconds, and the lease's deadline
  // had really passed by the read.
  const endedOnTime = async (key: string, endedField: string) => {
    const [deadline, ended] = (await redis.hmget(key, 'expiresAt', endedField)).map(Number);
    expect(ended).toBeGreaterThanOrEqual(deadline!);
    expect(ended).toBeLessThanOrEqual(Date.now());
  };
  const expired = await waitFor(
    async () => {
      const l = (await call(t.url, 'GET', `/v1/leases/${cred.body.leaseId}`, as(AGENT))).body;
      return l.status === 'expired' && l;
    },
    LEASE_S * 1000 + 5000,
  );
  expect(Date.now() - beforeIssue).toBeGreaterThanOrEqual(LEASE_S * 1000 - 1100); // less the rounding of exp to whole seconds
  expect(expired.reason).toBe('ttl_expired');
  await endedOnTime(keys.lease(cred.body.leaseId), 'revokedAt');
  await waitFor(async () => (await call(t.url, 'GET', `/v1/tasks/${taskId}`, as(ORCH))).body.status === 'expired', TASK_S * 1000 + 5000);
  expect(Date.now() - beforeOpen).toBeGreaterThanOrEqual(TASK_S * 1000 - 500);
  await endedOnTime(keys.task(taskId), 'endedAt');
});

test('an instance 60 s fast that starts first creates a signing key every instance signs with at once', async () => {
  const file = testConfigFile(issuer, fx.prefix('skew-key'));
  const fast = await fx.start(file, { args: ['--api'], env: skewed(60_000) });
  const t = await fx.startBroker('skew-key-api', file, { worker: false });
  for (const url of [t.url, fast.url]) {
    const taskId = `t-key-${url.split(':').at(-1)}`;
    const before = Date.now();
    await call(url, 'POST', '/v1/tasks', as(ORCH), {
      taskId,
      agent: `spiffe://dev.local${AGENT}`,
      tenant: 'acme',
      purpose: 'p',
      ttlSeconds: 60,
      grants: [{ role: 'demo-api' }],
    });
    const c = await call(url, 'POST', '/v1/credentials', as(AGENT), { taskId, role: 'demo-api' });
    const after = Date.now();
    expect(c.status).toBe(201);
    // Its iat and exp are on Redis's clock too, whichever instance signed: exp is the task's 60 s (which bound
    // the TTL) from a moment between the calls, less up to 2 s of rounding (iat and the TTL each to whole
    // seconds, down). Bracketed by the test's clock before and after, not by how long the calls took (seconds on
    // a loaded machine); an instance signing on its own clock, 60 s fast, is a minute past the bracket.
    const exp = JSON.parse(Buffer.from(c.body.credentials.access_token.split('.')[1], 'base64url').toString()).exp;
    expect(exp * 1000).toBeGreaterThanOrEqual(before + 60_000 - 2000);
    expect(exp * 1000).toBeLessThanOrEqual(after + 60_000 + 1000);
  }
});
