import { script } from '../../src/redis/scripts.ts';
import { MAX_PAUSE_MS } from '../../src/ops/pace.ts';
import { AGENT, ORCH, auditRecords, call, openAgentTask, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';

/**
 * The reconciler (every `revocation.reconcileIntervalMs`) finishes what a lost
 * job left undone: live leases of ended tasks, revocations left `revoking`.
 * It reads two work lists that the scripts ending a task or asking for a
 * revocation write in the same step; a full walk over every live lease (at
 * start, then every `revocation.fullReconcileIntervalMs`) is the safety net.
 * In a walk, Redis picks the leases that need work (reconcile-page.lua) and
 * only those are read into the process.
 */
let t: TestBroker;

beforeAll(async () => {
  t = await startTestBroker('reconcile', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0, introspect: { perSecond: 0 } } } },
  });
  // The startup full walk runs in the background: let it end, or a test run alone (-t) could see it do that
  // test's work and pass without testing the pass it names.
  await t.broker.sweeper!.reconcile();
});
afterAll(async () => {
  await t?.close();
});

const openTask = (taskId: string) => openAgentTask(t, taskId, [{ role: 'demo-api' }], 'reconcile');

async function issue(taskId: string, n: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'demo-api', ttlSeconds: 300 });
    expect(r.status).toBe(201);
    ids.push(r.body.leaseId);
  }
  return ids;
}

const statusOf = (id: string) => t.broker.deps.redis.hget(t.broker.deps.keys.lease(id), 'status');

/** Runs the reconciler; what it returned and how many lease records it read into the process. */
async function reconcileCountingReads(): Promise<{ requeued: number; read: number }> {
  const leases = t.broker.deps.leases;
  const original = leases.getMany.bind(leases);
  let read = 0;
  leases.getMany = async (ids) => {
    read += ids.length;
    return original(ids);
  };
  try {
    return { requeued: await t.broker.sweeper!.reconcile(), read };
  } finally {
    leases.getMany = original;
  }
}

const pageScript = script('reconcile-page');

/** Runs `pass` counting the reconcile-page scripts it sends (the scripts that look at live leases). */
async function countingPageScripts<T>(pass: () => Promise<T>): Promise<{ result: T; pageScripts: number }> {
  const client = t.broker.deps.redis as unknown as { sendCommand(c: { name: string; args: unknown[] }): unknown };
  const send = client.sendCommand;
  let pageScripts = 0;
  client.sendCommand = function (this: unknown, command) {
    if (command.name === 'evalsha' ? command.args[0] === pageScript.sha : command.name === 'eval' && command.args[0] === pageScript.lua)
      pageScripts++;
    return send.call(this, command);
  };
  try {
    return { result: await pass(), pageScripts };
  } finally {
    client.sendCommand = send;
  }
}

const workLists = (taskId: string) => {
  const { keys } = t.broker.deps;
  const bucket = keys.bucketOfTask(taskId);
  return { ending: keys.tasksEnding(bucket), revoking: keys.leasesRevoking(bucket) };
};

test('a pass over healthy leases of open tasks looks at none of them; a full walk reads none of their records', async () => {
  await openTask('t-healthy');
  await issue('t-healthy', 60);
  // Before the work lists, every pass walked every live lease: at 2,000 issuances/s with 600-s
  // credentials, 1.2 million leases every 30 s, and the open-loop bench's p99 rose with each pass.
  expect(await countingPageScripts(reconcileCountingReads)).toEqual({ result: { requeued: 0, read: 0 }, pageScripts: 0 });
  const full = await countingPageScripts(() => t.broker.sweeper!.reconcile({ full: true }));
  expect(full).toEqual({ result: 0, pageScripts: expect.any(Number) });
  expect(full.pageScripts).toBeGreaterThan(0);
});

