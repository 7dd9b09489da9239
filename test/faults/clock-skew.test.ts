import { resolve } from 'node:path';
import { loadConfig } from '../../src/config/load.ts';
import {
  AGENT,
  ORCH,
  call,
  dropPrefix,
  startTestBroker,
  testConfigFile,
  uniquePrefix,
  waitFor,
  type TestBroker,
} from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { type BrokerProcess, startBrokerProcess } from '../helpers/process.ts';

/**
 * Fault: a process whose clock is a minute off. Deadlines, expiries and key
 * activation are decided on Redis's clock, so it neither ends tasks and
 * leases early nor creates a signing key the others cannot use. Before: a
 * worker 60 s fast ended a 90 s task at 30 s; a fast instance that started
 * first made every other instance answer 500 for a minute.
 */
const SHIM = resolve('test/faults/skew-clock.mjs');
const skewed = (ms: number) => ({ NODE_OPTIONS: `--import=${SHIM}`, JIT_TEST_CLOCK_SKEW_MS: String(ms) });
const issuer = new TestIssuer();
const procs: BrokerProcess[] = [];
const brokers: TestBroker[] = [];
const prefixes: string[] = [];

afterAll(async () => {
  for (const p of procs) await p.kill();
  for (const b of brokers) await b.broker.close();
  for (const p of prefixes) await dropPrefix(p);
});

const as = (path: string) => ({ authorization: `Bearer ${issuer.svid(path)}` });

// Long enough that a loaded machine does not let the task or the lease really expire over the calls that set
// them up (a task of 6 s did: the credential call was answered 409 on a machine running the suite beside two
// others), short against the skew: a worker deciding on its own clock, 60 s fast, ends both at once.
// Each test starts a broker process first: its timeout allows for the helper's START_TIMEOUT_MS (60 s) and 60 s more.
const TASK_S = 15;
const LEASE_S = 5;

test('a worker 60 s fast ends neither tasks nor leases early', async () => {
  const prefix = uniquePrefix('skew-worker');
  prefixes.push(prefix);
  const file = testConfigFile(issuer, prefix);
  procs.push(await startBrokerProcess(file, { args: ['--worker'], env: skewed(60_000) }));
  // The API (right clock) runs no worker: only the skewed one sweeps.
  const t = await startTestBroker('skew-api', { prefix, issuer, loaded: loadConfig({}, file), broker: { worker: false } });
  brokers.push(t);
  // Measured from before each call: under load a call can take a second, and the deadline starts inside it.
  const beforeOpen = Date.now();
  const open = await call(t.url, 'POST', '/v1/tasks', as(ORCH), {
    taskId: 't-skew',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: TASK_S,
    grants: [{ role: 'demo-api' }],
  });
  expect(open.status).toBe(201);
  const beforeIssue = Date.now();
  const cred = await call(t.url, 'POST', '/v1/credentials', as(AGENT), { taskId: 't-skew', role: 'demo-api', ttlSeconds: LEASE_S });
  // With what it said and when, should a loaded machine ever make it fail again (it was 409 with a 6-s task).
  expect({ status: cred.status, body: cred.body, sinceOpenMs: Date.now() - beforeOpen }).toMatchObject({ status: 201 });
  // Not ended before their time: seen ended no sooner than their deadlines after the call (lower bounds: a
  // loaded machine only makes them later), and on the record, ended (revokedAt, endedAt: the sweep's time) not
  // before the deadline and not after now (a sweep stamping its own clock, 60 s fast, would be). Not by the
  // status read some time after the issue: on a loaded machine the calls took seconds, and the lease's deadline
  // had really passed by the read.
  const { redis, keys } = t.broker.deps;
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
  await waitFor(async () => (await call(t.url, 'GET', '/v1/tasks/t-skew', as(ORCH))).body.status === 'expired', TASK_S * 1000 + 5000);
  expect(Date.now() - beforeOpen).toBeGreaterThanOrEqual(TASK_S * 1000 - 500);
  await endedOnTime(keys.task('t-skew'), 'endedAt');
}, 120_000);

test('an instance 60 s fast that starts first creates a signing key every instance signs with at once', async () => {
  const prefix = uniquePrefix('skew-key');
  prefixes.push(prefix);
  const file = testConfigFile(issuer, prefix);
  const fast = await startBrokerProcess(file, { args: ['--api'], env: skewed(60_000) });
  procs.push(fast);
  const t = await startTestBroker('skew-key-api', { prefix, issuer, loaded: loadConfig({}, file), broker: { worker: false } });
  brokers.push(t);
  for (const url of [t.url, fast.url]) {
    const taskId = `t-key-${url.split(':').at(-1)}`;
    await call(url, 'POST', '/v1/tasks', as(ORCH), {
      taskId,
      agent: `spiffe://dev.local${AGENT}`,
      tenant: 'acme',
      purpose: 'p',
      ttlSeconds: 60,
      grants: [{ role: 'demo-api' }],
    });
    const c = await call(url, 'POST', '/v1/credentials', as(AGENT), { taskId, role: 'demo-api' });
    expect(c.status).toBe(201);
    // Its iat and exp are on Redis's clock too, whichever instance signed.
    const exp = JSON.parse(Buffer.from(c.body.credentials.access_token.split('.')[1], 'base64url').toString()).exp;
    expect(Math.abs(exp * 1000 - (Date.now() + 60_000))).toBeLessThan(5_000); // the task's 60 s bound the TTL
  }
}, 120_000);
