import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ADMIN, ORCH, call, startSibling, startTestBroker, testConfig, type TestBroker } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';

/**
 * Red team: task handling (contract section 3).
 * - A task id whose record is gone (purged after retention, or lost) can be
 *   opened again for another agent; an instance that cached the earlier
 *   incarnation must not authorize against it.
 * - `complete` reports the leases it revokes, not every lease the task had.
 * - Ended lease records are bounded per task (`tasks.maxLeasesTotal`).
 * - A label named `__proto__` or `constructor` is a label like any other.
 */
const ALPHA = '/agent/rt-alpha';
const BETA = '/agent/rt-beta';
const id = (p: string) => `spiffe://dev.local${p}`;
let a: TestBroker;
let b: TestBroker;
let policies: string;

beforeAll(async () => {
  // Policy is not what is tested here: permit everything the broker's own checks allow.
  policies = mkdtempSync(join(tmpdir(), 'rt-tasks-policies-'));
  writeFileSync(join(policies, 'all.cedar'), 'permit (principal, action, resource);\n');
  a = await startTestBroker('rt-tasks', { config: { policies } });
  b = await startSibling(a);
});
afterAll(async () => {
  await b.close();
  await a.close();
});

const open = (t: TestBroker, body: Record<string, unknown>) =>
  call(t.url, 'POST', '/v1/tasks', t.as(ORCH), { tenant: 'acme', purpose: 'p', ttlSeconds: 600, ...body });

/** What retention (or a data loss) does to an ended task: its records are gone. */
async function purge(taskId: string): Promise<void> {
  const { redis, keys } = a.broker.deps;
  await redis.del(keys.task(taskId), keys.taskLeases(taskId), keys.taskChildren(taskId), keys.taskApprovals(taskId));
}

describe('a task id opened again after its record is gone', () => {
  test('an instance that cached the earlier task decides on the task as it is now (credentials)', async () => {
    const taskId = 'rt-reuse-cred';
    expect((await open(a, { taskId, agent: id(ALPHA), grants: [{ role: 'demo-api' }] })).status).toBe(201);
    // Instance b caches the task while alpha uses it.
    expect((await call(b.url, 'POST', '/v1/credentials', b.as(ALPHA), { taskId, role: 'demo-api' })).status).toBe(201);
    expect((await call(a.url, 'POST', `/v1/tasks/${taskId}/complete`, a.as(ORCH))).status).toBe(202);
    await purge(taskId);
    // The same id, now beta's task with another grant.
    expect((await open(a, { taskId, agent: id(BETA), grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }] })).status).toBe(201);

    const stale = await call(b.url, 'POST', '/v1/credentials', b.as(ALPHA), { taskId, role: 'demo-api' });
    expect({ status: stale.status, code: stale.body.code }).toEqual({ status: 403, code: 'not_task_agent' });
    const owner = await call(b.url, 'POST', '/v1/credentials', b.as(BETA), { taskId, role: 'tickets-api' });
    expect({ status: owner.status, code: owner.body.code }).toEqual({ status: 201, code: undefined });
    expect(owner.body.scopes).toEqual(['tickets:read']);
  });

  test("the new task's agent is not refused on the cached task either", async () => {
    const taskId = 'rt-reuse-owner';
    expect((await open(a, { taskId, agent: id(ALPHA), grants: [{ role: 'demo-api' }] })).status).toBe(201);
    expect((await call(b.url, 'POST', '/v1/credentials', b.as(ALPHA), { taskId, role: 'demo-api' })).status).toBe(201);
    expect((await call(a.url, 'POST', `/v1/tasks/${taskId}/complete`, a.as(ORCH))).status).toBe(202);
    await purge(taskId);
    expect((await open(a, { taskId, agent: id(BETA), grants: [{ role: 'demo-api' }] })).status).toBe(201);
    const owner = await call(b.url, 'POST', '/v1/credentials', b.as(BETA), { taskId, role: 'demo-api' });
    expect({ status: owner.status, code: owner.body.code }).toEqual({ status: 201, code: undefined });
  });

  test('an instance that cached the earlier parent decides a sub-task on the parent as it is now', async () => {
    const taskId = 'rt-reuse-parent';
    expect((await open(a, { taskId, agent: id(ALPHA), grants: [{ role: 'demo-api' }] })).status).toBe(201);
    expect((await call(b.url, 'POST', '/v1/credentials', b.as(ALPHA), { taskId, role: 'demo-api' })).status).toBe(201);
    expect((await call(a.url, 'POST', `/v1/tasks/${taskId}/complete`, a.as(ORCH))).status).toBe(202);
    await purge(taskId);
    expect((await open(a, { taskId, agent: id(BETA), grants: [{ role: 'demo-api' }] })).status).toBe(201);

    const stale = await call(b.url, 'POST', '/v1/tasks', b.as(ALPHA), {
      parentTaskId: taskId,
      agent: id(ALPHA),
      ttlSeconds: 60,
      grants: [{ role: 'demo-api' }],
    });
    expect({ status: stale.status, code: stale.body.code }).toEqual({ status: 403, code: 'not_parent_agent' });
    const owner = await call(b.url, 'POST', '/v1/tasks', b.as(BETA), {
      parentTaskId: taskId,
      agent: id(ALPHA),
      ttlSeconds: 60,
      grants: [{ role: 'demo-api' }],
    });
    expect({ status: owner.status, code: owner.body.code }).toEqual({ status: 201, code: undefined });
  });
});