test('a task whose leases-ending job was lost (a crash after the task ended): its live leases are ended', async () => {
  await openTask('t-lost');
  await openTask('t-kept');
  const lost = await issue('t-lost', 3);
  const kept = await issue('t-kept', 2);
  // What completing a task leaves when the process dies between its script and queueing the job.
  expect((await t.broker.deps.tasks.end('t-lost', 'completed', 'task_completed')).kind).toBe('ended');
  const { redis } = t.broker.deps;
  expect(await redis.zscore(workLists('t-lost').ending, 't-lost')).not.toBeNull();
  expect(await reconcileCountingReads()).toEqual({ requeued: 3, read: 3 });
  await waitFor(async () => (await Promise.all(lost.map(statusOf))).every((s) => s === 'revoked'));
  expect(await Promise.all(kept.map(statusOf))).toEqual(['active', 'active']);
  // Its last lease ended: the task leaves the work list (the next pass does not look at it again).
  expect(await redis.zscore(workLists('t-lost').ending, 't-lost')).toBeNull();
  expect(await reconcileCountingReads()).toEqual({ requeued: 0, read: 0 });
});

test('a task completed normally leaves nothing on the work lists', async () => {
  await openTask('t-normal');
  const ids = await issue('t-normal', 3);
  expect((await call(t.url, 'POST', '/v1/tasks/t-normal/complete', t.as(ORCH))).status).toBe(202);
  await waitFor(async () => (await Promise.all(ids.map(statusOf))).every((s) => s === 'revoked'));
  expect(await t.broker.deps.redis.zscore(workLists('t-normal').ending, 't-normal')).toBeNull();
});

test('a revocation left `revoking` by a lost job is handed to the worker again', async () => {
  await openTask('t-stuck');
  const [stuck, ok] = await issue('t-stuck', 2);
  // What DELETE leaves when the process dies between recording the intent and queueing the job.
  expect((await t.broker.deps.leases.requestEnd(stuck!, 'revoked_by_caller')).kind).toBe('revoking');
  const { redis } = t.broker.deps;
  expect(await redis.zscore(workLists('t-stuck').revoking, stuck!)).not.toBeNull();
  expect(await t.broker.sweeper!.reconcile()).toBe(1);
  await waitFor(async () => (await statusOf(stuck!)) === 'revoked');
  expect(await statusOf(ok!)).toBe('active');
  expect(await redis.zscore(workLists('t-stuck').revoking, stuck!)).toBeNull();
});

test('state the work lists do not name (written before them) is found by the full walk, which runs first on start', async () => {
  await openTask('t-old');
  const old = await issue('t-old', 2);
  const [stuck] = await issue('t-old', 1);
  await t.broker.sweeper!.stop();
  // Written as an earlier version would have: the task ended and a lease `revoking`, with no work-list entry.
  const { redis, keys } = t.broker.deps;
  await redis.hset(keys.task('t-old'), 'status', 'completed', 'reason', 'task_completed');
  await redis.zrem(keys.openTasks(keys.bucketOfTask('t-old')), 't-old');
  await redis.hset(keys.lease(stuck!), 'status', 'revoking', 'reason', 'revoked_by_caller');
  expect(await t.broker.sweeper!.reconcile()).toBe(0);
  // A (re)started broker's first pass is a full walk.
  t.broker.sweeper!.start();
  await waitFor(async () => (await Promise.all([...old, stuck!].map(statusOf))).every((s) => s === 'revoked'));
});

/**
 * Moves a lease's `issuedAt` (and, given, a task's tasks-ending entry) back by a minute: what a task's
 * retention (at least 60 s) puts between an earlier task's leases and a new task of the same id.
 */
async function backdate(leaseId: string, endingOf?: string): Promise<void> {
  const { redis, keys } = t.broker.deps;
  const at = Number(await redis.hget(keys.lease(leaseId), 'issuedAt'));
  await redis.hset(keys.lease(leaseId), 'issuedAt', at - 61_000);
  if (endingOf) {
    const score = Number(await redis.zscore(workLists(endingOf).ending, endingOf));
    await redis.zadd(workLists(endingOf).ending, 'XX', score - 61_000, endingOf);
  }
}

/** What a task's retention leaves once it has passed: its hash and sets are gone (they expire together). */
async function expireTaskRecords(taskId: string): Promise<void> {
  const { redis, keys } = t.broker.deps;
  await redis.del(keys.task(taskId), keys.taskLeases(taskId), keys.taskChildren(taskId), keys.taskApprovals(taskId));
}

