import { outboxMember } from '../audit/outbox-member.ts';
import type { OutboxEvent } from '../audit/record.ts';
import type { Keys } from '../redis/keys.ts';
import { type RedisClient, script } from '../redis/scripts.ts';
import type { LeaseFixed, LeaseRecord, LeaseStatus, RevokeReason } from './types.ts';

const createScript = script('lease-create');
const activateScript = script('lease-activate');
const updateScript = script('lease-update');
const requestEndScript = script('lease-request-end');
const endPageScript = script('leases-end');
const giveUpScript = script('lease-give-up');
const failIssuanceScript = script('lease-fail-issuance');

const ENDED: ReadonlySet<LeaseStatus> = new Set(['revoked', 'expired', 'failed']);

/**
 * How long past the latest its credential can be valid a lease stays in its bucket's index of leases issued under
 * an approval (Keys.approvedLeases): clock skew between the broker, Redis and the upstream, and an upstream
 * credential's confirmation after its answer. Past that, revoking it would cut off nothing.
 */
export const APPROVED_INDEX_SLACK_MS = 3_600_000;

/** Rebuilds a LeaseRecord from its hash fields. */
export function leaseFromHash(h: Record<string, string>): LeaseRecord | undefined {
  if (!h.d) return undefined;
  const l: LeaseRecord = {
    ...(JSON.parse(h.d) as LeaseFixed),
    status: h.status as LeaseStatus,
    issuedAt: Number(h.issuedAt),
    expiresAt: Number(h.expiresAt),
    handle: h.handle ? JSON.parse(h.handle) : {},
  };
  if (h.reason) l.reason = h.reason as RevokeReason;
  if (h.revokedAt) l.revokedAt = Number(h.revokedAt);
  if (h.lastError) l.lastError = h.lastError;
  if (h.attempts) l.attempts = Number(h.attempts);
  if (h.orphanAt) l.orphanAt = Number(h.orphanAt);
  if (h.endRequested) l.endRequested = h.endRequested as RevokeReason;
  if (h.givenUp) l.givenUp = Number(h.givenUp);
  return l;
}

/**
 * What a change of one lease did: its status before (undefined: no lease), and, when the caller gave an audit
 * record and the lease changed, that record as put in the bucket's audit outbox at `at` (Redis ms), for
 * AuditLog.appendOutbox.
 */
export interface LeaseChange {
  before: LeaseStatus | undefined;
  recorded?: { member: string; at: number };
}

export type CreateResult = { kind: 'ok'; now: number } | { kind: CreateRefusal };
/** `stale`: the task under that id is not the incarnation the caller decided on. */
export type CreateRefusal = 'no_task' | 'stale' | 'task_closed' | 'limit' | 'limit_total';

/** Redis persistence of leases. A lease never holds a secret, only the revoke handle. */
export class LeaseStore {
  private readonly redis: RedisClient;
  private readonly keys: Keys;
  readonly retentionMs: number;

  constructor(deps: { redis: RedisClient; keys: Keys; retentionMs: number }) {
    this.redis = deps.redis;
    this.keys = deps.keys;
    this.retentionMs = deps.retentionMs;
  }

