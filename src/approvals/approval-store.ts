import { createHash, randomBytes } from 'node:crypto';
import { outboxMember } from '../audit/outbox-member.ts';
import type { OutboxEvent } from '../audit/record.ts';
import { indexWindow } from '../lists/index-window.ts';
import { Keys } from '../redis/keys.ts';
import { type RedisClient, script } from '../redis/scripts.ts';

const requestScript = script('approval-request');
const swapScript = script('approval-swap');

export type ApprovalStatus = 'pending' | 'approved' | 'rejected' | 'consumed' | 'expired';

/** What an approval covers: exactly one request (task, role, scopes, ttlSeconds). */
export interface ApprovalFixed {
  approvalId: string;
  taskId: string;
  role: string;
  agent: string;
  /** Who opened the task (may read the approval). */
  openedBy: string;
  /**
   * Sub-tasks only: the parties to the tasks above (their orchestrators and agents) when it was requested, who
   * read the sub-task (src/tasks/readers.ts readsAnAncestor) and so its approvals. Absent on a root task's (and on
   * approvals stored before this field existed).
   */
  readers?: string[];
  purpose: string;
  scopes: string[];
  /** As requested (omitted: the grant's maximum): what "the same request" is compared on. */
  ttlSeconds: number;
  /**
   * What approving gives: the effective TTL when it was requested (contract section 3), at most what a credential
   * issued under it lives. It differs from `ttlSeconds` when that is beyond the grant's or role's maximum, or below
   * the upstream's minimum (AWS STS: 900 s): an approver shown "60 s" approved 15 minutes. Absent on approvals
   * stored before this field existed. Not part of what the approval covers (the index key).
   */
  issuedTtlSeconds?: number;
}

export interface ApprovalRecord extends ApprovalFixed {
  status: ApprovalStatus;
  requestedAt: number;
  /** Ends with its task (the task's deadline). */
  expiresAt: number;
  decidedBy?: string;
  decidedAt?: number;
  reason?: string;
}

/**
 * `stale`: the task under that id is not the incarnation the caller decided on (see `taskCreatedAt`).
 * `recorded`: the audit record of one created, as put in the bucket's audit outbox at `at` (Redis ms).
 */
export type RequestResult =
  | { kind: 'created'; record: ApprovalRecord; recorded?: { member: string; at: number } }
  | { kind: 'existing'; record: ApprovalRecord }
  | { kind: 'task_closed' | 'limit' | 'stale' };

/**
 * Approvals for roles with `approval: required`. One approval covers one
 * credential of exactly what was requested: an index key per (task, role,
 * scopes, ttl) points at the current approval; issuing consumes it, so the
 * next identical request needs a new approval. Records expire with their task.
 */
export class ApprovalStore {
  private readonly redis: RedisClient;
  private readonly keys: Keys;
  private readonly retentionMs: number;
  /**
   * The broker's clock (Redis's): whether an approval has passed its deadline is decided on it like every
   * deadline, not on this process's clock (an instance running minutes fast read live approvals `expired`).
   */
  private readonly now: () => number;

  constructor(deps: { redis: RedisClient; keys: Keys; retentionMs: number; now?: () => number }) {
    this.redis = deps.redis;
    this.keys = deps.keys;
    this.retentionMs = deps.retentionMs;
    this.now = deps.now ?? Date.now;
  }

  private indexKey(r: Pick<ApprovalFixed, 'taskId' | 'role' | 'scopes' | 'ttlSeconds'>): string {
    const digest = createHash('sha256')
      .update(JSON.stringify([r.taskId, r.role, [...r.scopes].sort(), r.ttlSeconds]))
      .digest('base64url');
    return this.keys.approvalFor(this.keys.bucketOfTask(r.taskId), digest);
  }