/**
 * An earlier task under `taskId`: it ended with one live lease and its end-of-task job was lost, then its
 * retention passed (records gone, a minute between its lease and anything opened next). Its lease id.
 */
async function purgedTaskWithLiveLease(taskId: string): Promise<string> {
  await openTask(taskId);
  const [old] = await issue(taskId, 1);
  expect((await t.broker.deps.tasks.end(taskId, 'completed', 'task_completed')).kind).toBe('ended');
  await expireTaskRecords(taskId);
  await backdate(old!, taskId);
  return old!;
}

test('a task whose records expired (retention) before a pass saw it: its live leases are still ended', async () => {
  // retentionSeconds may be 60 while reconcileIntervalMs may be up to an hour (and a paced pass can take long):
  // the task's hash can leave Redis while its entry on tasks-ending still names live leases.
  await openTask('t-retained');
  const ids = await issue('t-retained', 2);
  expect((await t.broker.deps.tasks.end('t-retained', 'completed', 'task_completed')).kind).toBe('ended'); // job lost
  await expireTaskRecords('t-retained');
  expect(await t.broker.deps.redis.zscore(workLists('t-retained').ending, 't-retained')).not.toBeNull();
  await t.broker.sweeper!.reconcile();
  // The full walk ends leases whose task is gone; the indexed pass must not just drop the entry.
  await waitFor(async () => (await Promise.all(ids.map(statusOf))).every((s) => s === 'revoked'), 3000);
  // Once its bucket was walked, the entry goes: the next pass does not walk the bucket again.
  expect(await t.broker.deps.redis.zscore(workLists('t-retained').ending, 't-retained')).toBeNull();
});

test('a lease of an earlier incarnation of a task id ending does not take the new incarnation off tasks-ending', async () => {
  const { redis } = t.broker.deps;
  // Incarnation 1: a revocation in progress (an upstream refusing for longer than the task's retention).
  await openTask('t-again');
  const [old] = await issue('t-again', 1);
  expect((await t.broker.deps.leases.requestEnd(old!, 'revoked_by_caller')).kind).toBe('revoking');
  expect((await t.broker.deps.tasks.end('t-again', 'completed', 'task_completed')).kind).toBe('ended');
  await expireTaskRecords('t-again');
  await backdate(old!);
  // Incarnation 2 under the same id: one live lease, then the task ends and its job is lost.
  await openTask('t-again');
  const [fresh] = await issue('t-again', 1);
  expect((await t.broker.deps.tasks.end('t-again', 'completed', 'task_completed')).kind).toBe('ended');
  expect(await redis.zscore(workLists('t-again').ending, 't-again')).not.toBeNull();
  // The old lease's revocation finally succeeds.
  await t.broker.deps.leases.end(old!, 'revoked', { reason: 'revoked_by_caller' });
  await t.broker.sweeper!.reconcile();
  await waitFor(async () => (await statusOf(fresh!)) === 'revoked', 3000);
});

test('a live lease of an earlier task under a reopened id is ended by the full walk; the new task keeps its own', async () => {
  const { redis, keys } = t.broker.deps;
  // Written as an earlier version would have: the task ended with its job lost and no work-list entry;
  // then its retention passed and the id was opened again.
  const old = await purgedTaskWithLiveLease('t-reborn');
  await redis.zrem(workLists('t-reborn').ending, 't-reborn');
  await openTask('t-reborn');
  const [fresh] = await issue('t-reborn', 1);
  await t.broker.sweeper!.reconcile({ full: true });
  await waitFor(async () => (await statusOf(old)) === 'revoked', 3000);
  expect(await statusOf(fresh!)).toBe('active');
  expect(await redis.hget(keys.task('t-reborn'), 'live')).toBe('1');
});

