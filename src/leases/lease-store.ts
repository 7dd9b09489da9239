import type { Redis } from 'ioredis';
import { luaScript } from '../lua.ts';
import type { Keys } from '../redis.ts';
import type { LeaseRecord, LeaseStatus, RevokeReason } from './types.ts';

/*
 * A lease is a Redis hash: `d` holds the immutable part as JSON; status,
 * expiresAt, handle (JSON), reason, revokedAt, lastError and attempts are
 * plain fields that the Lua below sets without re-encoding JSON.
 */

/**
 * Records a lease only while its task is open, in one atomic step with the
 * task's lease set and the live-lease index. This closes the race with task
 * completion: once a task has left `open`, no lease can join it, so the
 * task-end job sees every lease the task will ever have.
 */
const CREATE = `
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'no_task' end
if st ~= 'open' then return 'task_closed' end
redis.call('HSET', KEYS[2], 'd', ARGV[1], 'status', ARGV[4], 'expiresAt', ARGV[2], 'handle', ARGV[5])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
return 'ok'`;
const runCreate = luaScript(CREATE);

/**
 * issuing -> active once the upstream answered. If the task ended while the
 * upstream call was in flight, the handle is still recorded (so revoke can
 * find what to revoke) and 'task_closed' is returned.
 */
const ACTIVATE = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 'no_lease' end
redis.call('HSET', KEYS[1], 'handle', ARGV[1], 'expiresAt', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
if redis.call('HGET', KEYS[2], 'status') == 'open' then
  redis.call('HSET', KEYS[1], 'status', 'active')
  return 'ok'
end
return 'task_closed'`;
const runActivate = luaScript(ACTIVATE);

/**
 * Applies field updates to a lease unless it already ended. With ARGV[1] ~= '0'
 * it is an ending transition: the lease leaves the live index and is kept for
 * that many ms. Returns the status before the call (false if no lease).
 */
const TRANSITION = `
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return false end
if st == 'revoked' or st == 'expired' or st == 'failed' then return st end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[1] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
end
return st`;
const runTransition = luaScript(TRANSITION);

const ENDED: ReadonlySet<LeaseStatus> = new Set(['revoked', 'expired', 'failed']);

/** Rebuilds a LeaseRecord from its hash fields. */
export function leaseFromHash(h: Record<string, string>): LeaseRecord | undefined {
  if (!h.d) return undefined;
  const l = JSON.parse(h.d) as LeaseRecord;
  l.status = h.status as LeaseStatus;
  l.expiresAt = Number(h.expiresAt);
  l.handle = h.handle ? JSON.parse(h.handle) : {};
  if (h.reason) l.reason = h.reason as RevokeReason;
  if (h.revokedAt) l.revokedAt = Number(h.revokedAt);
  if (h.lastError) l.lastError = h.lastError;
  if (h.attempts) l.attempts = Number(h.attempts);
  return l;
}

/** Redis persistence of leases. A lease never holds a secret, only the revoke handle. */
export class LeaseStore {
  private readonly redis: Redis;
  private readonly keys: Keys;
  private readonly retentionMs: number;

  constructor(deps: { redis: Redis; keys: Keys; retentionMs: number }) {
    this.redis = deps.redis;
    this.keys = deps.keys;
    this.retentionMs = deps.retentionMs;
  }

  /** Creates the lease if the task is still open. */
  async create(lease: LeaseRecord): Promise<'ok' | 'no_task' | 'task_closed'> {
    const { status, expiresAt, handle, reason: _r, revokedAt: _v, lastError: _l, attempts: _a, ...fixed } = lease;
    return (await runCreate(
      this.redis,
      4,
      this.keys.task(lease.taskId),
      this.keys.lease(lease.leaseId),
      this.keys.taskLeases(lease.taskId),
      this.keys.liveLeases(),
      JSON.stringify(fixed),
      expiresAt,
      lease.leaseId,
      status,
      JSON.stringify(handle),
    )) as 'ok' | 'no_task' | 'task_closed';
  }

  /** Records the upstream's answer on an `issuing` lease. */
  async activate(lease: LeaseRecord, patch: Pick<LeaseRecord, 'handle' | 'expiresAt'>): Promise<'ok' | 'no_lease' | 'task_closed'> {
    return (await runActivate(
      this.redis,
      3,
      this.keys.lease(lease.leaseId),
      this.keys.task(lease.taskId),
      this.keys.liveLeases(),
      JSON.stringify(patch.handle),
      patch.expiresAt,
      lease.leaseId,
    )) as 'ok' | 'no_lease' | 'task_closed';
  }

  async get(leaseId: string): Promise<LeaseRecord | undefined> {
    return leaseFromHash(await this.redis.hgetall(this.keys.lease(leaseId)));
  }

  async getMany(leaseIds: string[]): Promise<LeaseRecord[]> {
    if (leaseIds.length === 0) return [];
    const p = this.redis.pipeline();
    for (const id of leaseIds) p.hgetall(this.keys.lease(id));
    const res = (await p.exec()) ?? [];
    return res.map(([, h]) => leaseFromHash(h as Record<string, string>)).filter((l): l is LeaseRecord => l !== undefined);
  }

  /** Marks a lease ended; it leaves the live index and is kept for `retentionMs`. Returns the status before. */
  async end(
    leaseId: string,
    status: 'revoked' | 'expired' | 'failed',
    fields: { reason?: RevokeReason; revokedAt?: number; lastError?: string } = {},
  ): Promise<LeaseStatus | undefined> {
    return this.transition(leaseId, { status, ...fields }, true);
  }

  /** Updates a live lease (revoking; revoke_failed with the error and attempt count). Returns the status before. */
  async mark(
    leaseId: string,
    fields: { status?: LeaseStatus; reason?: RevokeReason; lastError?: string; attempts?: number },
  ): Promise<LeaseStatus | undefined> {
    return this.transition(leaseId, fields, false);
  }

  /** Live leases whose expiry has passed (the TTL sweep's work list). */
  async due(now: number, limit: number): Promise<string[]> {
    return this.redis.zrangebyscore(this.keys.liveLeases(), 0, now, 'LIMIT', 0, limit);
  }

  /** Number of leases not yet ended. */
  async liveCount(): Promise<number> {
    return this.redis.zcard(this.keys.liveLeases());
  }

  /** Walks the live index in pages (the reconciler). */
  async *live(pageSize = 500): AsyncGenerator<string[]> {
    let cursor = '0';
    do {
      const [next, flat] = await this.redis.zscan(this.keys.liveLeases(), cursor, 'COUNT', pageSize);
      cursor = next;
      const ids = flat.filter((_, i) => i % 2 === 0);
      if (ids.length > 0) yield ids;
    } while (cursor !== '0');
  }

  static isEnded(status: LeaseStatus): boolean {
    return ENDED.has(status);
  }

  private async transition(
    leaseId: string,
    fields: Record<string, string | number | undefined>,
    ended: boolean,
  ): Promise<LeaseStatus | undefined> {
    const args: (string | number)[] = [];
    for (const [k, v] of Object.entries(fields)) if (v !== undefined) args.push(k, v);
    const before = (await runTransition(
      this.redis,
      2,
      this.keys.lease(leaseId),
      this.keys.liveLeases(),
      ended ? this.retentionMs : 0,
      leaseId,
      ...args,
    )) as string | null;
    return (before ?? undefined) as LeaseStatus | undefined;
  }
}
