import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { generateMulti } from 'cluster-key-slot';
import { Redis } from 'ioredis';
import { ONCE_KEEP_MS, outboxMember, parseOutboxMember } from '../../src/audit/outbox-member.ts';
import { Keys } from '../../src/redis/keys.ts';
import { script, scripts } from '../../src/redis/scripts.ts';
import { EARLIER_TASK_MARGIN_MS } from '../../src/tasks/incarnation.ts';
import { dropPrefix, REDIS_URL, uniquePrefix } from '../helpers/broker.ts';

/**
 * Every Lua script: its header documents each KEYS and ARGV slot, it is
 * refused when handed keys of two slots, and each does what its header says
 * (one test per script, against the real Redis).
 */
let redis: Redis;
const prefix = uniquePrefix('lua');
const keys = new Keys(prefix, 16);
beforeAll(() => {
  redis = new Redis(REDIS_URL);
});
afterAll(async () => {
  await dropPrefix(prefix);
  await redis.quit();
});

const files = readdirSync(new URL('../../src/redis/lua/', import.meta.url)).filter((f) => f.endsWith('.lua'));

test.each(files)('%s has a header: what it does, then every KEYS and ARGV slot it reads', (file) => {
  const text = readFileSync(new URL(`../../src/redis/lua/${file}`, import.meta.url), 'utf8');
  const name = file.replace(/\.lua$/, '');
  expect(text.split('\n')[0]).toMatch(new RegExp(`^-- ${name}: \\S`));
  const body = text
    .split('\n')
    .filter((l) => !l.startsWith('--'))
    .join('\n');
  const header = text
    .split('\n')
    .filter((l) => l.startsWith('--'))
    .join('\n');
  for (const m of body.matchAll(/KEYS\[(\d+)\]/g)) expect(header).toContain(`KEYS[${m[1]}]`);
  for (const m of body.matchAll(/ARGV\[(\d+)\]/g)) expect(header).toMatch(new RegExp(`ARGV\\[${m[1]}(\\.\\.)?\\]`));
  expect(scripts[name]?.maxKeys).toBeGreaterThan(0);
});

/** A script's own text, without its header and comments. */
const bodyOf = (file: string) =>
  readFileSync(new URL(`../../src/redis/lua/${file}`, import.meta.url), 'utf8')
    .split('\n')
    .filter((l) => !l.trimStart().startsWith('--'))
    .join('\n');