test("an entry on tasks-ending whose id is open again as a newer task: the indexed pass still ends the earlier task's leases", async () => {
  const { redis } = t.broker.deps;
  // A purged task: it ended and its job was lost; its retention passed before a pass saw the entry; the id was opened again.
  const old = await purgedTaskWithLiveLease('t-reborn2');
  await openTask('t-reborn2');
  const [fresh] = await issue('t-reborn2', 1);
  expect(await redis.zscore(workLists('t-reborn2').ending, 't-reborn2')).not.toBeNull();
  await t.broker.sweeper!.reconcile();
  await waitFor(async () => (await statusOf(old)) === 'revoked', 3000);
  expect(await statusOf(fresh!)).toBe('active');
  // The earlier task's entry is done with; the open task is not on the list.
  expect(await redis.zscore(workLists('t-reborn2').ending, 't-reborn2')).toBeNull();
});

test("an earlier task's entry on tasks-ending whose id was opened again and ended with no lease: the indexed pass ends the earlier task's leases", async () => {
  const { redis } = t.broker.deps;
  await t.broker.sweeper!.reconcile(); // no pass under way (the full walk at start would find the lease)
  // A purged task: it ended and its job was lost; its retention passed before a pass saw the entry.
  const old = await purgedTaskWithLiveLease('t-reborn3');
  // The id is opened again as a short task that ends before the next pass, holding no lease (`live` 0).
  await openTask('t-reborn3');
  expect((await t.broker.deps.tasks.end('t-reborn3', 'completed', 'task_completed')).kind).toBe('ended');
  expect(await redis.zscore(workLists('t-reborn3').ending, 't-reborn3')).not.toBeNull();
  await t.broker.sweeper!.reconcile();
  await waitFor(async () => (await statusOf(old)) === 'revoked', 3000);
  expect(await redis.zscore(workLists('t-reborn3').ending, 't-reborn3')).toBeNull();
});

test("an earlier task's entry on tasks-ending whose id was opened again and ended with live leases (job lost): the indexed pass ends both tasks' leases", async () => {
  const { redis } = t.broker.deps;
  await t.broker.sweeper!.reconcile(); // no pass under way (the full walk at start would find the lease)
  const old = await purgedTaskWithLiveLease('t-reborn4');
  // The new task ends too, its job lost as well: ending it must not re-stamp the earlier task's entry as its own.
  await openTask('t-reborn4');
  const [fresh] = await issue('t-reborn4', 1);
  expect((await t.broker.deps.tasks.end('t-reborn4', 'completed', 'task_completed')).kind).toBe('ended');
  await t.broker.sweeper!.reconcile();
  await waitFor(async () => (await Promise.all([old, fresh!].map(statusOf))).every((s) => s === 'revoked'), 3000);
  expect(await redis.zscore(workLists('t-reborn4').ending, 't-reborn4')).toBeNull();
});

test("a lease stamped a little before its open task's createdAt (a failed-over Redis, its clock behind) is kept", async () => {
  const { redis, keys } = t.broker.deps;
  await openTask('t-skew');
  const [lease] = await issue('t-skew', 1);
  const created = Number(await redis.hget(keys.task('t-skew'), 'createdAt'));
  await redis.hset(keys.lease(lease!), 'issuedAt', created - 5_000);
  await t.broker.sweeper!.reconcile({ full: true });
  await t.broker.sweeper!.reconcile();
  expect(await statusOf(lease!)).toBe('active');
});

test('a full walk that fails (say, a failover as the broker starts) is walked again at the next pass, not an hour later', async () => {
  const sweeper = t.broker.sweeper! as unknown as { timerPass(): Promise<void>; lastFull: number };
  await t.broker.sweeper!.reconcile(); // no pass under way
  const client = t.broker.deps.redis as unknown as { zscan: (...a: unknown[]) => Promise<unknown> };
  const zscan = client.zscan;
  let liveScans = 0;
  let fail = true;
  client.zscan = function (this: unknown, key: unknown, ...rest: unknown[]) {
    if (typeof key === 'string' && key.endsWith('leases-live')) {
      liveScans++;
      if (fail) {
        fail = false;
        return Promise.reject(new Error("READONLY You can't write against a read only replica."));
      }
    }
    return zscan.call(this, key, ...rest);
  };
  try {
    sweeper.lastFull = Number.NEGATIVE_INFINITY; // as start() leaves it: the first timer pass is a full walk
    await sweeper.timerPass(); // fails at its first bucket: no bucket was walked
    expect(liveScans).toBe(1);
    await sweeper.timerPass();
    expect(liveScans).toBeGreaterThan(1);
  } finally {
    client.zscan = zscan;
  }
});