test("an approval of the earlier task under the same id is not the new task's approval", async () => {
  const taskId = 'rt-reuse-approval';
  const grants = [{ role: 'prod-deploy' }];
  expect((await open(a, { taskId, agent: id(ALPHA), grants })).status).toBe(201);
  const asked = await call(a.url, 'POST', '/v1/credentials', a.as(ALPHA), { taskId, role: 'prod-deploy' });
  expect(asked.status).toBe(202);
  const decided = await call(a.url, 'POST', `/v1/approvals/${asked.body.approvalId}`, a.as(ADMIN), { decision: 'approve' });
  expect(decided.status).toBe(200);
  // Completed early: with a retention shorter than the time left, the task's records go before its deadline.
  expect((await call(a.url, 'POST', `/v1/tasks/${taskId}/complete`, a.as(ORCH))).status).toBe(202);
  await purge(taskId);
  expect((await open(a, { taskId, agent: id(ALPHA), grants })).status).toBe(201);

  for (const t of [a, b]) {
    const again = await call(t.url, 'POST', '/v1/credentials', t.as(ALPHA), { taskId, role: 'prod-deploy' });
    expect({ status: again.status, status2: again.body.status }).toEqual({ status: 202, status2: 'pending' });
    expect(again.body.approvalId).not.toBe(asked.body.approvalId);
  }
});

test('complete counts only the leases it revokes: not those already ended, none on a repeat', async () => {
  const taskId = 'rt-complete-count';
  expect((await open(a, { taskId, agent: id(ALPHA), grants: [{ role: 'demo-api' }] })).status).toBe(201);
  const leases: string[] = [];
  for (let i = 0; i < 3; i++)
    leases.push((await call(a.url, 'POST', '/v1/credentials', a.as(ALPHA), { taskId, role: 'demo-api' })).body.leaseId);
  expect((await call(a.url, 'DELETE', `/v1/leases/${leases[0]}`, a.as(ALPHA))).body.status).toBe('revoked');

  const first = await call(a.url, 'POST', `/v1/tasks/${taskId}/complete`, a.as(ORCH));
  expect({ status: first.status, body: first.body }).toEqual({ status: 202, body: { taskId, status: 'completed', leases: 2 } });
  const again = await call(a.url, 'POST', `/v1/tasks/${taskId}/complete`, a.as(ORCH));
  expect({ status: again.status, body: again.body }).toEqual({ status: 202, body: { taskId, status: 'completed', leases: 0 } });
});