/** Reaching a key not in KEYS: one built onto a key base, one named in ARGV, or through the libraries' helpers that do. */
const UNDECLARED =
  /\.\.\s*'[a-z-]+:?'|string\.sub\(KEYS\[|redis\.call\('EXISTS', ARGV|\b(end_subtree|end_task|end_lease|bulk_end_lease|bulk_end_finish|task_lease_gone|outbox_add|tasks_ending_key|leases_revoking_key)\(/;
const WRITE =
  /redis\.call\('(HSET|HINCRBY|HDEL|ZADD|ZREM|ZREMRANGEBYSCORE|SADD|SREM|DEL|SET|PEXPIRE|PEXPIREAT|XADD|RPUSH)'|\b(end_subtree|end_task|end_lease|bulk_end_lease|bulk_end_finish|task_lease_gone|outbox_add|index_add)\(/;

test.each(files)('%s: reaching keys it does not declare, it checks its slot (lib/slot.lua) before its first write', (file) => {
  // Redis checks only declared KEYS against a slot a Cluster reshard is moving; a script reaching others could fail
  // (or read what has not arrived as absent) after its first write, and Redis does not roll a script back.
  const body = bodyOf(file);
  const reaches = UNDECLARED.test(body);
  const guard = body.search(/\bslot_guard\(/);
  const write = body.search(WRITE);
  expect({ reaches, guarded: guard >= 0, beforeWrite: guard >= 0 && (write < 0 || guard < write) }).toEqual(
    reaches ? { reaches, guarded: true, beforeWrite: true } : { reaches, guarded: guard >= 0, beforeWrite: guard >= 0 },
  );
  if (reaches) expect(scripts[file.replace(/\.lua$/, '')]!.lua).toContain('local function slot_guard(base)');
});

test('the scripts known to reach undeclared keys are the ones the check above finds', () => {
  expect(files.filter((f) => UNDECLARED.test(bodyOf(f))).sort()).toEqual(
    [
      'approval-request.lua',
      'approval-swap.lua',
      'audit-append.lua',
      'index-forget.lua',
      'lease-fail-issuance.lua',
      'lease-update.lua',
      'leases-end.lua',
      'reconcile-page.lua',
      'reconcile-subtasks.lua',
      'reconcile-tasks.lua',
      'sweep.lua',
      'task-end.lua',
      'task-open.lua',
    ].sort(),
  );
});

test('a script handed keys of two slots is refused before Redis sees it (it would fail on a Cluster)', async () => {
  const a = keys.task('tree-a');
  const b = [...Array(50).keys()].map((i) => keys.task(`other-${i}`)).find((k) => generateMulti([a, k]) === -1)!;
  await expect(script('lock-release').run(redis, [a, b], ['x'])).rejects.toThrow(/more than one slot/);
});

test('every key of a task tree, its leases and its approvals shares one slot; buckets spread over the slot space', () => {
  const tree = ['root', 'root~a', 'root~a~b'];
  const b = keys.bucketOfTask('root');
  const leaseId = Keys.newId(b, Buffer.alloc(16, 7));
  const all = [
    ...tree.flatMap((t) => [keys.task(t), keys.taskLeases(t), keys.taskChildren(t), keys.taskApprovals(t), keys.taskAudit(t)]),
    keys.lease(leaseId),
    keys.approval(leaseId),
    keys.liveLeases(b),
    keys.openTasks(b),
    keys.tasksEnding(b),
    keys.leasesRevoking(b),
    keys.tasksByTime(b),
    keys.tasksByAgent(b, 'spiffe://x/y'),
    keys.tasksByOpener(b, 'spiffe://x/o'),
    keys.approvals(b),
    keys.approvalsOf(b, 'spiffe://x/y'),
    keys.auditStream(b),
    keys.auditHead(b),
    keys.auditOutbox(b),
  ];
  expect(generateMulti(all)).not.toBe(-1);
  const slots = Array.from({ length: 16 }, (_, i) => generateMulti([keys.liveLeases(i)]));
  slots.forEach((s, i) => {
    expect(s).toBeGreaterThanOrEqual(Math.floor((i * 16384) / 16));
    expect(s).toBeLessThan(Math.floor(((i + 1) * 16384) / 16));
  });
});

/** A task in bucket `b`, opened through the script. */
async function openTask(taskId: string, ttlMs = 60_000, parent?: string, parentCreatedAt: number | '' = '') {
  const b = keys.bucketOfTask(taskId);
  const k = [keys.task(taskId), keys.openTasks(b), keys.tasksByTime(b), keys.tasksByAgent(b, 'a'), keys.tasksByOpener(b, 'o')];
  if (parent) k.push(keys.task(parent), keys.taskChildren(parent), keys.task(taskId.split('~')[0]!));
  return (await script('task-open').run(redis, k, [
    JSON.stringify({ taskId }),
    ttlMs,
    taskId,
    2,
    'a',
    'acme',
    5000,
    3_600_000,
    parentCreatedAt,
  ])) as unknown[];
}

async function createLease(
  taskId: string,
  leaseId: string,
  status = 'active',
  expiresAt = Date.now() + 60_000,
  provider = 'jwt',
  opts: { maxTotal?: number; createdAt?: number | '' } = {},
) {
  const b = keys.bucketOfTask(taskId);
  return (await script('lease-create').run(
    redis,
    [keys.task(taskId), keys.lease(leaseId), keys.taskLeases(taskId), keys.liveLeases(b), keys.taskLeasesLegacy(taskId)],
    [
      JSON.stringify({ leaseId }),
      status,
      expiresAt,
      1000,
      leaseId,
      '{}',
      2,
      taskId,
      provider,
      'role',
      opts.maxTotal ?? 0,
      opts.createdAt ?? '',
    ],
  )) as unknown[];
}

// Distinct per task and n (a lease id is random in the broker; lease-create takes a known one for a resend).
const lid = (taskId: string, n: number) =>
  Keys.newId(keys.bucketOfTask(taskId), createHash('sha256').update(`${taskId}:${n}`).digest().subarray(0, 16));

describe('one test per script', () => {
  test('task-open: creates once, checks the parent, counts sub-tasks on the root', async () => {
    const created = await openTask('to');
    expect(created[0]).toBe('created');
    expect((await openTask('to'))[0]).toBe('exists');
    // Decided on another incarnation of the parent id: refused before anything is written.
    expect(await openTask('to~0', 30_000, 'to', Number(created[1]) - 1)).toEqual(['parent_stale']);
    expect((await openTask('to~0', 30_000, 'to', Number(created[1])))[0]).toBe('created');
    expect((await openTask('to~1', 30_000, 'to'))[0]).toBe('created');
    expect((await openTask('to~2', 120_000, 'to'))[0]).toBe('outlives_parent');
    expect((await openTask('to~4', 30_000, 'to'))[0]).toBe('limit');
  });

  test('task-open: indexes the task, trims what no record can outlive, keeps each index as long as what it lists', async () => {
    const b = keys.bucketOfTask('ix');
    await redis.zadd(keys.tasksByTime(b), Date.now() - 3_700_000, 'ancient');
    expect((await openTask('ix', 60_000))[0]).toBe('created');
    for (const k of [keys.tasksByTime(b), keys.tasksByAgent(b, 'a'), keys.tasksByOpener(b, 'o')]) {
      expect(await redis.zscore(k, 'ix')).not.toBeNull();
      expect(await redis.pttl(k)).toBeGreaterThan(60_000); // deadline (60 s) + 5 s after it
    }
    expect(await redis.zscore(keys.tasksByTime(b), 'ancient')).toBeNull();
  });

  test('index-forget: drops entries whose record is gone, only if unchanged since read', async () => {
    const b = keys.bucketOfTask('fg');
    await openTask('fg');
    const index = keys.tasksByTime(b);
    const score = Number(await redis.zscore(index, 'fg'));
    await redis.zadd(index, 1000, 'fg-gone', 2000, 'fg-again');
    const forget = (pairs: (string | number)[]) => script('index-forget').run(redis, [index], [keys.base(b), 'task:', ...pairs]);
    // A live record stays; a changed score (re-created meanwhile) stays; a gone record with the score read goes.
    expect(await forget(['fg', score, 'fg-again', 1999, 'fg-gone', 1000])).toBe(1);
    expect(await redis.zmscore(index, 'fg', 'fg-again', 'fg-gone')).toEqual([String(score), '2000', null]);
  });

  test('task-end: ends the open subtree once; an expiry waits for the deadline', async () => {
    await openTask('te', 60_000);
    await openTask('te~c', 30_000, 'te');
    const b = keys.bucketOfTask('te');
    const end = (status: string) =>
      script('task-end').run(
        redis,
        [keys.task('te'), keys.openTasks(b)],
        [keys.base(b), status, 'task_completed', 'task_completed', 60_000, 'te'],
      );
    await createLease('te', lid('te', 1));
    await createLease('te~c', lid('te', 2));
    await createLease('te~c', lid('te', 3));
    await script('lease-update').run(
      redis,
      [keys.lease(lid('te', 3)), keys.liveLeases(b)],
      [5000, lid('te', 3), keys.base(b), 'revoked', 'x'],
    );
    expect(((await end('expired')) as string[])[0]).toBe('early');
    const ended = (await end('completed')) as unknown[];
    // The live leases of the ended tasks (the one already revoked not among them), no records asked for, then the ids.
    expect([Number(ended[2]), ended[3], ...ended.slice(4)]).toEqual([2, [], 'te', 'te~c']);
    expect(await end('completed')).toEqual(['already', 'completed']);
  });

  test("task-end: the ending's audit records go to the outbox in the same step, at its endedAt", async () => {
    await openTask('td', 60_000);
    await openTask('td~c', 30_000, 'td');
    await createLease('td~c', lid('td', 1));
    const b = keys.bucketOfTask('td');
    const task = JSON.stringify({ action: 'task.revoke', actor: 'broker', decision: 'ok', taskId: 'td', policies: [], reason: 'r' });
    const sub = JSON.stringify({ action: 'task.revoke', actor: 'broker', decision: 'ok', reason: 'r' });
    const end = () =>
      script('task-end').run(
        redis,
        [keys.task('td'), keys.openTasks(b)],
        [keys.base(b), 'completed', 'revoked_by_admin', 'revoked_by_admin', 60_000, 'td', '', task, sub, '1'],
      );
    const ended = (await end()) as [string, number, number, string[], ...string[]];
    // Each member tagged with the script's time (two decisions with identical records stay two members).
    expect(ended[3].every((m) => m.startsWith(`${ended[1]} {`))).toBe(true);
    const records = ended[3].map((m) => parseOutboxMember(m));
    expect(records).toEqual([
      // Built as the caller's JSON with fields added: an empty array stays an array (no cjson decoding).
      { action: 'task.revoke', actor: 'broker', decision: 'ok', taskId: 'td', policies: [], reason: 'r', detail: { tasks: 2, leases: 1 } },
      { action: 'task.revoke', actor: 'broker', decision: 'ok', reason: 'r', taskId: 'td~c' },
    ]);
    expect(await redis.zrange(keys.auditOutbox(b), '0', '-1', 'WITHSCORES')).toEqual(
      [...ended[3]].sort().flatMap((m) => [m, String(ended[1])]),
    );
    // Ended once, recorded once. (Bucket 10: no other test here uses it.)
    expect(((await end()) as string[])[0]).toBe('already');
    expect(await redis.zcard(keys.auditOutbox(b))).toBe(2);
  });

  test('lease-create: only while the task is open, under maxLeases', async () => {
    await openTask('lc');
    expect((await createLease('lc', lid('lc', 1)))[0]).toBe('ok');
    expect((await createLease('lc', lid('lc', 2)))[0]).toBe('ok');
    expect(await createLease('lc', lid('lc', 3))).toEqual(['limit']);
    expect(await createLease('missing', lid('missing', 4))).toEqual(['no_task']);
  });

  test('lease-create: only on the task incarnation decided on, under maxLeasesTotal', async () => {
    const created = Number((await openTask('lt'))[1]);
    expect(await createLease('lt', lid('lt', 1), 'active', Date.now() + 60_000, 'jwt', { createdAt: created + 1 })).toEqual(['stale']);
    expect((await createLease('lt', lid('lt', 1), 'active', Date.now() + 60_000, 'jwt', { createdAt: created, maxTotal: 2 }))[0]).toBe(
      'ok',
    );
    const b = keys.bucketOfTask('lt');
    await script('lease-update').run(
      redis,
      [keys.lease(lid('lt', 1)), keys.liveLeases(b)],
      [5000, lid('lt', 1), keys.base(b), 'revoked', 'x'],
    );
    expect((await createLease('lt', lid('lt', 2), 'active', Date.now() + 60_000, 'jwt', { maxTotal: 2 }))[0]).toBe('ok');
    // One live lease (under maxLeases 2), two over the task's life: the total bound holds.
    expect(await createLease('lt', lid('lt', 3), 'active', Date.now() + 60_000, 'jwt', { maxTotal: 2 })).toEqual(['limit_total']);
  });

  test('lease-activate: records the answer; a task ended meanwhile hands it to revocation', async () => {
    await openTask('la');
    const id = lid('la', 1);
    await createLease('la', id, 'issuing');
    const b = keys.bucketOfTask('la');
    await script('task-end').run(
      redis,
      [keys.task('la'), keys.openTasks(b)],
      [keys.base(b), 'completed', 'task_completed', 'task_completed', 60_000, 'la'],
    );
    const res = await script('lease-activate').run(
      redis,
      [keys.lease(id), keys.task('la'), keys.liveLeases(b), keys.leasesRevoking(b)],
      ['{"a":1}', Date.now() + 1000, id],
    );
    expect(res).toEqual(['revoke', 'task_completed']);
    expect(await redis.hmget(keys.lease(id), 'status', 'handle')).toEqual(['revoking', '{"a":1}']);
    // The reconciler's work lists: the task ended with a live (issuing) lease; the lease is now revoking.
    expect(await redis.zscore(keys.tasksEnding(b), 'la')).not.toBeNull();
    expect(await redis.zscore(keys.leasesRevoking(b), id)).not.toBeNull();
    // Its end takes it off both (it was the task's last live lease).
    await script('lease-update').run(redis, [keys.lease(id), keys.liveLeases(b)], [5000, id, keys.base(b), 'revoked', '']);
    expect(await redis.zscore(keys.tasksEnding(b), 'la')).toBeNull();
    expect(await redis.zscore(keys.leasesRevoking(b), id)).toBeNull();
  });

  test('lease-activate: an issuance of an earlier task under a reopened id is not handed out (its task is gone)', async () => {
    await openTask('lx');
    const [slow, skewed] = [lid('lx', 1), lid('lx', 2)];
    await createLease('lx', slow, 'issuing');
    const b = keys.bucketOfTask('lx');
    // The upstream call outlived the task's retention: the task was purged and its id opened again.
    await redis.del(keys.task('lx'));
    await redis.hset(keys.lease(slow), 'issuedAt', Number(await redis.hget(keys.lease(slow), 'issuedAt')) - 61_000);
    await openTask('lx');
    const activate = (id: string) =>
      script('lease-activate').run(
        redis,
        [keys.lease(id), keys.task('lx'), keys.liveLeases(b), keys.leasesRevoking(b)],
        ['{}', Date.now() + 1000, id],
      );
    expect(await activate(slow)).toEqual(['revoke', 'task_completed']);
    // A lease of the task as it is now, stamped a little before its createdAt (a failed-over Redis): handed out.
    await createLease('lx', skewed, 'issuing');
    const created = Number(await redis.hget(keys.task('lx'), 'createdAt'));
    await redis.hset(keys.lease(skewed), 'issuedAt', created - 5_000);
    expect(await activate(skewed)).toEqual(['ok', expect.any(Number)]);
  });

  test('lease-update: ends once, keeps the first reason, lowers the live count', async () => {
    await openTask('lu');
    const id = lid('lu', 1);
    await createLease('lu', id);
    const b = keys.bucketOfTask('lu');
    const end = (reason: string) =>
      script('lease-update').run(redis, [keys.lease(id), keys.liveLeases(b)], [5000, id, keys.base(b), 'revoked', reason]);
    expect(await end('revoked_by_caller')).toBe('active');
    expect(await end('task_completed')).toBe('revoked');
    expect(await redis.hmget(keys.lease(id), 'reason', 'status')).toEqual(['revoked_by_caller', 'revoked']);
    expect(await redis.hget(keys.task('lu'), 'live')).toBe('0');
  });

  test('lease-update: a record given goes to the outbox only when the lease changes', async () => {
    await openTask('lo');
    const id = lid('lo', 1);
    await createLease('lo', id);
    const b = keys.bucketOfTask('lo');
    const rec = (n: number) => JSON.stringify({ action: 'lease.revoke_failed', leaseId: id, detail: { attempt: n } });
    const mark = await script('lease-update').run(
      redis,
      [keys.lease(id), keys.liveLeases(b)],
      [0, id, keys.base(b), 'revoke_failed', '', rec(1), 'attempts', 1],
    );
    expect(mark).toEqual(['active', expect.any(Number)]);
    expect(await redis.hmget(keys.lease(id), 'status', 'attempts')).toEqual(['revoke_failed', '1']);
    const end = (r: string) =>
      script('lease-update').run(redis, [keys.lease(id), keys.liveLeases(b)], [5000, id, keys.base(b), 'revoked', 'x', r]);
    const ended = (await end(rec(2))) as [string, number];
    expect(ended[0]).toBe('revoke_failed');
    expect(await redis.zscore(keys.auditOutbox(b), rec(2))).toBe(String(ended[1]));
    // Already ended: nothing changes, nothing is recorded.
    expect(await end(rec(3))).toBe('revoked');
    expect(await redis.zrange(keys.auditOutbox(b), '0', '-1')).toEqual([rec(1), rec(2)].sort());
  });

  test('lease-request-end: live -> revoking; issuing -> marked', async () => {
    await openTask('lr');
    const [live, issuing] = [lid('lr', 1), lid('lr', 2)];
    await createLease('lr', live);
    await createLease('lr', issuing, 'issuing');
    const b = keys.bucketOfTask('lr');
    const requestEnd = (id: string) =>
      script('lease-request-end').run(redis, [keys.lease(id), keys.leasesRevoking(b)], ['revoked_by_caller', id]);
    expect(await requestEnd(live)).toEqual(['revoking', 'revoked_by_caller']);
    expect(await redis.zscore(keys.leasesRevoking(b), live)).not.toBeNull();
    expect(await requestEnd(issuing)).toEqual(['deferred']);
    expect(await redis.hget(keys.lease(issuing), 'endRequested')).toBe('revoked_by_caller');
    expect(await redis.zscore(keys.leasesRevoking(b), issuing)).toBeNull(); // its activation lists it
  });

  test('leases-end: ends local leases at once, marks upstream ones revoking and hands them over, skips issuing and ended ones', async () => {
    await openTask('le');
    const [jwt, up, issuing] = [lid('le', 1), lid('le', 2), lid('le', 3)];
    await createLease('le', jwt);
    await createLease('le', up, 'active', Date.now() + 60_000, 'vault');
    const b = keys.bucketOfTask('le');
    const run = async (ids: string[]) =>
      (await script('leases-end').run(redis, [keys.liveLeases(b)], [keys.base(b), 'revoked', 'task_completed', 5000, 'jwt', ...ids])) as [
        number,
        string[],
        string[],
        string[],
      ];
    const [now, providers, handoff, records] = await run([jwt, up, lid('le', 9)]);
    expect(providers).toEqual(['jwt']);
    expect(handoff).toEqual([up]);
    // The ended lease's record, in the bucket's outbox at the script's time; the handed-over one is recorded by the worker.
    expect(records.map((m) => parseOutboxMember(m))).toEqual([
      { action: 'lease.revoke', actor: 'broker', decision: 'ok', taskId: 'le', role: 'role', leaseId: jwt, reason: 'task_completed' },
    ]);
    expect(records[0]!.startsWith(`${now} {`)).toBe(true);
    expect(await redis.zscore(keys.auditOutbox(b), records[0]!)).toBe(String(now));
    expect(await redis.hmget(keys.lease(jwt), 'status', 'reason')).toEqual(['revoked', 'task_completed']);
    expect(await redis.hmget(keys.lease(up), 'status', 'reason')).toEqual(['revoking', 'task_completed']);
    expect(await redis.zscore(keys.liveLeases(b), jwt)).toBeNull();
    expect(await redis.zscore(keys.liveLeases(b), up)).not.toBeNull();
    expect(await redis.zscore(keys.leasesRevoking(b), up)).not.toBeNull();
    expect(await redis.hget(keys.task('le'), 'live')).toBe('1');
    expect(await redis.pttl(keys.lease(jwt))).toBeGreaterThan(0);
    await createLease('le', issuing, 'issuing');
    const [, again, handoff2, none] = await run([jwt, up, issuing]);
    expect(again).toEqual([]);
    expect(none).toEqual([]);
    expect(await redis.zcard(keys.auditOutbox(b))).toBe(1);
    expect(handoff2).toEqual([up]);
    expect(await redis.hget(keys.lease(issuing), 'status')).toBe('issuing');
  });

  test('leases-end / sweep: a revoking lease they end leaves the work list of revocations in progress', async () => {
    await openTask('lw');
    const [a, c] = [lid('lw', 1), lid('lw', 2)];
    await createLease('lw', a);
    await createLease('lw', c, 'active', Date.now() + 30);
    const b = keys.bucketOfTask('lw');
    for (const id of [a, c])
      await script('lease-request-end').run(redis, [keys.lease(id), keys.leasesRevoking(b)], ['revoked_by_caller', id]);
    await script('leases-end').run(redis, [keys.liveLeases(b)], [keys.base(b), 'revoked', 'task_completed', 5000, 'jwt', a]);
    expect(await redis.zscore(keys.leasesRevoking(b), a)).toBeNull();
    expect(await redis.zscore(keys.leasesRevoking(b), c)).not.toBeNull();
    await new Promise((r) => setTimeout(r, 40));
    await script('sweep').run(redis, [keys.liveLeases(b), keys.openTasks(b)], [keys.base(b), 1000, 200, 5000, 15_000, 'jwt']);
    expect(await redis.hget(keys.lease(c), 'status')).toBe('expired');
    expect(await redis.zscore(keys.leasesRevoking(b), c)).toBeNull();
    expect(await redis.hget(keys.task('lw'), 'live')).toBe('0');
  });

  test("a lease of an earlier incarnation of a task id ending leaves the new incarnation's live count alone", async () => {
    await openTask('li');
    const [old, fresh] = [lid('li', 1), lid('li', 2)];
    await createLease('li', old);
    const b = keys.bucketOfTask('li');
    await redis.del(keys.task('li')); // its retention passed while `old` was still live
    // Retention is at least a minute: `old` was issued a minute or more before the new task is created.
    await redis.hset(keys.lease(old), 'issuedAt', Number(await redis.hget(keys.lease(old), 'issuedAt')) - 61_000);
    await openTask('li');
    await createLease('li', fresh);
    await script('task-end').run(
      redis,
      [keys.task('li'), keys.openTasks(b)],
      [keys.base(b), 'completed', 'task_completed', 'task_completed', 60_000, 'li'],
    );
    await script('lease-update').run(redis, [keys.lease(old), keys.liveLeases(b)], [5000, old, keys.base(b), 'revoked', '']);
    expect(await redis.hget(keys.task('li'), 'live')).toBe('1');
    expect(await redis.zscore(keys.tasksEnding(b), 'li')).not.toBeNull();
  });

  test("a lease stamped a little before its task's createdAt (a failed-over Redis, its clock behind) still counts", async () => {
    await openTask('ls');
    const skewed = lid('ls', 1);
    await createLease('ls', skewed);
    const b = keys.bucketOfTask('ls');
    const created = Number(await redis.hget(keys.task('ls'), 'createdAt'));
    await redis.hset(keys.lease(skewed), 'issuedAt', created - 5_000);
    await script('lease-update').run(redis, [keys.lease(skewed), keys.liveLeases(b)], [5000, skewed, keys.base(b), 'revoked', '']);
    expect(await redis.hget(keys.task('ls'), 'live')).toBe('0');
  });

  test('reconcile-tasks: keeps the ended tasks that still have live leases, drops the rest from the work list', async () => {
    // One tree, so one bucket: `rt` stays open, two sub-tasks end, one of them with a live lease.
    await openTask('rt');
    await openTask('rt~stuck', 30_000, 'rt');
    await openTask('rt~done', 30_000, 'rt');
    await createLease('rt~stuck', lid('rt', 1));
    const b = keys.bucketOfTask('rt');
    for (const id of ['rt~stuck', 'rt~done']) {
      await script('task-end').run(
        redis,
        [keys.task(id), keys.openTasks(b)],
        [keys.base(b), 'completed', 'task_completed', 'task_completed', 60_000, id],
      );
    }
    // Only a task that ended with live leases is listed.
    expect(await redis.zrange(keys.tasksEnding(b), '0', '-1')).toEqual(['rt~stuck']);
    // Entries the list should not hold (an open task, a task gone) are dropped when read. An entry written
    // before its id's open task was created (score 1) is an earlier task's under that id: gone, like a gone task.
    await openTask('rt~re', 30_000, 'rt');
    await redis.zadd(keys.tasksEnding(b), 9e15, 'rt', 1, 'rt~gone', 1, 'rt~re');
    const run = (dropGone: '0' | '1') =>
      script('reconcile-tasks').run(redis, [keys.tasksEnding(b)], [keys.base(b), dropGone, 'rt~stuck', 'rt', 'rt~gone', 'rt~re']);
    // A gone task's leases are named only by their own records: it stays listed until the caller walked them.
    expect(await run('0')).toEqual([['rt~stuck'], ['rt~gone', 'rt~re']]);
    expect(await redis.zrange(keys.tasksEnding(b), '0', '-1')).toEqual(['rt~gone', 'rt~re', 'rt~stuck']);
    expect(await run('1')).toEqual([['rt~stuck'], []]);
    expect(await redis.zrange(keys.tasksEnding(b), '0', '-1')).toEqual(['rt~stuck']);
  });

  test("reconcile-tasks: an earlier task's entry under an id opened again and ended is walked, then kept as the new task's", async () => {
    await openTask('rr');
    await createLease('rr', lid('rr', 1));
    const b = keys.bucketOfTask('rr');
    const end = () =>
      script('task-end').run(
        redis,
        [keys.task('rr'), keys.openTasks(b)],
        [keys.base(b), 'completed', 'task_completed', 'task_completed', 60_000, 'rr'],
      );
    // The earlier task's entry, written a minute before the task now under the id was created (retention between).
    const created = Number(await redis.hget(keys.task('rr'), 'createdAt'));
    await redis.zadd(keys.tasksEnding(b), created - 61_000, 'rr');
    await end();
    // Ending the new task keeps the earlier score: only it tells the entry is the earlier task's.
    expect(Number(await redis.zscore(keys.tasksEnding(b), 'rr'))).toBe(created - 61_000);
    const run = (dropGone: '0' | '1') => script('reconcile-tasks').run(redis, [keys.tasksEnding(b)], [keys.base(b), dropGone, 'rr']);
    expect(await run('0')).toEqual([[], ['rr']]);
    // Walked: the entry now stands for the new task's live lease, with its end time.
    expect(await run('1')).toEqual([[], []]);
    expect(await redis.zscore(keys.tasksEnding(b), 'rr')).toBe(await redis.hget(keys.task('rr'), 'endedAt'));
    expect(await run('0')).toEqual([['rr'], []]);
  });

  test('reconcile-subtasks: names the open sub-tasks whose parent ended or is gone, with the reason their parent ended for', async () => {
    // One tree per case (task-open here allows two sub-tasks per tree): `<root>~c` under the case's `<root>`.
    const cases = { 'rsu-ended': 'ended', 'rsu-admin': 'admin', 'rsu-gone': 'gone', 'rsu-later': 'later', 'rsu-open': 'open' };
    const found: Record<string, unknown> = {};
    for (const [root, kind] of Object.entries(cases)) {
      await openTask(root);
      await openTask(`${root}~c`, 30_000, root);
      await openTask(`${root}~c~g`, 20_000, `${root}~c`);
      const k = keys.task(root);
      if (kind === 'ended') await redis.hset(k, 'status', 'completed', 'reason', 'task_completed');
      if (kind === 'admin') await redis.hset(k, 'status', 'completed', 'reason', 'revoked_by_admin', 'adminScope', 'task');
      if (kind === 'gone') await redis.del(k);
      const b = keys.bucketOfTask(root);
      const deadline = async (id: string) => Number(await redis.zscore(keys.openTasks(b), id));
      // The id opened again after its sub-task's deadline: a later task, whatever its status; the sub-task's parent is gone.
      if (kind === 'later') await redis.hset(k, 'createdAt', (await deadline(`${root}~c`)) + 1);
      const page = [`${root}~c`, await deadline(`${root}~c`), `${root}~c~g`, await deadline(`${root}~c~g`)];
      found[kind] = await script('reconcile-subtasks').run(redis, [keys.openTasks(b)], [keys.base(b), ...page]);
    }
    // The grandchild's own parent (`~c`) is open: not named (ending `~c` ends it).
    expect(found).toEqual({
      ended: ['rsu-ended~c', 'task_completed', ''],
      admin: ['rsu-admin~c', 'revoked_by_admin', 'task'],
      gone: ['rsu-gone~c', '', ''],
      later: ['rsu-later~c', '', ''],
      open: [],
    });
  });

  test("sweep: ends overdue tasks and due JWT leases on Redis's clock, hands the rest over once", async () => {
    await openTask('sw', 1);
    await openTask('sw2');
    const [jwt, up] = [lid('sw2', 1), lid('sw2', 2)];
    await createLease('sw2', jwt, 'active', Date.now() - 1);
    await createLease('sw2', up, 'active', Date.now() - 1, 'vault');
    await new Promise((r) => setTimeout(r, 5));
    const b = keys.bucketOfTask('sw2');
    const run = async (bucket: number) =>
      (await script('sweep').run(
        redis,
        [keys.liveLeases(bucket), keys.openTasks(bucket)],
        [keys.base(bucket), 100, 100, 5000, 60_000, 'jwt'],
      )) as [number, string[], string[], string[][], string[]];
    const [now, expired, handoff, , records] = await run(b);
    expect(expired).toEqual([await redis.hget(keys.lease(jwt), 'expiresAt')]);
    expect(handoff).toEqual([up]);
    expect(records.map((m) => parseOutboxMember(m))).toEqual([
      { action: 'lease.expire', actor: 'broker', decision: 'ok', taskId: 'sw2', role: 'role', leaseId: jwt, reason: 'ttl_expired' },
    ]);
    expect(records[0]!.startsWith(`${now} {`)).toBe(true);
    expect(await redis.zscore(keys.auditOutbox(b), records[0]!)).toBe(String(now));
    expect((await run(b))[2]).toEqual([]); // handed over once, not every sweep
    const [, , , groups, taskRecords] = await run(keys.bucketOfTask('sw'));
    expect(groups).toEqual([['sw']]);
    expect(taskRecords.map((m) => parseOutboxMember(m))).toEqual([
      { action: 'task.expire', actor: 'broker', decision: 'ok', taskId: 'sw' },
    ]);
    expect(await redis.zscore(keys.auditOutbox(keys.bucketOfTask('sw')), taskRecords[0]!)).not.toBeNull();
  });

  test('approval-request and approval-swap: one approval per exact request, decided once, consumed once', async () => {
    await openTask('ap');
    const b = keys.bucketOfTask('ap');
    const request = (id: string) =>
      script('approval-request').run(
        redis,
        [
          keys.approvalFor(b, 'd'),
          keys.task('ap'),
          keys.taskApprovals('ap'),
          keys.approvals(b),
          keys.approval(id),
          keys.approvalsOf(b, 'a'),
          keys.approvalsOf(b, 'o'),
        ],
        [keys.base(b), id, '{}', 1, 60_000, 3_600_000],
      );
    const [a1, a2] = [lid('ap', 1), lid('ap', 2)];
    expect(((await request(a1)) as string[])[0]).toBe('created');
    expect(await request(a2)).toEqual(['existing', a1]);
    for (const k of [keys.approvals(b), keys.approvalsOf(b, 'a'), keys.approvalsOf(b, 'o')]) {
      expect(await redis.zrange(k, '0', '-1')).toEqual([a1]);
      expect(await redis.pttl(k)).toBeGreaterThan(60_000); // the task's deadline + retention
    }
    const swap = (from: string, to: string) =>
      script('approval-swap').run(redis, [keys.approval(a1), keys.taskApprovals('ap'), keys.approvalFor(b, 'd')], [from, to, a1]);
    expect(await swap('pending', 'approved')).toBe(1);
    expect(await swap('pending', 'rejected')).toBe(0);
    expect(await swap('approved', 'consumed')).toBe(1);
    expect(await redis.exists(keys.approvalFor(b, 'd'))).toBe(0);
  });

  test('audit-append: compare-and-set on the head, indexing task records', async () => {
    const [head, stream] = [keys.auditHead(3), keys.auditStream(3)];
    expect(
      await script('audit-append').run(redis, [head, stream], ['', '1:h1', keys.base(3), 60_000, ONCE_KEEP_MS, '{"seq":1}', 'tk', '']),
    ).toBeNull();
    expect(
      await script('audit-append').run(redis, [head, stream], ['', '1:h2', keys.base(3), 60_000, ONCE_KEEP_MS, '{"seq":1}', '', '']),
    ).toBe('1:h1');
    expect(await redis.llen(`${keys.base(3)}task-audit:tk`)).toBe(1);
    // A batch of records of several tasks: each task's index lists its records' stream ids in chain order.
    const records = ['tk', 'tq', '', 'tk', 'tk', 'tq'].flatMap((t, i) => [`{"seq":${i + 2}}`, t, '']);
    expect(
      await script('audit-append').run(redis, [head, stream], ['1:h1', '7:h7', keys.base(3), 60_000, ONCE_KEEP_MS, ...records]),
    ).toBeNull();
    const entries = await redis.xrange(stream, '-', '+');
    const idOf = (seq: number) => entries.find(([, f]) => f[1] === `{"seq":${seq}}`)![0];
    expect(await redis.lrange(`${keys.base(3)}task-audit:tk`, 0, -1)).toEqual([idOf(1), idOf(2), idOf(5), idOf(6)]);
    expect(await redis.lrange(`${keys.base(3)}task-audit:tq`, 0, -1)).toEqual([idOf(3), idOf(7)]);
    expect(await redis.pttl(`${keys.base(3)}task-audit:tq`)).toBeGreaterThan(50_000);
    expect(await redis.get(head)).toBe('7:h7');
  });

  test('audit-append: a record naming an outbox member is written only while it is there, and takes it out', async () => {
    const [head, stream, outbox] = [keys.auditHead(5), keys.auditStream(5), keys.auditOutbox(5)];
    const [m1, m2, m3] = ['{"action":"a","n":1}', '{"action":"a","n":2}', '{"action":"a","n":3}'];
    await redis.zadd(outbox, 1000, m1, 1000, m2);
    const append = (expected: string, next: string, recs: [string, string][]) =>
      script('audit-append').run(
        redis,
        [head, stream],
        [expected, next, keys.base(5), 60_000, ONCE_KEEP_MS, ...recs.flatMap(([r, m]) => [r, 'tk', m])],
      );
    // m3 was never put there, and m1 is named twice in one batch: both refused, named, nothing written.
    expect(
      await append('', '4:h4', [
        ['{"seq":1}', m1],
        ['{"seq":2}', m3],
        ['{"seq":3}', ''],
        ['{"seq":4}', m1],
      ]),
    ).toEqual(['', 2, 4]);
    expect(await redis.xlen(stream)).toBe(0);
    expect(await redis.zmscore(outbox, m1, m2, m3)).toEqual(['1000', '1000', null]);
    // Without them: written, and each named member leaves the outbox in the same step.
    expect(
      await append('', '2:h2', [
        ['{"seq":1}', m1],
        ['{"seq":2}', ''],
      ]),
    ).toBeNull();
    expect(await redis.zmscore(outbox, m1, m2)).toEqual([null, '1000']);
    // m1 again (recovery and its caller both appending it): refused, so it lands once; m2 still goes in.
    expect(await append('2:h2', '3:h3', [['{"seq":3}', m1]])).toEqual(['2:h2', 1]);
    expect(await append('2:h2', '3:h3', [['{"seq":3}', m2]])).toBeNull();
    expect(await redis.zmscore(outbox, m1, m2)).toEqual([null, null]);
    expect(await redis.xlen(stream)).toBe(3);
    // A batch resent after a lost answer (head already the new head) is not refused for its members being gone.
    expect(await append('2:h2', '3:h3', [['{"seq":3}', m2]])).toBeNull();
    expect(await redis.xlen(stream)).toBe(3);
  });

  test('audit-append: a record written once keeps its id for as long as the caller says (ONCE_KEEP_MS, one source)', async () => {
    const [head, stream, once] = [keys.auditHead(6), keys.auditStream(6), keys.auditOnce(6)];
    const append = (expected: string, next: string, keepMs: number) =>
      script('audit-append').run(redis, [head, stream], [expected, next, keys.base(6), 60_000, keepMs, '{"seq":1}', '', 'once:x']);
    expect(await append('', '1:h1', 5_000)).toBeNull();
    expect(await redis.smembers(once)).toEqual(['x']);
    const ttl = await redis.pttl(once);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(5_000);
    // Written before: refused, named.
    expect(await append('1:h1', '2:h2', ONCE_KEEP_MS)).toEqual(['1:h1', 1]);
  });

  test("task-open, lease-create, lease-activate, approval-request, approval-swap: a decision's record goes to the outbox in its step, only when decided", async () => {
    const rec = (n: number) => outboxMember({ action: 'task.open', actor: 'x', decision: 'allow', detail: { n } });
    const outbox = (b: number) => redis.zrange(keys.auditOutbox(b), '0', '-1', 'WITHSCORES');
    // task-open: at createdAt; the same id again is `exists` and adds nothing. (Task ids of bucket-unique tests.)
    const tb = keys.bucketOfTask('ox');
    const open = (m: string) =>
      script('task-open').run(
        redis,
        [keys.task('ox'), keys.openTasks(tb), keys.tasksByTime(tb), keys.tasksByAgent(tb, 'a'), keys.tasksByOpener(tb, 'o')],
        [JSON.stringify({ taskId: 'ox' }), 60_000, 'ox', 2, 'a', 'acme', 5000, 3_600_000, '', m],
      ) as Promise<[string, number]>;
    const [m1, m2, m3, m4, m5, m6, m7, m8] = [1, 2, 3, 4, 5, 6, 7, 8].map(rec) as string[] as [
      string,
      string,
      string,
      string,
      string,
      string,
      string,
      string,
    ];
    expect(new Set([m1, m2, m3]).size).toBe(3); // one tag each, though the records differ only in `n`
    expect(await outbox(tb)).toEqual([]);
    const opened = await open(m1);
    expect(opened[0]).toBe('created');
    expect((await open(m2))[0]).toBe('exists');
    expect(await outbox(tb)).toEqual([m1, String(opened[1])]);
    // lease-create: at the lease's issuedAt when recorded; a refusal (maxLeases 2) adds nothing.
    const create = (id: string, m: string) =>
      script('lease-create').run(
        redis,
        [keys.task('ox'), keys.lease(id), keys.taskLeases('ox'), keys.liveLeases(tb), keys.taskLeasesLegacy('ox'), keys.auditOutbox(tb)],
        [JSON.stringify({ leaseId: id }), 'active', Date.now() + 60_000, 0, id, '{}', 2, 'ox', 'jwt', 'role', 0, '', m],
      ) as Promise<[string, number?]>;
    const made = await create(lid('ox', 1), m3);
    expect(made).toEqual(['ok', expect.any(Number)]);
    expect(await redis.zscore(keys.auditOutbox(tb), m3)).toBe(String(made[1]));
    await create(lid('ox', 2), '');
    expect(await create(lid('ox', 3), m4)).toEqual(['limit']);
    expect(await redis.zscore(keys.auditOutbox(tb), m4)).toBeNull();
    // lease-activate: only when the credential is the caller's (`ok`); handed to revocation, nothing.
    await script('lease-update').run(
      redis,
      [keys.lease(lid('ox', 2)), keys.liveLeases(tb)],
      [5000, lid('ox', 2), keys.base(tb), 'revoked', 'x'],
    );
    const issuing = lid('ox', 4);
    expect((await create(issuing, ''))[0]).toBe('ok');
    await redis.hset(keys.lease(issuing), 'status', 'issuing');
    const activate = (m: string) =>
      script('lease-activate').run(
        redis,
        [keys.lease(issuing), keys.task('ox'), keys.liveLeases(tb), keys.leasesRevoking(tb), keys.auditOutbox(tb)],
        ['{}', Date.now() + 1000, issuing, m],
      ) as Promise<[string, number?]>;
    const activated = await activate(m5);
    expect(activated).toEqual(['ok', expect.any(Number)]);
    expect(await redis.zscore(keys.auditOutbox(tb), m5)).toBe(String(activated[1]));
    expect((await activate(m6))[0]).toBe('gone');
    expect(await redis.zscore(keys.auditOutbox(tb), m6)).toBeNull();
    // lease-request-end withdraws the issue record of a credential not handed out after all.
    await script('lease-request-end').run(
      redis,
      [keys.lease(issuing), keys.leasesRevoking(tb), keys.auditOutbox(tb)],
      ['revoked_by_caller', issuing, m5],
    );
    expect(await redis.zscore(keys.auditOutbox(tb), m5)).toBeNull();
    expect(await redis.hget(keys.lease(issuing), 'status')).toBe('revoking');
    // approval-request: when it creates one; approval-swap: when an approver decides it, {1, now}.
    const request = (id: string, m: string) =>
      script('approval-request').run(
        redis,
        [
          keys.approvalFor(tb, 'ox'),
          keys.task('ox'),
          keys.taskApprovals('ox'),
          keys.approvals(tb),
          keys.approval(id),
          keys.approvalsOf(tb, 'a'),
          keys.approvalsOf(tb, 'o'),
        ],
        [keys.base(tb), id, '{}', 0, 60_000, 3_600_000, '', m],
      ) as Promise<[string, string, number?]>;
    const a1 = lid('ox', 7);
    const asked = await request(a1, m6);
    expect(asked).toEqual(['created', a1, expect.any(Number)]);
    expect(await redis.zscore(keys.auditOutbox(tb), m6)).toBe(String(asked[2]));
    expect(await request(lid('ox', 8), m7)).toEqual(['existing', a1]);
    expect(await redis.zscore(keys.auditOutbox(tb), m7)).toBeNull();
    const swap = (m: string) =>
      script('approval-swap').run(
        redis,
        [keys.approval(a1), keys.taskApprovals('ox'), keys.approvalFor(tb, 'ox'), keys.auditOutbox(tb)],
        ['pending', 'approved', a1, m, '', 'decidedBy', 'z'],
      );
    const decided = (await swap(m7)) as [number, number];
    expect(decided).toEqual([1, expect.any(Number)]);
    expect(await redis.zscore(keys.auditOutbox(tb), m7)).toBe(String(decided[1]));
    expect(await redis.hmget(keys.approval(a1), 'status', 'decidedBy')).toEqual(['approved', 'z']);
    expect(await swap(m8)).toBe(0);
    expect(await redis.zscore(keys.auditOutbox(tb), m8)).toBeNull();
  });

  test('audit-outbox-park: moves a poison member aside and puts the record of that in the outbox, in one step', async () => {
    const [outbox, parked] = [keys.auditOutbox(6), keys.auditOutboxParked(6)];
    const notes = [1, 2, 3, 4].map((n) =>
      outboxMember({ action: 'audit.outbox_poison', actor: 'broker', decision: 'error', detail: { n } }),
    );
    const note = (n: number) => notes[n - 1]!;
    await redis.zadd(outbox, 1, 'garbage-1', 2, 'garbage-2', 3, 'garbage-3');
    const park = (m: string, n: number) => script('audit-outbox-park').run(redis, [outbox, parked], [m, note(n), 2]);
    const at = (await park('garbage-1', 1)) as number;
    expect(at).toBeGreaterThan(Date.now() - 60_000);
    expect(await redis.zscore(outbox, 'garbage-1')).toBeNull();
    expect(await redis.zscore(parked, 'garbage-1')).toBe(String(at));
    expect(await redis.zscore(outbox, note(1))).toBe(String(at));
    // Not there (another process parked it): nothing.
    expect(await park('garbage-1', 2)).toBeNull();
    expect(await redis.zscore(outbox, note(2))).toBeNull();
    // The parked set keeps the newest 2.
    await park('garbage-2', 3);
    await park('garbage-3', 4);
    expect(await redis.zrange(parked, '0', '-1')).toEqual(['garbage-2', 'garbage-3']);
  });

  test('audit-mark: moves the export marker only from the value read', async () => {
    const k = keys.auditExported('ops');
    expect(await script('audit-mark').run(redis, [k], ['', '5:x'])).toBe(1);
    expect(await script('audit-mark').run(redis, [k], ['', '6:y'])).toBe(0);
  });

  test("signing-key-first: one key, once, created on Redis's clock and active from the given time before", async () => {
    const k = keys.signingKeys();
    expect(await script('signing-key-first').run(redis, [k], ['k1', JSON.stringify({ kid: 'k1' }), 1000])).toBe(1);
    expect(await script('signing-key-first').run(redis, [k], ['k2', JSON.stringify({ kid: 'k2' }), 1000])).toBe(0);
    const stored = JSON.parse((await redis.hget(k, 'k1'))!);
    const [s] = await redis.time();
    expect(Math.abs(stored.createdAt - Number(s) * 1000)).toBeLessThan(5000);
    expect(stored.activateAt).toBe(stored.createdAt - 1000);
  });

  test('signing-key-rotate: retireAt only moves earlier; gone keys forgotten; a resend changes nothing', async () => {
    const k = keys.signingKeys();
    await redis.del(k);
    const key = (kid: string, extra: Record<string, number> = {}) => JSON.stringify({ kid, activateAt: 1, ...extra });
    await redis.hset(k, 'open', key('open'), 'soon', key('soon', { retireAt: 500 }), 'gone', key('gone', { retireAt: 90 }));
    // No TTL, no grace: the older keys retire at the new key's activation.
    const rotate = (kid: string, retireAt: number) => script('signing-key-rotate').run(redis, [k], [kid, key(kid), retireAt, 100, 0, 0]);
    expect(((await rotate('new', 1000)) as string[]).sort()).toEqual(['open']);
    const stored = async (kid: string) => JSON.parse((await redis.hget(k, kid))!) as { retireAt?: number };
    expect((await stored('open')).retireAt).toBe(1000);
    expect((await stored('soon')).retireAt).toBe(500);
    expect(await redis.hexists(k, 'gone')).toBe(0);
    expect((await stored('new')).retireAt).toBeUndefined();
    // Sent again (its answer lost): the new key keeps what later rotations gave it.
    await script('signing-key-rotate').run(redis, [k], ['newer', key('newer'), 200, 100, 0, 0]);
    expect(await rotate('new', 1000)).toEqual([]);
    expect((await stored('new')).retireAt).toBe(200);
    expect((await stored('open')).retireAt).toBe(200);
    expect((await stored('newer')).retireAt).toBeUndefined();
  });

  test('lock-acquire: takes a free lock, waits for a held one, takes over a key no broker could have set', async () => {
    const k = keys.lock('acquire');
    expect(await script('lock-acquire').run(redis, [k], ['a', 30_000])).toEqual([1]);
    expect(await redis.get(k)).toBe('a');
    // Held within the TTL a broker sets: someone else's turn.
    const [busy, left] = (await script('lock-acquire').run(redis, [k], ['b', 30_000])) as number[];
    expect([busy, left! > 0 && left! <= 30_000]).toEqual([0, true]);
    expect(await redis.get(k)).toBe('a');
    // No expiry: taken over, with our TTL.
    await redis.set(k, 'forever');
    expect(await script('lock-acquire').run(redis, [k], ['b', 30_000])).toEqual([2, -1]);
    expect(await redis.get(k)).toBe('b');
    expect(await redis.pttl(k)).toBeGreaterThan(29_000);
    // A longer TTL than any holder sets: taken over.
    await redis.set(k, 'an-hour', 'PX', 3_600_000);
    const [over, was] = (await script('lock-acquire').run(redis, [k], ['c', 30_000])) as number[];
    expect([over, was! > 3_000_000]).toEqual([2, true]);
    // Not even a string (SET NX refuses it, it never expires): taken over.
    await redis.del(k);
    await redis.rpush(k, 'x');
    expect(await script('lock-acquire').run(redis, [k], ['d', 30_000])).toEqual([2, -1]);
    expect(await redis.get(k)).toBe('d');
  });

  test('lock-acquire with a shorter TTL of its own: sets that, and still waits for a lock as long as the longest', async () => {
    const k = keys.lock('acquire-short');
    expect(await script('lock-acquire').run(redis, [k], ['a', 60_000, 10_000])).toEqual([1]);
    expect(await redis.pttl(k)).toBeLessThanOrEqual(10_000);
    // A previous release's lock of 60 s is a broker's: waited for, not taken over.
    await redis.set(k, 'old-release', 'PX', 60_000);
    const [busy] = (await script('lock-acquire').run(redis, [k], ['b', 60_000, 10_000])) as number[];
    expect(busy).toBe(0);
    expect(await redis.get(k)).toBe('old-release');
    // Longer than the longest: taken over, with the holder's own TTL.
    await redis.set(k, 'an-hour', 'PX', 3_600_000);
    expect(((await script('lock-acquire').run(redis, [k], ['c', 60_000, 10_000])) as number[])[0]).toBe(2);
    expect(await redis.pttl(k)).toBeLessThanOrEqual(10_000);
  });

  test("redis-probe: refuses nothing where everything is allowed, leaves no key, and runs every command the broker's and BullMQ's scripts call", async () => {
    const probeKeys = ['string', 'hash', 'zset', 'set', 'stream', 'list', 'moved'].map((k) => keys.probe(k));
    expect(await script('redis-probe').run(redis, probeKeys, [])).toEqual([]);
    expect(await redis.exists(...probeKeys)).toBe(0);
    // A script calling a command the probe does not run would pass the startup check on an ACL without it.
    const read = (dir: URL) =>
      readdirSync(dir)
        .filter((f) => f.endsWith('.lua'))
        .map((f) => readFileSync(new URL(f, dir), 'utf8'));
    const lua = new URL('../../src/redis/lua/', import.meta.url);
    const bull = new URL('../../node_modules/bullmq/dist/cjs/commands/', import.meta.url);
    const texts = [...read(lua), ...read(new URL('lib/', lua)), ...read(bull), ...read(new URL('includes/', bull))];
    const called = new Set(
      texts.flatMap((t) => [...t.matchAll(/\b(?:redis\.p?call|rcall)\(\s*['"](\w+)['"]/g)].map((m) => m[1]!.toUpperCase())),
    );
    expect(called.size).toBeGreaterThan(40);
    const probe = readFileSync(new URL('redis-probe.lua', lua), 'utf8');
    const probed = new Set([...probe.matchAll(/\{ '([A-Z]+)'/g)].map((m) => m[1]!));
    expect([...called].filter((c) => !probed.has(c)).sort()).toEqual([]);
  });

  test('lock-release and lock-extend: only with our token', async () => {
    const k = keys.lock('x');
    await redis.set(k, 'mine', 'PX', 10_000);
    expect(await script('lock-extend').run(redis, [k], ['theirs', 60_000])).toBe(0);
    expect(await script('lock-extend').run(redis, [k], ['mine', 60_000])).toBe(1);
    expect(await script('lock-release').run(redis, [k], ['theirs'])).toBe(0);
    expect(await script('lock-release').run(redis, [k], ['mine'])).toBe(1);
  });

  test('lock-fenced-write: only while the lock is ours; a write resent after the lock lapsed still counts', async () => {
    const [lock, target] = [keys.lock('fenced'), keys.secrets('fenced')];
    await redis.set(lock, 'mine', 'PX', 10_000);
    expect(await script('lock-fenced-write').run(redis, [lock, target], ['theirs', 'set', 'v0'])).toBe(0);
    expect(await redis.get(target)).toBeNull();
    expect(await script('lock-fenced-write').run(redis, [lock, target], ['mine', 'set', 'v1'])).toBe(1);
    // The lock lapses; the client sends the same write again (its first answer was lost): written, it says so.
    // Before: 0, and the rotation deleted the key whose sealed copy Redis held.
    await redis.del(lock);
    expect(await script('lock-fenced-write').run(redis, [lock, target], ['mine', 'set', 'v1'])).toBe(1);
    expect(await script('lock-fenced-write').run(redis, [lock, target], ['mine', 'set', 'v2'])).toBe(0);
    expect(await script('lock-fenced-write').run(redis, [lock, target], ['mine', 'del'])).toBe(0);
    expect(await redis.get(target)).toBe('v1');
    await redis.set(lock, 'mine', 'PX', 10_000);
    expect(await script('lock-fenced-write').run(redis, [lock, target], ['mine', 'del'])).toBe(1);
    expect(await redis.get(target)).toBeNull();
    // With a time to live (an AWS role's deny ledger): kept that long; without one, for good.
    expect(await script('lock-fenced-write').run(redis, [lock, target], ['mine', 'set', 'v3', 5000])).toBe(1);
    expect(await redis.pttl(target)).toBeGreaterThan(4000);
    expect(await script('lock-fenced-write').run(redis, [lock, target], ['mine', 'set', 'v4'])).toBe(1);
    expect(await redis.pttl(target)).toBe(-1);
  });

  test('rate-limit-charge / rate-limit-refund: a charge names its window by its end; a refund gives back there only', async () => {
    const k = `${prefix}:rl:w`;
    const charge = script('rate-limit-charge');
    const refund = script('rate-limit-refund');
    const [c1, ttl, end, fit1] = (await charge.run(redis, [k], [3, 1, 10])) as number[];
    expect([c1, fit1]).toEqual([3, 3]);
    expect(ttl).toBeGreaterThan(900);
    const [c2, , end2] = (await charge.run(redis, [k], [4, 1, 10])) as number[];
    expect(c2).toBe(7);
    expect(Math.abs(end2! - end!)).toBeLessThanOrEqual(2); // the same window, named alike
    // Only what fits is counted (review 3: a refused point stayed counted when its refund never came).
    const [c3, , , fit3] = (await charge.run(redis, [k], [5, 1, 10])) as number[];
    expect([c3, fit3]).toEqual([10, 3]);
    const [c4, , , fit4] = (await charge.run(redis, [k], [2, 1, 10])) as number[];
    expect([c4, fit4]).toEqual([10, 0]);
    // Given back in the named window; never below zero.
    expect(await refund.run(redis, [k], [5, end!])).toBe(5);
    expect(await refund.run(redis, [k], [9, end!])).toBe(0);
    // Another window's name (the next one ends at least a second later): nothing given back.
    await redis.set(k, 4, 'PX', 1000);
    const [, , next] = (await charge.run(redis, [k], [1, 1, 10])) as number[];
    expect(await refund.run(redis, [k], [1, next! - 1000])).toBeNull();
    expect(await redis.get(k)).toBe('5');
    // A count the previous release left past the budget (it counted every point asked for) admits nothing, as it is.
    await redis.set(k, 14, 'PX', 1000);
    expect(((await charge.run(redis, [k], [1, 1, 10])) as number[])[3]).toBe(0);
    expect(await redis.get(k)).toBe('14');
    // Nor to a count without a window: a charge gives such a key one.
    await redis.set(k, 2);
    expect(await refund.run(redis, [k], [1, next!])).toBeNull();
    const [, fixed] = (await charge.run(redis, [k], [1, 2, 10])) as number[];
    expect(fixed).toBe(2000);
    expect(await redis.pttl(k)).toBeGreaterThan(1000);
  });
});

test("the full walk's earlier-task margin is common.lua's", () => {
  // The sweeper's full walk applies the rule in TypeScript; the reconcile and lease scripts in Lua.
  const lua = readFileSync(new URL('../../src/redis/lua/lib/common.lua', import.meta.url), 'utf8');
  const m = /^local EARLIER_TASK_MARGIN_MS = (\d+)$/m.exec(lua);
  expect(Number(m?.[1])).toBe(EARLIER_TASK_MARGIN_MS);
});
