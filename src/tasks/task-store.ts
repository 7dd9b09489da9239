import { LRUCache } from 'lru-cache';
import { outboxMember } from '../audit/outbox-member.ts';
import type { OutboxEvent } from '../audit/record.ts';
import { conflict } from '../errors.ts';
import { indexWindow } from '../lists/index-window.ts';
import { inRounds } from '../redis/in-rounds.ts';
import type { Keys } from '../redis/keys.ts';
import { type RedisClient, script } from '../redis/scripts.ts';
import type { TaskEndReason, TaskFixed, TaskRecord, TaskSnapshot, TaskStatus } from './types.ts';

/**
 * A decision was taken on a cached task that turned out to be an earlier
 * incarnation of its id (purged, then opened again) than the one Redis holds.
 */
export class StaleTask extends Error {}

const openScript = script('task-open');
const endScript = script('task-end');
const reserveScript = script('task-reserve');
const leasePageScript = script('task-lease-page');

/** What list filters read of a task (TaskStore.headsOf). */
export interface TaskHead {
  taskId: string;
  status: TaskStatus;
  agent: string;
  tenant: string;
  openedBy: string;
}

/** A lease's place in its task's lease index: its id and issue time (ms). */
export interface LeasePosition {
  id: string;
  at: number;
}

/** Rebuilds a TaskRecord from its hash fields (undefined when the hash is empty). */
export function taskFromHash(h: Record<string, string>): TaskRecord | undefined {
  if (!h.d) return undefined;
  const fixed = JSON.parse(h.d) as TaskFixed;
  return {
    ...fixed,
    status: (h.status ?? 'open') as TaskStatus,
    createdAt: Number(h.createdAt),
    expiresAt: Number(h.expiresAt),
    liveLeases: Number(h.live ?? 0),
    ...(h.endedAt ? { endedAt: Number(h.endedAt) } : {}),
    ...(h.reason ? { reason: h.reason } : {}),
  };
}

function pairs(flat: string[]): Record<string, string> {
  const h: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) h[flat[i]!] = flat[i + 1]!;
  return h;
}

export type OpenResult =
  /** `recorded`: the `task.open` record as put in the bucket's audit outbox at the task's `createdAt`. */
  | { kind: 'created'; task: TaskRecord; recorded?: string }
  | { kind: 'exists'; task: TaskRecord }
  | { kind: 'parent_missing' | 'parent_not_open' | 'parent_stale' | 'limit' }
  | { kind: 'outlives_parent'; parentExpiresAt: number };

export type EndResult =
  | {
      kind: 'ended';
      endedAt: number;
      taskIds: string[];
      /** Leases of these tasks not yet ended: the ones being revoked now. */
      liveLeases: number;
      /** The ending's audit records, put in the bucket's audit outbox at `endedAt` (AuditLog.appendOutbox appends them). */
      records: string[];
    }
  | { kind: 'missing' | 'early' }
  | { kind: 'already'; status: TaskStatus };

/** The opener in a task's stored record, or '' (not read, or unreadable). */
function openerOf(d: string | null | undefined): string {
  if (!d) return '';
  try {
    const v = (JSON.parse(d) as { openedBy?: unknown }).openedBy;
    return typeof v === 'string' ? v : '';
  } catch {
    return '';
  }
}

/** How many tasks the per-process task cache holds at most. */
export const TASK_CACHE_ENTRIES = 10_000;
/**
 * The most characters of stored task JSON (`d`) the task cache stands for at once. A record holds its grants'
 * scopes, 32 labels of 256 characters and a purpose of 1,024: tens of KB each within every bound, so 10,000 of
 * them were hundreds of MB per instance. Typical records (1-2 KB) meet the count first; 32 M characters still
 * hold a whole tree of `tasks.maxSubtasks` (1,000) records of ~32 KB, so its evidence stays cached.
 */
export const TASK_CACHE_CHARS = 32_000_000;

/**
 * Which tasks a read may add to the task cache: those its caller is a party to, so that a caller
 * refused the task cannot fill the cache (and push out the tasks others use) by naming task ids.
 * A task already cached is answered from it whatever this says.
 */
export type KeepIf = (task: TaskFixed) => boolean;