  /**
   * Records a lease while its task is open, is the incarnation created at
   * `taskCreatedAt`, and is under `maxLeases` (live) and `maxLeasesTotal`
   * (over its life): `active`
   * with its expiry (nothing upstream), or `issuing` (the intent, written
   * before the upstream call) with the orphan window after which the sweeper
   * treats the issuance as interrupted. `member`: the issue record's outbox member (outboxMember), put in
   * the bucket's audit outbox at `now` when the lease is recorded (lease-create.lua).
   */
  async create(
    lease: LeaseFixed,
    opts: {
      status: 'active' | 'issuing';
      expiresAt: number;
      handle: LeaseRecord['handle'];
      orphanMs?: number;
      maxLeases: number;
      maxLeasesTotal: number;
      taskCreatedAt?: number;
      member?: string;
    },
  ): Promise<CreateResult> {
    const bucket = this.keys.bucketOfTask(lease.taskId);
    const keys = [
      this.keys.task(lease.taskId),
      this.keys.lease(lease.leaseId),
      this.keys.taskLeases(lease.taskId),
      this.keys.liveLeases(bucket),
      this.keys.taskLeasesLegacy(lease.taskId),
    ];
    // Issued under an approval: indexed for quarantining its approver (the outbox key comes first, used or not).
    if (opts.member || lease.approvedBy !== undefined) keys.push(this.keys.auditOutbox(bucket));
    if (lease.approvedBy !== undefined) keys.push(this.keys.approvedLeases(bucket));
    const res = (await createScript.run(this.redis, keys, [
      JSON.stringify(lease),
      opts.status,
      opts.expiresAt,
      opts.orphanMs ?? 0,
      lease.leaseId,
      JSON.stringify(opts.handle),
      opts.maxLeases,
      lease.taskId,
      lease.provider,
      lease.role,
      opts.maxLeasesTotal,
      opts.taskCreatedAt ?? '',
      opts.member ?? '',
      this.retentionMs,
      APPROVED_INDEX_SLACK_MS,
    ])) as [string, number?];
    return res[0] === 'ok' ? { kind: 'ok', now: Number(res[1]) } : { kind: res[0] as CreateRefusal };
  }

  /**
   * Records the upstream's answer on an `issuing` lease (see lease-activate.lua). `member`: the issue
   * record's outbox member, put in the bucket's audit outbox at `at` when the credential is the caller's (`ok`).
   */
  async activate(
    lease: Pick<LeaseFixed, 'leaseId' | 'taskId'>,
    patch: { handle: LeaseRecord['handle']; expiresAt: number },
    member = '',
  ): Promise<{ kind: 'ok'; at: number } | { kind: 'revoke'; reason: RevokeReason } | { kind: 'gone'; status?: LeaseStatus }> {
    const bucket = this.keys.bucketOfTask(lease.taskId);
    const keys = [
      this.keys.lease(lease.leaseId),
      this.keys.task(lease.taskId),
      this.keys.liveLeases(bucket),
      this.keys.leasesRevoking(bucket),
    ];
    if (member) keys.push(this.keys.auditOutbox(bucket));
    const res = (await activateScript.run(this.redis, keys, [JSON.stringify(patch.handle), patch.expiresAt, lease.leaseId, member])) as [
      string,
      (string | number)?,
    ];
    if (res[0] === 'ok') return { kind: 'ok', at: Number(res[1]) };
    if (res[0] === 'revoke') return { kind: 'revoke', reason: res[1] as RevokeReason };
    return { kind: 'gone', ...(res[1] ? { status: res[1] as LeaseStatus } : {}) };
  }

  /**
   * Gives up an issuance past its orphan deadline (Redis's clock), atomically with its state: a later
   * activation is refused, an earlier one wins. `handle` is the raw handle JSON to revoke with.
   */
  async giveUp(
    leaseId: string,
  ): Promise<{ kind: 'given_up'; handle: string } | { kind: 'early' | 'no_lease' } | { kind: 'moved'; status: LeaseStatus }> {
    if (this.keys.bucketOfId(leaseId) === undefined) return { kind: 'no_lease' };
    const res = (await giveUpScript.run(this.redis, [this.keys.lease(leaseId)], [])) as string[];
    if (res[0] === 'given_up') return { kind: 'given_up', handle: res[1]! };
    if (res[0] === 'early' || res[0] === 'no_lease') return { kind: res[0] };
    return { kind: 'moved', status: res[0] as LeaseStatus };
  }

  /**
   * Ends a given-up issuance `failed`, unless a late activation recorded a handle other than `handle`
   * (the one revoked). Returns 'ended_now' when this call ended it, 'moved' for another handle, else the
   * status it has (e.g. 'failed' when its issuing process ended it first).
   */
  async failIssuance(
    leaseId: string,
    handle: string,
    lastError: string,
    record?: OutboxEvent,
  ): Promise<{ kind: 'ended_now'; recorded?: { member: string; at: number } } | { kind: 'moved' | LeaseStatus | undefined }> {
    const bucket = this.keys.bucketOfId(leaseId);
    if (bucket === undefined) return { kind: undefined };
    const member = record ? outboxMember(record) : '';
    const res = (await failIssuanceScript.run(
      this.redis,
      [this.keys.lease(leaseId), this.keys.liveLeases(bucket)],
      [handle, leaseId, this.keys.base(bucket), this.retentionMs, lastError, member],
    )) as [string, number] | 'moved' | LeaseStatus | null;
    if (Array.isArray(res)) return { kind: 'ended_now', ...(member ? { recorded: { member, at: Number(res[1]) } } : {}) };
    return { kind: res ?? undefined };
  }

