import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { isRedisUnavailable } from '../../src/redis/unavailable.ts';
import { ADMIN, AGENT, ORCH, call, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';
import { type RedisStandalone, startStandalone } from '../helpers/redis-topology.ts';

/**
 * A Redis that refuses every write for a while: full under the required `noeviction` (`OOM command not
 * allowed`), or after a failed RDB save (`MISCONF`, stop-writes-on-bgsave-error). The broker cannot decide
 * anything, which is a 503 not_ready (contract section 3), like a stalled or LOADING Redis; never a 500, which
 * the contract keeps for the broker's own bugs and clients do not retry. Before, /readyz said 503 while opening a
 * task, issuing, a denial (its audit record), revoking, completing and quarantining answered 500.
 */
let redis: RedisStandalone;
let admin: Redis;
let t: TestBroker;
let leaseId: string;
const agent = `spiffe://dev.local${AGENT}`;

beforeAll(async () => {
  redis = await startStandalone();
  admin = redis.client();
  await admin.connect();
  const prefix = `full-${process.pid}`;
  t = await startTestBroker('full', { prefix, config: { redis: { url: redis.url, prefix } } });
  expect((await open('full-1')).status).toBe(201);
  const issued = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'full-1', role: 'demo-api' });
  expect(issued.status).toBe(201);
  leaseId = issued.body.leaseId;
}, 60_000);
afterAll(async () => {
  await admin?.config('SET', 'maxmemory', '0').catch(() => {});
  await t?.broker.close();
  admin?.disconnect();
  await redis?.stop();
});

function open(taskId: string) {
  return call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
}

/**
 * Every write path once; each answer's status and code. `who`: the denied caller, a new one each time (the same
 * denial again within a minute is counted into one folded record, not written on its own).
 */
async function everyWrite(who: string): Promise<Record<string, string>> {
  // /readyz answers from a write probe at most a second old (docs/operations.md: 503 within about 2 s of Redis
  // refusing writes): wait for it (generously: a loaded machine is slow, and the wait ends at the first 503), then
  // take its answer.
  await waitFor(async () => (await call(t.url, 'GET', '/readyz', {})).status === 503, 20_000, 100).catch(() => {});
  const seen: Record<string, { status: number; body: { code?: string; status?: string } }> = {
    readyz: await call(t.url, 'GET', '/readyz', {}),
    openTask: await open('full-2'),
    issue: await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'full-1', role: 'demo-api' }),
    denied: await call(t.url, 'POST', '/v1/credentials', t.as(who), { taskId: 'full-1', role: 'demo-api' }),
    revokeLease: await call(t.url, 'DELETE', `/v1/leases/${leaseId}`, t.as(AGENT)),
    complete: await call(t.url, 'POST', '/v1/tasks/full-1/complete', t.as(ORCH)),
    quarantine: await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: 'spiffe://dev.local/agent/x', reason: 'r' }),
  };
  return Object.fromEntries(Object.entries(seen).map(([k, r]) => [k, `${r.status} ${r.body?.code ?? r.body?.status}`]));
}
const allNotReady = (names: string[]) => Object.fromEntries(names.map((k) => [k, '503 not_ready']));

test('Redis out of memory under noeviction: /readyz and every write answer 503 not_ready, never 500', async () => {
  await admin.config('SET', 'maxmemory', '1');
  try {
    const seen = await everyWrite('/agent/other-oom');
    expect(seen).toEqual(allNotReady(Object.keys(seen)));
  } finally {
    await admin.config('SET', 'maxmemory', '0');
  }
  await waitFor(async () => (await call(t.url, 'GET', '/readyz', {})).status === 200, 20_000, 100);
}, 90_000);

test('Redis refusing writes after a failed RDB save (MISCONF): 503 not_ready everywhere, never 500', async () => {
  const dir = String(((await admin.config('GET', 'dir')) as string[])[1]);
  // A directory where the dump goes: the save's final rename fails, whoever runs the server.
  mkdirSync(join(dir, 'dump.rdb', 'in-the-way'), { recursive: true });
  await admin.config('SET', 'save', '3600 1');
  try {
    await admin.bgsave();
    await waitFor(async () => /rdb_last_bgsave_status:err/.test(await admin.info('persistence')), 10_000, 100);
    const seen = await everyWrite('/agent/other-misconf');
    expect(seen).toEqual(allNotReady(Object.keys(seen)));
  } finally {
    rmSync(join(dir, 'dump.rdb'), { recursive: true, force: true });
    await admin.config('SET', 'save', '');
    await admin.bgsave();
    await waitFor(async () => /rdb_last_bgsave_status:ok/.test(await admin.info('persistence')), 10_000, 100);
  }
  await waitFor(async () => (await call(t.url, 'GET', '/readyz', {})).status === 200, 20_000, 100);
}, 90_000);

test('the refusals are recognised inside a Redis 6 script error and an aborted transaction too', () => {
  const wrapped = (reply: string) =>
    new Error(`ERR Error running script (call to f_0123abcd): @user_script:12: @user_script: 12: -${reply}`);
  for (const reply of [
    "OOM command not allowed when used memory > 'maxmemory'. ",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
    "NOPERM this user has no permissions to run the 'xadd' command",
  ]) {
    expect(isRedisUnavailable(wrapped(reply))).toBe(true);
    expect(isRedisUnavailable(new Error(`${reply} script: 0123abcd, on @user_script:12.`))).toBe(true);
    expect(isRedisUnavailable(new Error(`EXECABORT Transaction discarded because of: ${reply}`))).toBe(true);
  }
  expect(isRedisUnavailable(wrapped('WRONGTYPE Operation against a key holding the wrong kind of value'))).toBe(false);
  expect(isRedisUnavailable(new Error('ERR value is not an integer or out of range'))).toBe(false);
});