/** Redis persistence of tasks. Every step that decides on time runs in Lua on Redis's clock. */
export class TaskStore {
  private readonly redis: RedisClient;
  private readonly keys: Keys;
  private readonly retentionMs: number;
  /**
   * Immutable parts of tasks, so the issuance path skips a round trip; whether a task is open is never
   * answered here. An entry is one incarnation of a task id: once that task is purged, the same id can
   * be opened again for another agent, so every step that acts on an entry (lease-create, approval-request,
   * task-open for a sub-task) checks in its own Lua step that the task's `createdAt` is still the entry's,
   * and the caller forgets the entry and decides again when it is not.
   */
  private readonly fixedCache: LRUCache<string, { task: TaskSnapshot; chars: number }>;

  /** `cacheChars`: the task cache's length bound (tests make it small; default TASK_CACHE_CHARS). */
  constructor(deps: { redis: RedisClient; keys: Keys; retentionMs: number; cacheChars?: number }) {
    this.redis = deps.redis;
    this.keys = deps.keys;
    this.retentionMs = deps.retentionMs;
    this.fixedCache = new LRUCache({
      max: TASK_CACHE_ENTRIES,
      maxSize: deps.cacheChars ?? TASK_CACHE_CHARS,
      sizeCalculation: (e) => Math.max(1, e.chars),
    });
  }

  /**
   * Stores a new task (a sub-task under its parent), or returns the one already under its id.
   * `parentCreatedAt`: the parent incarnation the sub-task was decided on (`parent_stale` if Redis holds another).
   * `audit`: the record of its opening, put in the bucket's audit outbox in the same step when it is created.
   */
  async open(
    task: TaskFixed,
    opts: { maxSubtasks: number; rootTaskId?: string; parentCreatedAt?: number; audit?: OutboxEvent },
  ): Promise<OpenResult> {
    const k = this.keys;
    const bucket = k.bucketOfTask(task.taskId);
    const keys = [
      k.task(task.taskId),
      k.openTasks(bucket),
      k.tasksByTime(bucket),
      k.tasksByAgent(bucket, task.agent),
      k.tasksByOpener(bucket, task.openedBy),
    ];
    if (task.parentTaskId)
      keys.push(k.task(task.parentTaskId), k.taskChildren(task.parentTaskId), k.task(opts.rootTaskId ?? task.parentTaskId));
    const window = indexWindow(this.retentionMs);
    const member = opts.audit ? outboxMember(opts.audit) : '';
    const res = (await openScript.run(this.redis, keys, [
      JSON.stringify(task),
      task.ttlSeconds * 1000,
      task.taskId,
      opts.maxSubtasks,
      task.agent,
      task.tenant,
      window.afterDeadlineMs,
      window.horizonMs,
      opts.parentCreatedAt ?? '',
      member,
      task.openedBy,
    ])) as [string, ...unknown[]];
    switch (res[0]) {
      case 'created':
        // Any entry under this id was an earlier incarnation (checked at use anyway; no need to keep it).
        this.fixedCache.delete(task.taskId);
        return {
          kind: 'created',
          task: { ...task, status: 'open', createdAt: Number(res[1]), expiresAt: Number(res[2]), liveLeases: 0 },
          ...(member ? { recorded: member } : {}),
        };
      case 'exists':
        return { kind: 'exists', task: taskFromHash(pairs(res[1] as string[]))! };
      case 'outlives_parent':
        return { kind: 'outlives_parent', parentExpiresAt: Number(res[1]) };
      default:
        return { kind: res[0] as 'parent_missing' | 'parent_not_open' | 'parent_stale' | 'limit' };
    }
  }

  /**
   * Takes a place for a new top-level task among its opener's open tasks (`tasks.maxOpenTasks`, at least 1):
   * `limit` when they are that many already (nothing written), `held` when the id has its place already (a
   * repeated open), `added` otherwise (the caller gives it back with {@link releaseOpen} if the task is not opened).
   */
  async reserveOpen(opener: string, taskId: string, ttlSeconds: number, max: number): Promise<'added' | 'held' | 'limit'> {
    return (await reserveScript.run(this.redis, [this.keys.openTasksOf(opener)], [max, taskId, ttlSeconds * 1000])) as
      | 'added'
      | 'held'
      | 'limit';
  }

  /** Gives back a top-level task's place among its opener's open tasks (the task ended, or was not opened). */
  async releaseOpen(opener: string, taskId: string): Promise<void> {
    await this.redis.zrem(this.keys.openTasksOf(opener), taskId);
  }