  async get(leaseId: string): Promise<LeaseRecord | undefined> {
    if (this.keys.bucketOfId(leaseId) === undefined) return undefined;
    return leaseFromHash(await this.redis.hgetall(this.keys.lease(leaseId)));
  }

  async getMany(leaseIds: readonly string[]): Promise<LeaseRecord[]> {
    const ids = leaseIds.filter((id) => this.keys.bucketOfId(id) !== undefined);
    if (ids.length === 0) return [];
    // One command per lease; auto-pipelining sends them together (and a Cluster routes each by its slot).
    const all = await Promise.all(ids.map((id) => this.redis.hgetall(this.keys.lease(id))));
    return all.map(leaseFromHash).filter((l): l is LeaseRecord => l !== undefined);
  }

  /** Status and fields the hot paths need (introspection). */
  async status(leaseId: string): Promise<LeaseStatus | undefined> {
    if (this.keys.bucketOfId(leaseId) === undefined) return undefined;
    return ((await this.redis.hget(this.keys.lease(leaseId), 'status')) ?? undefined) as LeaseStatus | undefined;
  }

  /**
   * Ends one lease (revoked, expired, failed); revokedAt on Redis's clock. `record`: its audit record, put
   * in the audit outbox in the same step if this call ends it (LeaseChange.recorded).
   */
  async end(
    leaseId: string,
    status: 'revoked' | 'expired' | 'failed',
    fields: { reason?: RevokeReason | undefined; lastError?: string | undefined } = {},
    record?: OutboxEvent,
  ): Promise<LeaseChange> {
    const extra: Record<string, string> = fields.lastError === undefined ? {} : { lastError: fields.lastError };
    return this.update(leaseId, status, fields.reason, extra, true, record);
  }

  /**
   * Updates a live lease (revoking, revoke_failed with the error and attempt count). `record`: an audit
   * record, put in the audit outbox in the same step if the lease is still live (LeaseChange.recorded).
   */
  async mark(
    leaseId: string,
    fields: { status?: LeaseStatus; reason?: RevokeReason; lastError?: string; attempts?: number },
    record?: OutboxEvent,
  ): Promise<LeaseChange> {
    const extra: Record<string, string | number> = {};
    if (fields.lastError !== undefined) extra.lastError = fields.lastError;
    if (fields.attempts !== undefined) extra.attempts = fields.attempts;
    return this.update(leaseId, fields.status, fields.reason, extra, false, record);
  }

  /**
   * Asks for a lease to end: a live one goes to `revoking`; an `issuing` one
   * is marked, and its activation hands it to revocation. `withdraw`: an
   * outbox member taken out in the same step (the issue record of a
   * credential that was not handed out after all).
   */
  async requestEnd(
    leaseId: string,
    reason: RevokeReason,
    withdraw = '',
  ): Promise<{ kind: 'revoking'; reason: RevokeReason } | { kind: 'deferred' | 'ended' | 'no_lease' }> {
    const bucket = this.keys.bucketOfId(leaseId);
    if (bucket === undefined) return { kind: 'no_lease' };
    const keys = [this.keys.lease(leaseId), this.keys.leasesRevoking(bucket)];
    if (withdraw) keys.push(this.keys.auditOutbox(bucket));
    const res = (await requestEndScript.run(this.redis, keys, [reason, leaseId, withdraw])) as string[];
    return res[0] === 'revoking'
      ? { kind: 'revoking', reason: res[1] as RevokeReason }
      : { kind: res[0] as 'deferred' | 'ended' | 'no_lease' };
  }

