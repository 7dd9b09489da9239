import type { Redis } from 'ioredis';
import { luaScript } from '../lua.ts';
import type { Keys } from '../redis.ts';
import type { TaskFixed, TaskRecord, TaskStatus } from './types.ts';

/*
 * A task is a Redis hash: `d` holds the immutable part as JSON, `status` and
 * `endedAt` the mutable part, so the Lua below changes plain fields and never
 * re-encodes JSON (Redis' cjson would turn [] into {}).
 */

/**
 * Creates the task only if its id is free, and registers it in the open-task
 * index (and its parent's children) in the same step, so a crash can never
 * leave a task that the expiry sweep does not know about.
 * Returns nil when created, or the existing hash as a flat array.
 */
const CREATE = `
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGETALL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'status', 'open', 'expiresAt', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
if KEYS[3] then redis.call('SADD', KEYS[3], ARGV[3]) end
return false`;
const runCreate = luaScript(CREATE);

/**
 * open -> completed|expired, once. Expiry only happens once the deadline has
 * passed, so a late or early sweep cannot expire a task before its time.
 * Returns {changed, status}.
 */
const END = `
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {0, false} end
if st ~= 'open' then return {0, st} end
if ARGV[1] == 'expired' and tonumber(ARGV[3]) < tonumber(redis.call('HGET', KEYS[1], 'expiresAt')) then return {0, st} end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'endedAt', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('PEXPIRE', KEYS[4], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[4])
return {1, ARGV[1]}`;
const runEnd = luaScript(END);

/** Rebuilds a TaskRecord from its hash fields. */
export function taskFromHash(h: Record<string, string>): TaskRecord | undefined {
  if (!h.d) return undefined;
  const t = JSON.parse(h.d) as TaskRecord;
  t.status = (h.status ?? 'open') as TaskStatus;
  if (h.endedAt) t.endedAt = Number(h.endedAt);
  return t;
}

function pairsToHash(flat: string[]): Record<string, string> {
  const h: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) h[flat[i]!] = flat[i + 1]!;
  return h;
}

/** Redis persistence of tasks; ended tasks are kept for `retentionMs`. */
export class TaskStore {
  private readonly redis: Redis;
  private readonly keys: Keys;
  private readonly retentionMs: number;
  private readonly cache = new Map<string, TaskFixed>();
  private static readonly CACHE_MAX = 10_000;

  constructor(deps: { redis: Redis; keys: Keys; retentionMs: number }) {
    this.redis = deps.redis;
    this.keys = deps.keys;
    this.retentionMs = deps.retentionMs;
  }

  /** Creates the task, or returns the record already stored under its id. */
  async create(task: TaskRecord): Promise<{ created: true } | { created: false; existing: TaskRecord }> {
    const keys = [this.keys.task(task.taskId), this.keys.openTasks()];
    if (task.parentTaskId) keys.push(this.keys.taskChildren(task.parentTaskId));
    const { status: _s, endedAt: _e, ...fixed } = task;
    const res = (await runCreate(this.redis, keys.length, ...keys, JSON.stringify(fixed), task.expiresAt, task.taskId)) as string[] | null;
    return res === null ? { created: true } : { created: false, existing: taskFromHash(pairsToHash(res))! };
  }

  /**
   * The immutable part of a task, cached in memory: it never changes once the
   * task is opened, so the issuance path skips a round trip. Whether the task
   * is still open is NOT answered here; the lease-creating script checks that
   * atomically.
   */
  async fixed(taskId: string): Promise<TaskFixed | undefined> {
    const hit = this.cache.get(taskId);
    if (hit) return hit;
    const d = await this.redis.hget(this.keys.task(taskId), 'd');
    if (!d) return undefined;
    const t = JSON.parse(d) as TaskFixed;
    if (this.cache.size >= TaskStore.CACHE_MAX) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(taskId, t);
    return t;
  }

  async get(taskId: string): Promise<TaskRecord | undefined> {
    return taskFromHash(await this.redis.hgetall(this.keys.task(taskId)));
  }

  /** Only the status (cheap; the hot paths need nothing else). */
  async status(taskId: string): Promise<TaskStatus | undefined> {
    return ((await this.redis.hget(this.keys.task(taskId), 'status')) ?? undefined) as TaskStatus | undefined;
  }

  /** Ends an open task; `changed` is false if it had already ended (idempotent). */
  async end(taskId: string, status: Exclude<TaskStatus, 'open'>, now = Date.now()): Promise<{ changed: boolean; status?: TaskStatus }> {
    const res = (await runEnd(
      this.redis,
      4,
      this.keys.task(taskId),
      this.keys.openTasks(),
      this.keys.taskLeases(taskId),
      this.keys.taskChildren(taskId),
      status,
      this.retentionMs,
      now,
      taskId,
    )) as [number, string | null];
    return { changed: res[0] === 1, status: (res[1] ?? undefined) as TaskStatus | undefined };
  }

  async leaseIds(taskId: string): Promise<string[]> {
    return this.redis.smembers(this.keys.taskLeases(taskId));
  }

  async leaseCount(taskId: string): Promise<number> {
    return this.redis.scard(this.keys.taskLeases(taskId));
  }

  async children(taskId: string): Promise<string[]> {
    return this.redis.smembers(this.keys.taskChildren(taskId));
  }

  /** Open tasks whose deadline has passed (the sweep's work list). */
  async overdue(now: number, limit: number): Promise<string[]> {
    return this.redis.zrangebyscore(this.keys.openTasks(), 0, now, 'LIMIT', 0, limit);
  }
}