  /**
   * The immutable part of a task and its times (cached: none of it ever changes). `keepIf`: cache what was
   * read only if it says so (the caller is a party to the task); without it, always.
   */
  async fixed(taskId: string, keepIf?: KeepIf): Promise<TaskSnapshot | undefined> {
    const hit = this.fixedCache.get(taskId);
    if (hit) return hit.task;
    const [d, createdAt, expiresAt] = await this.redis.hmget(this.keys.task(taskId), 'd', 'createdAt', 'expiresAt');
    if (!d) return undefined;
    const t: TaskSnapshot = { ...(JSON.parse(d) as TaskFixed), createdAt: Number(createdAt), expiresAt: Number(expiresAt) };
    // Sized by the stored JSON's length (what it was parsed from); one longer than the whole bound is not kept.
    if (!keepIf || keepIf(t)) this.fixedCache.set(taskId, { task: t, chars: d.length });
    return t;
  }

  /** Whether Redis still holds this incarnation of the task (a fresh read; for paths about to refuse on a cached one). */
  async isCurrent(t: Pick<TaskSnapshot, 'taskId' | 'createdAt'>): Promise<boolean> {
    const createdAt = await this.redis.hget(this.keys.task(t.taskId), 'createdAt');
    const current = createdAt !== null && Number(createdAt) === t.createdAt;
    if (!current) this.forget(t.taskId);
    return current;
  }

  /** Forgets one cached task (its id now holds another incarnation). */
  forget(taskId: string): void {
    this.fixedCache.delete(taskId);
  }

  /**
   * Runs `decide`, which throws StaleTask when the cached `taskId` it decided on is outdated; then
   * forgets that entry and decides once more on the task as Redis holds it now. A second change
   * meanwhile is refused (409 task_not_open), not chased.
   */
  async onCurrent<T>(taskId: string, decide: () => Promise<T>): Promise<T> {
    try {
      return await decide();
    } catch (err) {
      if (!(err instanceof StaleTask)) throw err;
      this.forget(taskId);
      try {
        return await decide();
      } catch (again) {
        if (again instanceof StaleTask) throw conflict('task_not_open', `Task ${taskId} changed while the request was decided.`);
        throw again;
      }
    }
  }

  /** Forgets cached tasks (after Redis lost its data). */
  clearCache(): void {
    this.fixedCache.clear();
  }

  async get(taskId: string): Promise<TaskRecord | undefined> {
    return taskFromHash(await this.redis.hgetall(this.keys.task(taskId)));
  }

  async getMany(taskIds: readonly string[]): Promise<TaskRecord[]> {
    if (taskIds.length === 0) return [];
    const all = await Promise.all(taskIds.map((id) => this.redis.hgetall(this.keys.task(id))));
    return all.map(taskFromHash).filter((t): t is TaskRecord => t !== undefined);
  }

  /**
   * These tasks' records, in `taskIds` order (a task gone from Redis left out), reading the fields that
   * change (status, ending, live leases) and taking the immutable rest (`d`: grants, labels, purpose; up to
   * ~36 KB) from the cache of `fixed`, read from Redis only for a task not cached or cached as an earlier
   * incarnation of its id (its `createdAt` differs). The evidence shows a whole tree on every call: 51
   * records read whole were ~1.9 MB from Redis per call, and a task's own agent may call it over and over.
   * Reads go out in rounds (src/redis/in-rounds.ts: the stall guard takes a burst of thousands for Redis stalling).
   * `keepIf` as for {@link fixed}.
   */
  async recordsOf(taskIds: readonly string[], keepIf?: KeepIf): Promise<TaskRecord[]> {
    const rows = await inRounds(taskIds, (id) => this.redis.hmget(this.keys.task(id), 'createdAt', 'status', 'live', 'endedAt', 'reason'));
    const fixed = await inRounds([...taskIds.keys()], async (j) => {
      const id = taskIds[j]!;
      const createdAt = rows[j]![0];
      if (createdAt == null) return undefined;
      const hit = this.fixedCache.get(id)?.task;
      if (hit && hit.createdAt === Number(createdAt)) return hit;
      this.forget(id);
      const again = await this.fixed(id, keepIf);
      // Opened again between the two reads: shown at the next call, not mixed with this one's fields.
      return again?.createdAt === Number(createdAt) ? again : undefined;
    });
    const out: TaskRecord[] = [];
    for (const [j, f] of fixed.entries()) {
      if (!f) continue;
      const [, status, live, endedAt, reason] = rows[j]!;
      out.push({
        ...f,
        status: (status ?? 'open') as TaskStatus,
        liveLeases: Number(live ?? 0),
        ...(endedAt ? { endedAt: Number(endedAt) } : {}),
        ...(reason ? { reason } : {}),
      });
    }
    return out;
  }