interface Timing {
  start: number;
  end: number;
}

/**
 * Runs a reconcile pass over 4,000 live-index entries of one bucket (8 pages of 500; ids without records, which
 * the page script skips) and times each page's script. `onPage` runs as each page is sent.
 */
async function reconcileTimingPages(onPage: (n: number) => void = () => {}): Promise<{ pages: Timing[]; reads: Timing[] }> {
  const { redis, keys } = t.broker.deps;
  const bucket = keys.bucketOfTask('t-paced');
  const members: (string | number)[] = [];
  for (let i = 0; i < 4000; i++)
    members.push(Date.now() + 3_600_000, `${bucket.toString(16).padStart(4, '0')}${i.toString(16).padStart(28, '0')}`);
  await redis.zadd(keys.liveLeases(bucket), ...members);
  const pages: Timing[] = [];
  const reads: Timing[] = []; // the ZSCANs that fetch each page's ids
  const page = pageScript;
  const client = redis as unknown as { sendCommand(c: { name: string; args: unknown[]; promise: Promise<unknown> }): unknown };
  const send = client.sendCommand;
  const time = (into: Timing[], done: Promise<unknown>) => {
    const timing = { start: performance.now(), end: 0 };
    into.push(timing);
    void done.finally(() => {
      timing.end = performance.now();
    });
  };
  client.sendCommand = function (this: unknown, command) {
    const out = send.call(this, command);
    if (command.name === 'zscan' && command.args[0] === keys.liveLeases(bucket)) time(reads, command.promise);
    // The page script only (the sweeper's script, every 20 ms in tests, names the same live index).
    if (command.name === 'evalsha' ? command.args[0] === page.sha : command.name === 'eval' && command.args[0] === page.lua) {
      time(pages, command.promise);
      onPage(pages.length);
    }
    return out;
  };
  try {
    await t.broker.sweeper!.reconcile({ full: true });
  } finally {
    client.sendCommand = send;
    await redis.zrem(keys.liveLeases(bucket), ...members.filter((m) => typeof m === 'string'));
  }
  return { pages, reads };
}

