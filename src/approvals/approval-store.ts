import { createHash, randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Keys } from '../redis.ts';

export type ApprovalStatus = 'pending' | 'approved' | 'rejected' | 'consumed' | 'expired';

export interface ApprovalRecord {
  approvalId: string;
  taskId: string;
  role: string;
  agent: string;
  scopes: string[];
  ttlSeconds?: number;
  status: ApprovalStatus;
  requestedAt: number;
  /** Ends with its task. */
  expiresAt: number;
  decidedBy?: string;
  decidedAt?: number;
  reason?: string;
}

/**
 * Approvals for roles with `approval: required`. One approval covers one
 * credential: the request (task, role, scopes) maps to its current approval
 * through an index key; issuing consumes it, so the next request for the same
 * thing needs a new approval. Records expire with their task.
 */
export class ApprovalStore {
  private readonly redis: Redis;
  private readonly keys: Keys;

  constructor(deps: { redis: Redis; keys: Keys }) {
    this.redis = deps.redis;
    this.keys = deps.keys;
  }

  private indexKey(taskId: string, role: string, scopes: string[]): string {
    const h = createHash('sha256')
      .update(JSON.stringify([taskId, role, [...scopes].sort()]))
      .digest('base64url');
    return `${this.keys.prefix}:approval-for:${h}`;
  }

  /** The approval for this request, creating a pending one if there is none. */
  async findOrCreate(req: {
    taskId: string;
    role: string;
    agent: string;
    scopes: string[];
    ttlSeconds?: number;
    expiresAt: number;
  }): Promise<{ record: ApprovalRecord; created: boolean }> {
    const index = this.indexKey(req.taskId, req.role, req.scopes);
    const approvalId = randomBytes(16).toString('hex');
    const px = Math.max(1, req.expiresAt - Date.now());
    const set = await this.redis.set(index, approvalId, 'PX', px, 'NX');
    if (set === null) {
      const existing = await this.get((await this.redis.get(index))!);
      if (existing) return { record: existing, created: false };
      await this.redis.set(index, approvalId, 'PX', px);
    }
    const { status, ...fixed }: ApprovalRecord = {
      approvalId,
      taskId: req.taskId,
      role: req.role,
      agent: req.agent,
      scopes: req.scopes,
      ...(req.ttlSeconds ? { ttlSeconds: req.ttlSeconds } : {}),
      status: 'pending',
      requestedAt: Date.now(),
      expiresAt: req.expiresAt,
    };
    const key = this.keys.approval(approvalId);
    await this.redis.multi().hset(key, 'd', JSON.stringify(fixed), 'status', status).pexpire(key, px).exec();
    return { record: { ...fixed, status }, created: true };
  }

  async get(approvalId: string): Promise<ApprovalRecord | undefined> {
    const h = await this.redis.hgetall(this.keys.approval(approvalId));
    if (!h.d) return undefined;
    const r = { ...JSON.parse(h.d), status: h.status } as ApprovalRecord;
    if (h.decidedBy) r.decidedBy = h.decidedBy;
    if (h.decidedAt) r.decidedAt = Number(h.decidedAt);
    if (h.reason) r.reason = h.reason;
    if (r.expiresAt <= Date.now() && (r.status === 'pending' || r.status === 'approved')) r.status = 'expired';
    return r;
  }

  /** pending -> approved|rejected; false if it was no longer pending (lost a race). */
  async decide(approvalId: string, decision: 'approved' | 'rejected', by: string, reason?: string): Promise<boolean> {
    return this.swap(approvalId, 'pending', {
      status: decision,
      decidedBy: by,
      decidedAt: String(Date.now()),
      ...(reason ? { reason } : {}),
    });
  }

  /** approved -> consumed, exactly once; the index is cleared so the next request asks again. */
  async consume(r: ApprovalRecord): Promise<boolean> {
    const ok = await this.swap(r.approvalId, 'approved', { status: 'consumed' });
    if (ok) await this.redis.del(this.indexKey(r.taskId, r.role, r.scopes));
    return ok;
  }

  /** Compare-and-set on the status field, atomically in Redis. */
  private async swap(approvalId: string, from: ApprovalStatus, patch: Record<string, string>): Promise<boolean> {
    const args = Object.entries(patch).flat();
    const res = (await this.redis.eval(
      `
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1`,
      1,
      this.keys.approval(approvalId),
      from,
      ...args,
    )) as number;
    return res === 1;
  }
}