  /**
   * Each task's status, in `taskIds` order (undefined where the task is gone): what a lease page shows of its
   * leases' tasks, without reading whole records (a tree's may be 51 of ~36 KB each).
   */
  async statusesOf(taskIds: readonly string[]): Promise<(TaskStatus | undefined)[]> {
    const rows = await inRounds(taskIds, (id) => this.redis.hget(this.keys.task(id), 'status'));
    return rows.map((s) => (s ?? undefined) as TaskStatus | undefined);
  }

  /**
   * The small fields list filters need (no `d`: a record may be tens of KB), in `taskIds` order, undefined
   * where the task is gone. `d` is read only for a task stored before its opener was a plain field.
   */
  async headsOf(taskIds: readonly string[]): Promise<(TaskHead | undefined)[]> {
    const rows = await Promise.all(taskIds.map((id) => this.redis.hmget(this.keys.task(id), 'status', 'agent', 'tenant', 'openedBy')));
    return Promise.all(
      rows.map(async ([status, agent, tenant, openedBy], i) => {
        if (!status) return undefined;
        const head = { taskId: taskIds[i]!, status: status as TaskStatus };
        if (agent != null && tenant != null && openedBy != null) return { ...head, agent, tenant, openedBy };
        const d = await this.redis.hget(this.keys.task(taskIds[i]!), 'd');
        if (!d) return undefined;
        const f = JSON.parse(d) as TaskFixed;
        return { ...head, agent: f.agent, tenant: f.tenant, openedBy: f.openedBy };
      }),
    );
  }

  /** Status only (the introspection hot path needs nothing else). */
  async status(taskId: string): Promise<TaskStatus | undefined> {
    return ((await this.redis.hget(this.keys.task(taskId), 'status')) ?? undefined) as TaskStatus | undefined;
  }

  /**
   * Ends an open task and its open subtree in one step. `expired` only once
   * the deadline has passed on Redis's clock. Sub-tasks end `completed`.
   * `adminScope` 'task': an admin ended the task without suspecting its agent (RevokeContext.adminScope).
   * `audit`: the ending's records, put in the bucket's audit outbox in the same step (task-end.lua):
   * `task` for the task (with `detail: {tasks, leases}` added when `counts`), `subtask` for each sub-task
   * it ends (its `taskId` added).
   */
  async end(
    taskId: string,
    status: 'completed' | 'expired',
    reason: TaskEndReason,
    adminScope?: 'task',
    audit: { task?: OutboxEvent; subtask?: Omit<OutboxEvent, 'taskId'>; counts?: boolean } = {},
  ): Promise<EndResult> {
    const bucket = this.keys.bucketOfTask(taskId);
    const childReason = reason === 'revoked_by_admin' ? 'revoked_by_admin' : 'task_completed';
    const res = (await endScript.run(
      this.redis,
      [this.keys.task(taskId), this.keys.openTasks(bucket)],
      [
        this.keys.base(bucket),
        status,
        reason,
        childReason,
        this.retentionMs,
        taskId,
        adminScope ?? '',
        audit.task ? JSON.stringify(audit.task) : '',
        audit.subtask ? JSON.stringify(audit.subtask) : '',
        audit.counts ? '1' : '',
      ],
    )) as [string, ...unknown[]];
    // A top-level task that ended gives back its place among its opener's open tasks (tasks.maxOpenTasks); one that
    // had ended already too, in case the call that ended it died before. A place not given back lapses at the
    // task's deadline (task-reserve.lua), so a failure here only holds it until then.
    if ((res[0] === 'ended' || res[0] === 'already') && !taskId.includes('~')) await this.releaseOpenOf(taskId);
    switch (res[0]) {
      case 'ended':
        return {
          kind: 'ended',
          endedAt: Number(res[1]),
          liveLeases: Number(res[2]),
          records: res[3] as string[],
          taskIds: res.slice(4) as string[],
        };
      case 'already':
        return { kind: 'already', status: res[1] as TaskStatus };
      default:
        return { kind: res[0] as 'missing' | 'early' };
    }
  }