test('tasks.maxLeasesTotal bounds the leases a task ever has, so issue-and-revoke cannot grow Redis without limit', async () => {
  expect(testConfig(new TestIssuer(), 'x').tasks.maxLeasesTotal).toBe(10_000);
  const t = await startTestBroker('rt-tasks-total', { config: { policies, tasks: { maxLeases: 2, maxLeasesTotal: 5 } } });
  try {
    const taskId = 'rt-total';
    expect((await open(t, { taskId, agent: id(ALPHA), grants: [{ role: 'demo-api' }] })).status).toBe(201);
    // Never more than one live lease (well under maxLeases), yet the loop stops.
    for (let i = 0; i < 5; i++) {
      const r = await call(t.url, 'POST', '/v1/credentials', t.as(ALPHA), { taskId, role: 'demo-api' });
      expect(r.status).toBe(201);
      expect((await call(t.url, 'DELETE', `/v1/leases/${r.body.leaseId}`, t.as(ALPHA))).body.status).toBe('revoked');
    }
    const over = await call(t.url, 'POST', '/v1/credentials', t.as(ALPHA), { taskId, role: 'demo-api' });
    expect({ status: over.status, code: over.body.code }).toEqual({ status: 429, code: 'limit_exceeded' });
    expect(over.body.detail).toContain('tasks.maxLeasesTotal');
    expect((await t.broker.deps.tasks.leaseIds(taskId)).length).toBe(5);
  } finally {
    await t.close();
  }
});

describe('labels named __proto__ and constructor are labels like any other', () => {
  // Written as JSON: an object literal `{ __proto__: ... }` would set the prototype instead.
  const labels = (json: string) => JSON.parse(json) as Record<string, string>;
  /** An own property's value (never the prototype's). */
  const own = (o: object, k: string) => Object.getOwnPropertyDescriptor(o, k)?.value;

  test('a root task keeps them, a sub-task inherits them and may not change them', async () => {
    const taskId = 'rt-proto';
    const r = await open(a, {
      taskId,
      agent: id(ALPHA),
      grants: [{ role: 'demo-api' }],
      labels: labels('{"__proto__":"frozen","constructor":"c","plain":"p"}'),
    });
    expect(r.status).toBe(201);
    expect(Object.entries(r.body.labels).sort()).toEqual([
      ['__proto__', 'frozen'],
      ['constructor', 'c'],
      ['plain', 'p'],
    ]);
    const read = await call(a.url, 'GET', `/v1/tasks/${taskId}`, a.as(ORCH));
    expect(own(read.body.labels, '__proto__')).toBe('frozen');

    const sub = (l: string | undefined, name: string) =>
      call(b.url, 'POST', '/v1/tasks', b.as(ALPHA), {
        parentTaskId: taskId,
        taskId: name,
        agent: id(BETA),
        ttlSeconds: 60,
        grants: [{ role: 'demo-api' }],
        ...(l ? { labels: labels(l) } : {}),
      });
    for (const [l, name] of [
      ['{"__proto__":"thawed"}', 's1'],
      ['{"constructor":"other"}', 's2'],
    ] as const) {
      const changed = await sub(l, name);
      expect({ status: changed.status, code: changed.body.code }).toEqual({ status: 403, code: 'delegation_widens' });
    }
    const inherited = await sub(undefined, 's3');
    expect(inherited.status).toBe(201);
    expect(own(inherited.body.labels, '__proto__')).toBe('frozen');
    expect(own(inherited.body.labels, 'constructor')).toBe('c');
    const same = await sub('{"__proto__":"frozen"}', 's4');
    expect(same.status).toBe(201);
  });

  test('a __proto__ label is validated like any other', async () => {
    const r = await open(a, { agent: id(ALPHA), grants: [{ role: 'demo-api' }], labels: labels('{"__proto__":5}') });
    expect({ status: r.status, code: r.body.code, field: r.body.field }).toEqual({
      status: 400,
      code: 'invalid_request',
      field: 'labels.__proto__',
    });
  });
});