  /**
   * The approval of this exact request, creating a pending one (within the task's bound) if there is none.
   * `audit`: the record of one created (given its id), put in the bucket's audit outbox in the same step.
   * `readers`: a sub-task's readers (ApprovalFixed), read only when an approval is to be created: the request is
   * first asked without them (a repeat request, e.g. an agent polling its 202, ends there), then again with them.
   */
  async findOrCreate(
    req: Omit<ApprovalFixed, 'approvalId' | 'readers'> & {
      maxPending: number;
      taskCreatedAt?: number;
      audit?: (approvalId: string) => OutboxEvent;
      readers?: () => Promise<string[]>;
    },
  ): Promise<RequestResult> {
    const { maxPending, taskCreatedAt, audit, readers, ...fixedReq } = req;
    const bucket = this.keys.bucketOfTask(req.taskId);
    const approvalId = Keys.newId(bucket, randomBytes(16));
    const member = audit ? outboxMember(audit(approvalId)) : '';
    // `ids` undefined: only find (approval-request.lua ARGV[9]); else create with these readers.
    const request = async (ids: string[] | undefined): Promise<string[]> => {
      const fixed: ApprovalFixed = { approvalId, ...fixedReq, ...(ids?.length ? { readers: ids } : {}) };
      return (await requestScript.run(
        this.redis,
        [
          this.indexKey(req),
          this.keys.task(req.taskId),
          this.keys.taskApprovals(req.taskId),
          this.keys.approvals(bucket),
          this.keys.approval(approvalId),
          this.keys.approvalsOf(bucket, req.agent),
          this.keys.approvalsOf(bucket, req.openedBy),
          ...(ids ?? []).map((id) => this.keys.approvalsOf(bucket, id)),
        ],
        [
          this.keys.base(bucket),
          approvalId,
          JSON.stringify(fixed),
          maxPending,
          this.retentionMs,
          indexWindow(this.retentionMs).horizonMs,
          taskCreatedAt ?? '',
          member,
          ids === undefined ? 'find' : '',
        ],
      )) as string[];
    };
    let res = await request(readers ? undefined : []);
    if (res[0] === 'absent') res = await request(await readers!());
    if (res[0] === 'task_closed' || res[0] === 'limit' || res[0] === 'stale') return { kind: res[0] };
    const record = await this.get(res[1]!);
    // (Created but gone already: its record, in the outbox, is appended by recovery.)
    if (!record) return { kind: 'task_closed' };
    if (res[0] === 'created') return { kind: 'created', record, ...(member ? { recorded: { member, at: Number(res[2]) } } : {}) };
    return { kind: 'existing', record };
  }

  async get(approvalId: string, now = this.now()): Promise<ApprovalRecord | undefined> {
    return (await this.getMany([approvalId], now))[0];
  }

  async getMany(ids: readonly string[], now = this.now()): Promise<ApprovalRecord[]> {
    const valid = ids.filter((id) => this.keys.bucketOfId(id) !== undefined);
    const hashes = await Promise.all(valid.map((id) => this.redis.hgetall(this.keys.approval(id))));
    const records = hashes.map((h) => fromHash(h, now));
    await this.endWithTasks(hashes, records);
    return records.filter((r): r is ApprovalRecord => r !== undefined);
  }

  /**
   * Approvals end with their task (contract section 3): a pending or approved one whose task is no
   * longer open, or whose task id now holds another task (purged and opened again), reads `expired`.
   * Its own deadline (the task's) is checked in `fromHash`; this covers a task completed before it.
   */
  private async endWithTasks(hashes: Record<string, string>[], records: (ApprovalRecord | undefined)[]): Promise<void> {
    const live = records.flatMap((r, i) => (r && (r.status === 'pending' || r.status === 'approved') ? [i] : []));
    if (live.length === 0) return;
    const tasks = await Promise.all(live.map((i) => this.redis.hmget(this.keys.task(records[i]!.taskId), 'status', 'createdAt')));
    live.forEach((i, j) => {
      const [status, createdAt] = tasks[j]!;
      const own = hashes[i]!.taskCreatedAt;
      if (status !== 'open' || (own && createdAt !== own)) records[i]!.status = 'expired';
    });
  }

  /**
   * pending -> approved|rejected; false if it was no longer pending (lost a race). `audit`: the decision's
   * record, put in the bucket's audit outbox in the same step (`recorded`, at Redis ms `at`).
   */
  async decide(
    r: ApprovalRecord,
    decision: 'approved' | 'rejected',
    by: string,
    reason?: string,
    audit?: OutboxEvent,
  ): Promise<false | { recorded?: { member: string; at: number } }> {
    const member = audit ? outboxMember(audit) : '';
    const res = await this.swap(r, 'pending', decision, { decidedBy: by, ...(reason ? { reason } : {}) }, member);
    if (res === false) return false;
    return res === true ? {} : { recorded: { member, at: res } };
  }