  /** {@link releaseOpen} for an ended top-level task, by its opener as its record says; best effort. */
  private async releaseOpenOf(taskId: string): Promise<void> {
    try {
      // Read from Redis, not the task cache: an entry there may be an earlier incarnation of the id (ids come back
      // after the retention period) with another opener, whose place this would give back instead.
      const d = await this.redis.hget(this.keys.task(taskId), 'd');
      const t = d ? (JSON.parse(d) as TaskFixed) : undefined;
      if (t && !t.parentTaskId) await this.releaseOpen(t.openedBy, taskId);
    } catch {
      // Lapses at the task's deadline.
    }
  }

  /** Every lease id of a task, in issue order (ending a task, the reconciler). */
  async leaseIds(taskId: string): Promise<string[]> {
    return (await this.leasePage(taskId, undefined, 0)).map((p) => p.id);
  }

  /**
   * Up to `limit` lease ids of a task in issue order (0: all), after `after` (the previous page's
   * last): a read costs what its page holds, not what the task ever issued (tasks.maxLeasesTotal).
   */
  async leasePage(taskId: string, after: LeasePosition | undefined, limit: number): Promise<LeasePosition[]> {
    const flat = (await leasePageScript.run(
      this.redis,
      [this.keys.taskLeases(taskId), this.keys.taskLeasesLegacy(taskId), this.keys.task(taskId)],
      [after?.id ?? '', after?.at ?? 0, limit, this.retentionMs],
    )) as string[];
    const out: LeasePosition[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) out.push({ id: flat[i]!, at: Number(flat[i + 1]) });
    return out;
  }

  async children(taskId: string): Promise<string[]> {
    return this.redis.smembers(this.keys.taskChildren(taskId));
  }

  /**
   * Open tasks of one bucket with their agent and tenant (the kill switch's work list), in pages.
   * A ZSCAN cursor, not an offset: tasks end and open while the walk runs (the sweeper expires the
   * earliest deadlines, the first ranks), and an offset into a set that shrinks ahead of it skips
   * entries. ZSCAN returns every task open for the whole walk, some possibly twice (callers dedupe).
   */
  async *openIn(
    bucket: number,
    pageSize = 500,
    withOpener = false,
  ): AsyncGenerator<{ taskId: string; agent: string; tenant: string; openedBy: string }[]> {
    let cursor = '0';
    do {
      const [next, flat] = await this.redis.zscan(this.keys.openTasks(bucket), cursor, 'COUNT', pageSize);
      cursor = next;
      const ids = flat.filter((_, i) => i % 2 === 0);
      if (ids.length === 0) continue;
      // The opener is only in the task's record (`d`): read (and parsed) only when asked for (a quarantine).
      const fields = withOpener ? ['agent', 'tenant', 'd'] : ['agent', 'tenant'];
      const rows = await Promise.all(ids.map((id) => this.redis.hmget(this.keys.task(id), ...fields)));
      yield ids.map((taskId, i) => ({ taskId, agent: rows[i]?.[0] ?? '', tenant: rows[i]?.[1] ?? '', openedBy: openerOf(rows[i]?.[2]) }));
    } while (cursor !== '0');
  }

  /**
   * The task and every task below it (ids), the task first, then its sub-tasks in the order they were opened
   * (their `seq`, numbered by task-open.lua on the root): so a parent comes before its sub-tasks, and a sub-task
   * opened while a client pages through the tree (evidence, `leases?tree=true`: cursors that name the last task
   * read) comes after every page already read, never before the cursor where it would be missed. (Breadth
   * first with each level sorted by id, as before, put a new sub-task wherever its id sorted.) Sub-tasks opened
   * by a release before this one carry no `seq`: they come first, breadth first as that release ordered them.
   */
  async subtree(taskId: string): Promise<string[]> {
    // One level at a time, its children sets read together (in rounds: src/redis/in-rounds.ts): a round trip
    // per level (tasks.maxDelegationDepth + 1 at most), not one per task of the tree; then each one's `seq`.
    const below: string[] = [];
    for (let level = [taskId]; level.length > 0; ) {
      const next = (await inRounds(level, (id) => this.children(id))).flatMap((kids) => kids.sort());
      below.push(...next);
      level = next;
    }
    const seqs = await inRounds(below, (id) => this.redis.hget(this.keys.task(id), 'seq'));
    const order = below.map((id, i) => ({ id, i, seq: seqs[i] == null ? -1 : Number(seqs[i]) }));
    order.sort((a, b) => a.seq - b.seq || a.i - b.i);
    return [taskId, ...order.map((o) => o.id)];
  }
}
