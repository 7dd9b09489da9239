/**
 * A JWT is signed while its lease is recorded (one wait fewer per issuance); the token still leaves
 * only once both are done, a refused lease drops the signature, and a failed signature ends the
 * lease it had recorded.
 */
import type { Redis } from 'ioredis';
import { script } from '../../src/redis/scripts.ts';
import { countWrites } from '../helpers/socket-writes.ts';
import { AGENT, auditRecords, call, openAgentTask, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';

let t: TestBroker;
let realSign: TestBroker['broker']['deps']['signing']['sign'];
beforeAll(async () => {
  t = await startTestBroker('sign-overlap', { config: { tasks: { maxLeases: 1 } } });
  realSign = t.broker.deps.signing.sign.bind(t.broker.deps.signing);
});
afterEach(() => {
  t.broker.deps.signing.sign = realSign;
});
afterAll(async () => {
  await t.close();
});

const leaseStatuses = async (taskId: string) => {
  const ids = await t.broker.deps.tasks.leaseIds(taskId);
  return Promise.all(ids.map(async (id) => (await t.broker.deps.leases.status(id)) ?? 'none'));
};
const grants = [{ role: 'demo-api' }];

test('the lease is recorded while the token is being signed, and the token leaves once both are done', async () => {
  await openAgentTask(t, 'so-overlap', grants);
  let seen: string[] = [];
  t.broker.deps.signing.sign = async (header, payload) => {
    // Sequential code would sign first: the lease would never appear while this waits.
    seen = await waitFor(async () => (await leaseStatuses('so-overlap')).length > 0 && leaseStatuses('so-overlap'), 2000, 5).catch(
      () => [],
    );
    return realSign(header, payload);
  };
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'so-overlap', role: 'demo-api' });
  expect(r.status).toBe(201);
  expect(seen).toEqual(['active']);
  expect(r.body.credentials.access_token.split('.')).toHaveLength(3);
});

test('a signature that fails after the lease was recorded ends that lease failed, audited, and hands out nothing', async () => {
  await openAgentTask(t, 'so-fail', grants);
  t.broker.deps.signing.sign = async () => {
    await waitFor(async () => (await leaseStatuses('so-fail')).length > 0, 2000, 5);
    throw new Error('signing key unavailable');
  };
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'so-fail', role: 'demo-api' });
  expect(r.status).toBeGreaterThanOrEqual(500);
  expect(JSON.stringify(r.body)).not.toContain('eyJ');
  expect(await leaseStatuses('so-fail')).toEqual(['failed']);
  const fail = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter((a) => a.taskId === 'so-fail');
  // The issue record travels with the lease (one round trip for both); the failure follows it, for the same lease.
  expect(fail.map((a) => a.action)).toEqual(['task.open', 'credential.issue', 'credential.fail']);
  expect(fail[2]!.leaseId).toBe(fail[1]!.leaseId);
  // The task's live-lease slot is free again.
  t.broker.deps.signing.sign = realSign;
  expect((await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'so-fail', role: 'demo-api' })).status).toBe(201);
});

test('a lease the task refuses drops the signature in flight, even one that then fails, without an unhandled rejection', async () => {
  await openAgentTask(t, 'so-limit', grants);
  expect((await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'so-limit', role: 'demo-api' })).status).toBe(201);
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown) => unhandled.push(e);
  process.on('unhandledRejection', onUnhandled);
  try {
    let signed = 0;
    t.broker.deps.signing.sign = async () => {
      signed++;
      await new Promise((r) => setTimeout(r, 100));
      throw new Error('late signing failure');
    };
    const over = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'so-limit', role: 'demo-api' });
    expect({ status: over.status, code: over.body.code }).toEqual({ status: 429, code: 'limit_exceeded' });
    await new Promise((r) => setTimeout(r, 200));
    expect(signed).toBe(1);
    expect(unhandled).toEqual([]);
    expect(await leaseStatuses('so-limit')).toEqual(['active']);
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
});

test("the issue record goes to Redis in the lease script's socket write, on the lease's connection", async () => {
  await openAgentTask(t, 'so-one-write', grants);
  const seen = countWrites(t.broker.deps.redis as Redis);
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'so-one-write', role: 'demo-api' });
  expect(r.status).toBe(201);
  // Before: the record went on a connection of its own, after the lease script's answer.
  const both = seen.texts.filter((w) => w.includes(script('lease-create').sha) && w.includes(script('audit-append').sha));
  expect(both).toHaveLength(1);
});

test('a lease script whose answer never came (a command timeout) yet ran ends its lease failed, recorded, and hands out nothing', async () => {
  await openAgentTask(t, 'so-timeout', grants);
  const leases = t.broker.deps.leases;
  const realCreate = leases.create.bind(leases);
  leases.create = async (...args: Parameters<typeof realCreate>) => {
    await realCreate(...args);
    throw new Error('Command timed out');
  };
  try {
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'so-timeout', role: 'demo-api' });
    expect(r.status).toBeGreaterThanOrEqual(500);
    expect(JSON.stringify(r.body)).not.toContain('eyJ');
  } finally {
    leases.create = realCreate;
  }
  // Before: the lease stayed active under an issue record, with nothing handed out.
  expect(await leaseStatuses('so-timeout')).toEqual(['failed']);
  const actions = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys))
    .filter((a) => a.taskId === 'so-timeout')
    .map((a) => a.action);
  // The task's record and the lease's may sit on different audit chains, read back in time order: within one
  // millisecond either may come first. The issue record comes before its failure.
  expect([...actions].sort()).toEqual(['credential.fail', 'credential.issue', 'task.open']);
  expect(actions.indexOf('credential.issue')).toBeLessThan(actions.indexOf('credential.fail'));
});
