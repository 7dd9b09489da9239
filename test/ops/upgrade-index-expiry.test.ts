import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { AGENT, call, ORCH, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { PREVIOUS_RELEASE, previousReleaseTest } from '../helpers/old-release.ts';

/**
 * A rolling upgrade: a task this release issued leases under, ended by a process of the previous release (its
 * API completing the task, its worker's sweep expiring it, its kill switch). Found in review: that release's
 * end_task gives the task's keys their retention, but knows nothing of this release's lease index
 * (`task-lease-ids`), which therefore never expired: one key per such task, left in Redis for good (only a
 * later read of the task's leases gave it an expiry). lease-create.lua now gives the index an expiry when it
 * creates it: the task's deadline plus the retention, the latest the task's records can live.
 */
const maybe = previousReleaseTest('test/ops/upgrade-index-expiry.test.ts');

/** The previous release's task-end.lua as its src/redis/scripts.ts loads it (the `-- uses:` libraries prepended). */
function previousScript(name: string): string {
  const show = (path: string) => execFileSync('git', ['show', `${PREVIOUS_RELEASE}:src/redis/lua/${path}`], { encoding: 'utf8' });
  let body = show(`${name}.lua`);
  const uses = /^-- uses: (.+)$/m.exec(body)?.[1]?.split(/[ ,]+/) ?? [];
  for (const lib of uses.reverse()) body = `${show(`lib/${lib}.lua`)}\n${body}`;
  return body;
}

let t: TestBroker;
const RETENTION_S = 3600;
beforeAll(async () => {
  t = await startTestBroker('upgrade-index-expiry', { config: { tasks: { retentionSeconds: RETENTION_S } }, broker: { worker: false } });
});
afterAll(async () => {
  await t?.close();
});

maybe("a task this release issued under and the previous release ended: its lease index expires with the task's records", async () => {
  const { keys, redis } = t.broker.deps;
  await openAgentTask(t, 't-up', [{ role: 'demo-api' }]);
  const issued = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-up', role: 'demo-api' });
  expect(issued.status).toBe(201);
  const b = keys.bucketOfTask('t-up');
  // The previous release completes the task (its API's POST /v1/tasks/{id}/complete runs this script).
  const res = (await redis.eval(
    previousScript('task-end'),
    2,
    keys.task('t-up'),
    keys.openTasks(b),
    keys.base(b),
    'completed',
    'task_completed',
    'task_completed',
    RETENTION_S * 1000,
    't-up',
  )) as unknown[];
  expect(res[0]).toBe('ended');
  // Its own keys expire (the task, its lease set); so must the index this release keeps beside them.
  expect(await redis.pttl(keys.task('t-up'))).toBeGreaterThan(0);
  expect(await redis.pttl(keys.taskLeasesLegacy('t-up'))).toBeGreaterThan(0);
  const ttl = await redis.pttl(keys.taskLeases('t-up'));
  expect(ttl).toBeGreaterThan(0);
  // No later than the task's deadline (600 s) plus the retention.
  expect(ttl).toBeLessThanOrEqual((600 + RETENTION_S) * 1000);
});

maybe("an index a read created from the previous release's lease set expires too once that release ends the task", async () => {
  const { keys, redis } = t.broker.deps;
  await openAgentTask(t, 't-up2', [{ role: 'demo-api' }]);
  // Only the previous release issued under it (its lease-create.lua adds to the plain set alone); a read of
  // this release copies the set into the index.
  await redis.sadd(keys.taskLeasesLegacy('t-up2'), 'l-old-release');
  expect((await t.broker.deps.tasks.leasePage('t-up2', undefined, 10)).map((p) => p.id)).toEqual(['l-old-release']);
  const b = keys.bucketOfTask('t-up2');
  const res = (await redis.eval(
    previousScript('task-end'),
    2,
    keys.task('t-up2'),
    keys.openTasks(b),
    keys.base(b),
    'completed',
    'task_completed',
    'task_completed',
    RETENTION_S * 1000,
    't-up2',
  )) as unknown[];
  expect(res[0]).toBe('ended');
  const ttl = await redis.pttl(keys.taskLeases('t-up2'));
  expect(ttl).toBeGreaterThan(0);
  expect(ttl).toBeLessThanOrEqual((600 + RETENTION_S) * 1000);
});

test("this release's own ending still gives the index the retention from the task's end", async () => {
  const { keys, redis } = t.broker.deps;
  await openAgentTask(t, 't-own', [{ role: 'demo-api' }]);
  expect((await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-own', role: 'demo-api' })).status).toBe(201);
  expect(await redis.pttl(keys.taskLeases('t-own'))).toBeGreaterThan(RETENTION_S * 1000);
  expect((await call(t.url, 'POST', '/v1/tasks/t-own/complete', t.as(ORCH))).status).toBe(202);
  const ttl = await redis.pttl(keys.taskLeases('t-own'));
  expect(ttl).toBeGreaterThan(0);
  expect(ttl).toBeLessThanOrEqual(RETENTION_S * 1000);
});

maybe('a task id opened again while the index an earlier task left still lives: the index lasts as long as the new task', async () => {
  const { keys, redis } = t.broker.deps;
  const opened = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-again',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'first',
    ttlSeconds: 60,
    grants: [{ role: 'demo-api' }],
  });
  expect(opened.status).toBe(201);
  expect((await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-again', role: 'demo-api' })).status).toBe(201);
  const b = keys.bucketOfTask('t-again');
  await redis.eval(
    previousScript('task-end'),
    2,
    keys.task('t-again'),
    keys.openTasks(b),
    keys.base(b),
    'completed',
    'task_completed',
    'task_completed',
    RETENTION_S * 1000,
    't-again',
  );
  // Its records purged (as their retention would; the index, given the earlier task's deadline, is still there).
  await redis.del(keys.task('t-again'), keys.taskLeasesLegacy('t-again'), keys.taskChildren('t-again'), keys.taskApprovals('t-again'));
  const before = await redis.pttl(keys.taskLeases('t-again'));
  expect(before).toBeLessThanOrEqual((60 + RETENTION_S) * 1000);
  await openAgentTask(t, 't-again', [{ role: 'demo-api' }]);
  expect((await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-again', role: 'demo-api' })).status).toBe(201);
  // The new task's deadline is 600 s away: its index must outlast it by the retention.
  expect(await redis.pttl(keys.taskLeases('t-again'))).toBeGreaterThan((590 + RETENTION_S) * 1000);
});