test('a sub-task left open under a parent that ended (an ending cut short): the pass ends it, its subtree and leases', async () => {
  const { redis, keys } = t.broker.deps;
  const HELPER = '/agent/helper';
  const GRAND = '/agent/grand';
  /** A task, a sub-task for HELPER (a grandchild for GRAND under it when `deep`), a live lease in each sub-task. */
  const tree = async (name: string, deep: boolean) => {
    await openTask(name);
    const sub = async (parentTaskId: string, as: string, agent: string, ttlSeconds: number) => {
      const r = await call(t.url, 'POST', '/v1/tasks', t.as(as), {
        parentTaskId,
        taskId: 'sub',
        agent: `spiffe://dev.local${agent}`,
        ttlSeconds,
        grants: [{ role: 'demo-api' }],
      });
      expect(r.status).toBe(201);
      const c = await call(t.url, 'POST', '/v1/credentials', t.as(agent), { taskId: r.body.taskId, role: 'demo-api' });
      expect(c.status).toBe(201);
      return { taskId: r.body.taskId as string, leaseId: c.body.leaseId as string };
    };
    const child = await sub(name, AGENT, HELPER, 300);
    return { child, grandchild: deep ? await sub(child.taskId, HELPER, GRAND, 200) : undefined };
  };
  const completed = await tree('t-orphan', true);
  const revoked = await tree('t-orphan-admin', false);
  const healthy = await tree('t-orphan-healthy', false);
  // What a task-end cut short after its first writes leaves (an older release's script during a Cluster reshard):
  // the parent ended and out of the open index, its sub-tasks untouched.
  const halfEnd = async (taskId: string, reason: string, adminScope?: string) => {
    const now = Number((await redis.time())[0]) * 1000;
    await redis.hset(
      keys.task(taskId),
      'status',
      'completed',
      'endedAt',
      now,
      'reason',
      reason,
      ...(adminScope ? ['adminScope', adminScope] : []),
    );
    await redis.zrem(keys.openTasks(keys.bucketOfTask(taskId)), taskId);
  };
  await halfEnd('t-orphan', 'task_completed');
  await halfEnd('t-orphan-admin', 'revoked_by_admin', 'task');
  const task = async (taskId: string) => {
    const [status, reason, adminScope] = await redis.hmget(keys.task(taskId), 'status', 'reason', 'adminScope');
    return { status, reason, adminScope };
  };
  const before = (await auditRecords(redis, keys)).length;

  await t.broker.sweeper!.reconcile();
  expect({
    child: await task(completed.child.taskId),
    grandchild: await task(completed.grandchild!.taskId),
    adminChild: await task(revoked.child.taskId),
    healthyChild: await task(healthy.child.taskId),
  }).toEqual({
    // As task-end.lua ends the sub-tasks of the task it ends: `completed`, task_completed or revoked_by_admin.
    child: { status: 'completed', reason: 'task_completed', adminScope: null },
    grandchild: { status: 'completed', reason: 'task_completed', adminScope: null },
    adminChild: { status: 'completed', reason: 'revoked_by_admin', adminScope: 'task' },
    healthyChild: { status: 'open', reason: null, adminScope: null },
  });
  // Their leases are revoked in the pass (the broker's JWTs end at once), for the parent's reason; the healthy one stays.
  const lease = (id: string) => redis.hmget(keys.lease(id), 'status', 'reason');
  expect(await Promise.all([completed.child, completed.grandchild!, revoked.child, healthy.child].map((s) => lease(s.leaseId)))).toEqual([
    ['revoked', 'task_completed'],
    ['revoked', 'task_completed'],
    ['revoked', 'revoked_by_admin'],
    ['active', null],
  ]);
  // No sub-task of an ended parent takes a credential any more; each ending is on the record.
  const again = await call(t.url, 'POST', '/v1/credentials', t.as(HELPER), { taskId: completed.child.taskId, role: 'demo-api' });
  expect(again.status).toBe(409);
  await waitFor(async () => (await auditRecords(redis, keys)).filter((r) => r.reason === 'parent_task_ended').length === 3);
  const records = (await auditRecords(redis, keys)).slice(before).filter((r) => r.action === 'task.complete');
  expect(records.map((r) => [r.taskId, r.actor, r.reason]).sort()).toEqual(
    [
      [completed.child.taskId, 'broker', 'parent_task_ended'],
      [completed.grandchild!.taskId, 'broker', 'parent_task_ended'],
      [revoked.child.taskId, 'broker', 'parent_task_ended'],
    ].sort(),
  );
  // Healed: the next pass finds nothing to end.
  expect(await t.broker.sweeper!.reconcile()).toBe(0);
});

test('a pass is paced: between two pages it waits longer than the pages hold Redis', async () => {
  // Unpaced, the pages ran back to back and a pass over 50,000 live leases took issuance p99 at 2,000/s
  // from ~4 ms to ~15 ms.
  const { pages, reads } = await reconcileTimingPages();
  expect(pages.length).toBeGreaterThanOrEqual(8); // ZSCAN pages are about 500, not exactly
  // Between two page scripts: the read of the next page's ids, and the pause (4x the last page's time, at most
  // MAX_PAUSE_MS). Summed over the pass, the time neither reading nor running a script is well over the
  // scripts' own time; back to back it was a fraction of it.
  let busy = 0;
  let paused = 0;
  for (let i = 1; i < pages.length; i++) {
    const [prev, next] = [pages[i - 1]!, pages[i]!];
    busy += prev.end - prev.start;
    const reading = reads.filter((r) => r.start >= prev.end && r.end <= next.start).reduce((n, r) => n + (r.end - r.start), 0);
    paused += next.start - prev.end - reading;
  }
  expect(paused).toBeGreaterThan(Math.min(busy, 0.5 * MAX_PAUSE_MS * (pages.length - 1)));
});

test('stop() ends a pass in its pauses: it does not run on after shutdown', async () => {
  // Last in this file: the sweeper stays stopped.
  const { pages } = await reconcileTimingPages((n) => {
    if (n === 2) void t.broker.sweeper!.stop();
  });
  expect(pages.length).toBe(2);
});