  /**
   * approved -> expired: the broker takes back an approval not used yet (its approver was quarantined since);
   * the request index is cleared so the same request asks again. `audit`: the record, put in the bucket's
   * audit outbox in the same step. False if it was no longer approved (used or voided meanwhile).
   */
  async void(r: ApprovalRecord, audit: OutboxEvent): Promise<false | { recorded: { member: string; at: number } }> {
    const member = outboxMember(audit);
    const res = await this.swap(r, 'approved', 'expired', {}, member);
    if (res === false) return false;
    return { recorded: { member, at: res === true ? this.now() : res } };
  }

  /** approved -> consumed, exactly once; the request index is cleared so the next request asks again. */
  async consume(r: ApprovalRecord): Promise<boolean> {
    return (await this.swap(r, 'approved', 'consumed', {})) !== false;
  }

  /**
   * consumed -> approved: the credential it was consumed for was not handed out (a refusal, an upstream failure).
   * A pending twin (the same request asked again meanwhile) is withdrawn in the same step, its `approval.decide`
   * record put in the bucket's audit outbox: `withdrawn` names that member, for the caller to settle.
   */
  async giveBack(r: ApprovalRecord): Promise<false | { withdrawn?: { member: string; at: number } }> {
    const twin = JSON.stringify({
      action: 'approval.decide',
      actor: 'broker',
      decision: 'ok',
      taskId: r.taskId,
      role: r.role,
      reason: 'covered_by_approval',
    } satisfies OutboxEvent);
    const res = await this.runSwap(r, 'consumed', 'approved', { twin });
    if (!Array.isArray(res)) return res === 1 ? {} : false;
    return res[2] ? { withdrawn: { member: res[2], at: Number(res[1]) } } : {};
  }

  private outboxOf(r: ApprovalRecord): string {
    return this.keys.auditOutbox(this.keys.bucketOfTask(r.taskId));
  }

  /** False when not swapped; true, or the Redis time at which `member` was put in the outbox. */
  private async swap(
    r: ApprovalRecord,
    from: ApprovalStatus,
    to: ApprovalStatus,
    patch: Record<string, string>,
    member = '',
  ): Promise<boolean | number> {
    const res = await this.runSwap(r, from, to, { member, patch });
    if (Array.isArray(res)) return Number(res[1]);
    return res === 1;
  }

  /**
   * The one place approval-swap.lua is called from: its key list and argument order live here only. The
   * outbox key is declared whenever something may go in it (`member`, or a twin's withdrawal record).
   */
  private async runSwap(
    r: ApprovalRecord,
    from: ApprovalStatus,
    to: ApprovalStatus,
    opts: { member?: string; twin?: string; patch?: Record<string, string> },
  ): Promise<number | [number, number, string?]> {
    const { member = '', twin = '', patch = {} } = opts;
    const keys = [this.keys.approval(r.approvalId), this.keys.taskApprovals(r.taskId), this.indexKey(r)];
    if (member || twin) keys.push(this.outboxOf(r));
    return (await swapScript.run(this.redis, keys, [from, to, r.approvalId, member, twin, ...Object.entries(patch).flat()])) as
      | number
      | [number, number, string?];
  }
}

function fromHash(h: Record<string, string>, now: number): ApprovalRecord | undefined {
  if (!h.d) return undefined;
  const r: ApprovalRecord = {
    ...(JSON.parse(h.d) as ApprovalFixed),
    status: h.status as ApprovalStatus,
    requestedAt: Number(h.requestedAt),
    expiresAt: Number(h.expiresAt),
  };
  if (h.decidedBy) r.decidedBy = h.decidedBy;
  if (h.decidedAt) r.decidedAt = Number(h.decidedAt);
  if (h.reason) r.reason = h.reason;
  if (r.expiresAt <= now && (r.status === 'pending' || r.status === 'approved')) r.status = 'expired';
  return r;
}