  /**
   * Ends one page of leases of one bucket in one step (leases-end.lua): live
   * leases of `localKinds` (nothing upstream) end with `status`; other live
   * ones are marked `revoking` and returned in `handoff` for the worker;
   * `issuing` and ended ones are skipped. `now` is Redis's time. `records`:
   * the audit record of each lease it ended, put in the bucket's audit outbox
   * at `now` (AuditLog.appendOutbox appends them); `providers`: each one's
   * provider, in the same order.
   */
  async endPage(
    bucket: number,
    leaseIds: readonly string[],
    status: 'revoked' | 'expired',
    reason: RevokeReason,
    localKinds: string,
  ): Promise<{ now: number; providers: string[]; handoff: string[]; records: string[] }> {
    if (leaseIds.length === 0) return { now: 0, providers: [], handoff: [], records: [] };
    const [now, providers, handoff, records] = (await endPageScript.run(
      this.redis,
      [this.keys.liveLeases(bucket)],
      [this.keys.base(bucket), status, reason, this.retentionMs, localKinds, ...leaseIds],
    )) as [number, string[], string[], string[]];
    return { now: Number(now), providers, handoff, records };
  }

  /**
   * The leases of `bucket` issued under an approval (Keys.approvedLeases) that have not ended, a page at a time,
   * each with its status and approver. Entries of ended or purged leases are dropped as they are read: only a
   * live lease is worth finding again; so are those whose credential has died (`now`, Redis ms, past the
   * entry's score and its slack), unread: the sweeper ends their leases.
   */
  async *approvedIn(
    bucket: number,
    now: number,
    count = 500,
  ): AsyncGenerator<{ leaseId: string; status: LeaseStatus; approvedBy: string }[]> {
    const key = this.keys.approvedLeases(bucket);
    let cursor = '0';
    do {
      const [next, flat] = await this.redis.zscan(key, cursor, 'COUNT', count);
      cursor = next;
      const ids: string[] = [];
      const gone: string[] = [];
      for (let i = 0; i + 1 < flat.length; i += 2) {
        const id = flat[i]!;
        if (this.keys.bucketOfId(id) !== bucket) continue;
        if (Number(flat[i + 1]) < now - APPROVED_INDEX_SLACK_MS) gone.push(id);
        else ids.push(id);
      }
      const fields = await Promise.all(ids.map((id) => this.redis.hmget(this.keys.lease(id), 'status', 'd')));
      const live: { leaseId: string; status: LeaseStatus; approvedBy: string }[] = [];
      ids.forEach((leaseId, i) => {
        const [status, d] = fields[i]!;
        if (!status || !d || ENDED.has(status as LeaseStatus)) gone.push(leaseId);
        else {
          const { approvedBy } = JSON.parse(d) as LeaseFixed;
          if (approvedBy !== undefined) live.push({ leaseId, status: status as LeaseStatus, approvedBy });
        }
      });
      if (gone.length > 0) await this.redis.zrem(key, ...gone);
      if (live.length > 0) yield live;
    } while (cursor !== '0');
  }

  /** Number of leases not yet ended, across buckets. */
  async liveCount(): Promise<number> {
    const counts = await Promise.all(Array.from({ length: this.keys.buckets }, (_, b) => this.redis.zcard(this.keys.liveLeases(b))));
    return counts.reduce((a, b) => a + b, 0);
  }

  static isEnded(status: LeaseStatus): boolean {
    return ENDED.has(status);
  }

  private async update(
    leaseId: string,
    status: LeaseStatus | undefined,
    reason: RevokeReason | undefined,
    extra: Record<string, string | number>,
    ending: boolean,
    record: OutboxEvent | undefined,
  ): Promise<LeaseChange> {
    const bucket = this.keys.bucketOfId(leaseId);
    if (bucket === undefined) return { before: undefined };
    const member = record ? outboxMember(record) : '';
    const res = (await updateScript.run(
      this.redis,
      [this.keys.lease(leaseId), this.keys.liveLeases(bucket)],
      [ending ? this.retentionMs : 0, leaseId, this.keys.base(bucket), status ?? '', reason ?? '', member, ...Object.entries(extra).flat()],
    )) as [LeaseStatus, number] | LeaseStatus | null;
    if (Array.isArray(res)) return { before: res[0], recorded: { member, at: Number(res[1]) } };
    return { before: res ?? undefined };
  }
}
