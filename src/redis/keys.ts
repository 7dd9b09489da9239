import { createHash, randomFillSync } from 'node:crypto';
import calculateSlot from 'cluster-key-slot';
import { rootTaskId } from '../tasks/types.ts';

/** Redis Cluster's slot count. */
export const SLOTS = 16_384;

/** Slot of a key as Redis Cluster computes it (hash tag aware). */
export const slotOf = (key: string): number => calculateSlot(key);

/** CSPRNG bytes for `Keys.newRandomId`, refilled whole when used up (as crypto.randomUUID caches its randomness). */
const idPool = Buffer.alloc(4088);
let idPoolAt = idPool.length;

/** Lease and approval ids: 32 lowercase hex characters, the first four being the bucket (see `Keys.newId`). */
export const ID_PATTERN = /^[0-9a-f]{32}$/;

/**
 * Every Redis key the broker owns, in one place.
 *
 * Layout (why it looks like this):
 * - Every key starts with `<prefix>:` (contract: everything lives under the prefix).
 * - A task tree (a root task, its sub-tasks, their leases and approvals, the
 *   indexes and the audit chain they touch) lives in one **bucket**: keys
 *   `<prefix>:{<bucket tag>}:...`. Every Lua script and MULTI touches keys of
 *   one bucket only, so on a Redis Cluster each is a single-slot operation,
 *   while the buckets spread the tasks over every master. A bucket's tag is
 *   chosen so that bucket i's slot falls in the i-th of N equal slot ranges:
 *   a cluster whose masters own contiguous ranges (what `redis-cli --cluster
 *   create` makes) gets an even share of buckets on each master.
 * - The bucket of a task is derived from its root task id (the part before the
 *   first `~`: sub-task ids are `<parent>~<name>`), so a sub-task lands next to
 *   its parent. Lease and approval ids carry their bucket in their first four
 *   hex digits, so they are found from the id alone.
 * - Within a bucket, the id is always the LAST part of a key, after a kind
 *   marker no other kind marker is a prefix of: two distinct ids can never
 *   name the same key, whatever characters a caller puts in them (a task named
 *   `t:leases` cannot touch the lease set of task `t`).
 * - `<base>slot-probe:a` and `:b` are never written: scripts that reach keys
 *   they do not declare check them to learn whether a Cluster reshard is
 *   moving the bucket's slot (src/redis/lua/lib/slot.lua).
 * - No key embeds an identity string (up to 2048 characters, and an agent
 *   names its sub-tasks' agents freely): per-identity indexes are named by the
 *   identity's SHA-256 (`party`). Task ids are the only caller-chosen part of a
 *   key, bounded by their syntax (512 characters of `[A-Za-z0-9._:~-]`).
 * - List indexes (sorted sets by creation time) expire: each entry leaves once
 *   its record can no longer exist (trimmed on every write, and dropped on
 *   read when its record is gone), and the index key's own TTL is pushed to
 *   the last moment a record it lists can exist, so an idle index disappears.
 * - Broker-wide state (signing keys, quarantine list, data-loss marker, the
 *   ops audit chain, locks) lives under one global tag. Single-key state
 *   (replay markers, rate-limit counters) has no tag and spreads by key.
 */
export class Keys {
  readonly prefix: string;
  readonly buckets: number;
  private readonly bases: string[];
  private readonly globalBase: string;

  constructor(prefix: string, buckets = 16) {
    if (!Number.isInteger(buckets) || buckets < 1 || buckets > 1024) throw new Error('buckets must be an integer in 1..1024');
    this.prefix = prefix;
    this.buckets = buckets;
    this.bases = Array.from({ length: buckets }, (_, i) => `${prefix}:{${bucketTag(prefix, i, buckets)}}:`);
    this.globalBase = `${prefix}:{${prefix}}:`;
  }

  /** The bucket a task (and its whole tree) lives in. */
  bucketOfTask(taskId: string): number {
    const root = rootTaskId(taskId);
    // Slot of the root id (a CRC16), mixed, spread over the buckets: stable across processes and restarts. CRC16 is
    // linear, so ids differing in one character (`...-1`, `...-2`) had neighbouring slots, hence neighbouring buckets
    // on one master; the murmur3 finalizer spreads them over all buckets.
    return fmix32(calculateSlot(`task:${root}`)) % this.buckets;
  }

  /** The bucket encoded in a lease or approval id, or undefined for an id that cannot be ours. */
  bucketOfId(id: string): number | undefined {
    if (!ID_PATTERN.test(id)) return undefined;
    const b = Number.parseInt(id.slice(0, 4), 16);
    return b < this.buckets ? b : undefined;
  }

  /** Key base (`<prefix>:{tag}:`) of a bucket; scripts build in-bucket keys from it. */
  base(bucket: number): string {
    const b = this.bases[bucket];
    if (b === undefined) throw new Error(`no bucket ${bucket}`);
    return b;
  }

  /** A new lease or approval id in `bucket`: 4 hex digits of bucket, 28 of randomness (112 bits). */
  static newId(bucket: number, random: Buffer): string {
    return bucket.toString(16).padStart(4, '0') + random.toString('hex').slice(0, 28);
  }

  /** `newId` with 14 bytes from the CSPRNG, drawn from a pooled buffer (one OpenSSL call per 292 ids). */
  static newRandomId(bucket: number): string {
    if (idPoolAt + 14 > idPool.length) {
      randomFillSync(idPool);
      idPoolAt = 0;
    }
    idPoolAt += 14;
    return bucket.toString(16).padStart(4, '0') + idPool.toString('hex', idPoolAt - 14, idPoolAt);
  }

  private inTask(kind: string, taskId: string): string {
    return `${this.base(this.bucketOfTask(taskId))}${kind}:${taskId}`;
  }

  private inId(kind: string, id: string): string {
    const b = this.bucketOfId(id);
    if (b === undefined) throw new Error('not a broker id');
    return `${this.base(b)}${kind}:${id}`;
  }

  // --- per task (bucket of the task) ---
  /** Hash: `d` (immutable JSON), status, createdAt, expiresAt, endedAt, reason, live (lease count), subtasks (root only). */
  task(taskId: string): string {
    return this.inTask('task', taskId);
  }
  /** Sorted set of every lease id of a task, scored by issuedAt (paged reads in issue order). */
  taskLeases(taskId: string): string {
    return this.inTask('task-lease-ids', taskId);
  }
  /**
   * The plain set of lease ids the previous release keeps and reads per task: lease-create.lua writes it too (for
   * that release's workers during a rolling upgrade), task-lease-page.lua copies what only they added into `taskLeases`.
   */
  taskLeasesLegacy(taskId: string): string {
    return this.inTask('task-leases', taskId);
  }
  /** Set of the sub-task ids of a task. */
  taskChildren(taskId: string): string {
    return this.inTask('task-children', taskId);
  }
  /** Set of the pending approval ids of a task (the `tasks.maxPendingApprovals` bound). */
  taskApprovals(taskId: string): string {
    return this.inTask('task-approvals', taskId);
  }
  /** List of `<chain stream id>` of the task's audit records (evidence without scanning the chain). */
  taskAudit(taskId: string): string {
    return this.inTask('task-audit', taskId);
  }

  // --- per lease / approval (bucket from the id) ---
  /** Hash: `d` (immutable JSON), t (task id), p (provider), status, expiresAt, handle, reason, revokedAt, lastError, attempts, orphanAt, givenUp, endRequested. */
  lease(leaseId: string): string {
    return this.inId('lease', leaseId);
  }
  approval(approvalId: string): string {
    return this.inId('approval', approvalId);
  }

  // --- per bucket ---
  /** Sorted set: leases not yet ended, scored by when the sweeper must look at them (expiry, or the orphan deadline of an issuance). */
  liveLeases(bucket: number): string {
    return `${this.base(bucket)}leases-live`;
  }
  /**
   * Sorted set: the reconciler's work list of ended tasks that still had live
   * leases when they ended, scored by end time (Redis's clock). Written by the
   * script that ends the task; an entry leaves when the task's last lease ends.
   * An entry of an earlier task under the id (purged, opened again) keeps its
   * score when the new task ends: reconcile-tasks.lua tells it by that score.
   */
  tasksEnding(bucket: number): string {
    return `${this.base(bucket)}tasks-ending`;
  }
  /**
   * Sorted set: the reconciler's work list of leases `revoking` or
   * `revoke_failed`, scored by when the revocation was asked for. Written by
   * the script that records the intent; an entry leaves when the lease ends.
   */
  leasesRevoking(bucket: number): string {
    return `${this.base(bucket)}leases-revoking`;
  }
  /** Sorted set: open tasks scored by deadline (ms). */
  openTasks(bucket: number): string {
    return `${this.base(bucket)}tasks-open`;
  }
  /** Sorted set: every task scored by creation time (lists, newest first). */
  tasksByTime(bucket: number): string {
    return `${this.base(bucket)}tasks-all`;
  }
  /** Sorted set: tasks of one agent by creation time. */
  tasksByAgent(bucket: number, agent: string): string {
    return `${this.base(bucket)}tasks-by-agent:${party(agent)}`;
  }
  /** Sorted set: tasks opened by one identity by creation time. */
  tasksByOpener(bucket: number, opener: string): string {
    return `${this.base(bucket)}tasks-by-opener:${party(opener)}`;
  }
  /**
   * Sorted set: the open top-level tasks one identity opened (member: task id), scored by deadline (ms, Redis's
   * clock): the `tasks.maxOpenTasks` bound (task-reserve.lua). Not in a bucket (an opener's tasks are in all of
   * them): one key per opener, spread by key. An entry leaves when its task ends, or at its deadline.
   */
  openTasksOf(opener: string): string {
    return `${this.prefix}:open-tasks-of:${party(opener)}`;
  }
  /** Sorted set: approvals by request time (status filtered when read): what approvers and admins list. */
  approvals(bucket: number): string {
    return `${this.base(bucket)}approvals-all`;
  }
  /** Sorted set: approvals of the tasks one identity is the agent or the opener of, by request time. */
  approvalsOf(bucket: number, identity: string): string {
    return `${this.base(bucket)}approvals-of:${party(identity)}`;
  }
  /**
   * Sorted set: the leases issued under an approval, scored by the latest each one's credential can be valid
   * (their approver is in each lease's `d`): what quarantining an approver reads to revoke the credentials issued
   * on its word. Entries leave with their credential (plus a slack, lease-create.lua) and, for ended leases, when
   * read: it holds about the live approved leases, not every one of the list indexes' week.
   */
  approvedLeases(bucket: number): string {
    return `${this.base(bucket)}leases-approved`;
  }
  /** Approval index: the current approval of one exact request (task, role, scopes, ttl). */
  approvalFor(bucket: number, digest: string): string {
    return `${this.base(bucket)}approval-for:${digest}`;
  }

  // --- audit chains: one per bucket, plus the broker-wide `ops` chain ---
  auditBase(chain: AuditChain): string {
    return chain === 'ops' ? this.globalBase : this.base(chain);
  }
  auditStream(chain: AuditChain): string {
    return `${this.auditBase(chain)}audit`;
  }
  /** `<seq>:<hash>` of the chain's last record. */
  auditHead(chain: AuditChain): string {
    return `${this.auditBase(chain)}audit-head`;
  }
  /** The last HMAC seal of the chain head (JSON). */
  auditSeal(chain: AuditChain): string {
    return `${this.auditBase(chain)}audit-seal`;
  }
  /** `<seq>:<hash>` of the last record moved to the export file (the chain's first record in Redis links to it). */
  auditExported(chain: AuditChain): string {
    return `${this.auditBase(chain)}audit-exported`;
  }
  /**
   * `<seq>:<hash> <pass>` of the last record an exporter was about to append to the export file for the chain,
   * and the pass that was (set before each page's append, under the export lock, in its slot: the global one). Further than the chain's
   * export marker, a pass may have appended records and stopped before moving the marker (a crash, a stall
   * past the lock's hold): the next pass reads the end of the file and does not append those again.
   */
  auditExportPending(chain: AuditChain): string {
    return `${this.globalBase}audit-export-pending:${chain}`;
  }
  /**
   * Sorted set: the chain's audit outbox. A script that decides something (ends leases or a task) adds
   * the decision's record here (member: the record's JSON, score: Redis ms) in the same step; the append
   * that writes it to the chain removes it in its own step (audit-append.lua), and recovery appends what
   * a dead process left (src/audit/outbox.ts). Scripts build it as `<base>audit-outbox` (lib/common.lua).
   */
  auditOutbox(chain: AuditChain): string {
    return `${this.auditBase(chain)}audit-outbox`;
  }
  /**
   * Set: the identities of records written with one (`once:<id>`, AuditLog.appendOnce), so a step that is
   * retried writes each of its records once (audit-append.lua builds it as `<base>audit-once`).
   */
  auditOnce(chain: AuditChain): string {
    return `${this.auditBase(chain)}audit-once`;
  }
  /**
   * Sorted set: members of the chain's audit outbox that were not records (poison), moved here by recovery
   * (audit-outbox-park.lua) with an `audit.outbox_poison` record each; the newest PARKED_MAX are kept.
   */
  auditOutboxParked(chain: AuditChain): string {
    return `${this.auditBase(chain)}audit-outbox-parked`;
  }
  /**
   * Sorted set: tags of the intents (outboxIntent) whose outcome took their place in the chain's outbox, by
   * when (audit-outbox-swap.lua), so a swap sent again after its answer was lost adds nothing; a day's worth.
   */
  auditOutboxSwapped(chain: AuditChain): string {
    return `${this.auditBase(chain)}audit-outbox-swapped`;
  }
  /**
   * Sorted set with one member, `max`: the most a record of the chain was appended after its `time`, in ms
   * (recovered outbox records, records chained again with their original time), so an audit query by time
   * reads far enough past its `until` (src/lists/audit-query.ts). Only ever raised (ZADD GT).
   */
  auditLate(chain: AuditChain): string {
    return `${this.auditBase(chain)}audit-late`;
  }
  /** Every chain id, ops first. */
  auditChains(): AuditChain[] {
    return ['ops', ...Array.from({ length: this.buckets }, (_, i) => i)];
  }

  // --- broker-wide (global tag) ---
  signingKeys(): string {
    return `${this.globalBase}signing-keys`;
  }
  /** Random id written once per Redis dataset: its absence means Redis lost its data. */
  epoch(): string {
    return `${this.globalBase}epoch`;
  }
  /**
   * String in a bucket's slot, written with the epoch marker (src/ops/bucket-marks.ts): its absence while the
   * epoch marker holds means the Cluster master holding this bucket came back empty (a restart without
   * persistence, a failover to an empty replica) while the global slot's master kept its data. `recovering:<id>`
   * while a recovery of that loss is under way (not yet recovered).
   */
  bucketMarker(bucket: number): string {
    return `${this.base(bucket)}bucket-marker`;
  }
  /**
   * One instance's generation counter, bumped at every data-loss check: its value going back means Redis
   * went back in time (src/ops/rollback.ts). Expires a day after the instance's last check.
   */
  generation(instance: string): string {
    return `${this.globalBase}generation:${instance}`;
  }
  /**
   * List: the ids of the last rollback recoveries (newest first, a few kept). An instance that noticed a
   * rollback and finds an id it had not seen at its last good look knows another instance already
   * recorded that rollback (src/ops/recovery.ts): one `broker.data_loss` record per rollback.
   */
  rollbackRecoveries(): string {
    return `${this.globalBase}rollback-recoveries`;
  }
  /**
   * Hash: recovery id -> the `broker.data_loss` records of its rollback (JSON), stored when the recovery claims
   * the rollback (rollback-claim.lua) and written from there, each once, by it, by an instance that finds the
   * claim, or by any instance at its start; deleted once all are written, or when the id leaves `rollbackRecoveries`.
   */
  rollbackPlans(): string {
    return `${this.globalBase}rollback-plans`;
  }
  /**
   * Hash: epoch -> the records of the data loss that set that epoch (JSON), stored with the marker (loss-mark.lua)
   * and written from there, each once, by the recovery that set it or by any instance that finds them; deleted
   * once all are written.
   */
  lossRecords(): string {
    return `${this.globalBase}loss-records`;
  }
  /**
   * List (in the chain's slot): what a rollback repair did to the chain (JSON, one entry per step), stored in the
   * step that changed it (rollback-repair.lua): the records it took off the chain, to append again, the endings
   * to apply again, the chain's part of the `broker.data_loss` records. A later attempt finds the chain repaired
   * and takes them from here; deleted once the recovery is recorded.
   */
  rollbackRepair(chain: AuditChain): string {
    return `${this.auditBase(chain)}rollback-repair`;
  }
  /**
   * List (in the chain's slot): what a data-loss recovery's continuation did to the chain (JSON, one entry per
   * step), stored in the step that changed it (loss-continue.lua): the records it took off a chain started over
   * after the loss, to append again, and the chain's part of the `broker.data_loss` records. A later attempt
   * finds the chain continued and takes them from here; deleted once the loss is recorded.
   */
  lossContinued(chain: AuditChain): string {
    return `${this.auditBase(chain)}loss-continued`;
  }
  /**
   * String: set (before the step) while a recovery's per-chain work is kept and unfinished (`rollbackRepair`,
   * `lossContinued`: in the chains' own slots, too many to look at every second). The periodic data-loss check
   * looks at this one key (with `lossRecords` and `rollbackPlans`, in one EXISTS) to finish the work of a
   * recovery whose instance died; deleted once none is left.
   */
  recoveryUnfinished(): string {
    return `${this.globalBase}recovery-unfinished`;
  }
  /** Hash: settings that must not change under existing data (bucket count). */
  meta(): string {
    return `${this.globalBase}meta`;
  }
  /** Hash: quarantined identity pattern -> JSON { reason, by, at }. */
  quarantine(): string {
    return `${this.globalBase}quarantine`;
  }
  secrets(target: string): string {
    return `${this.globalBase}secrets:${target}`;
  }
  /** JSON: identifiers (never secrets) of what a running rotation of `target` retires and creates; gone once it ends cleanly. */
  rotationIntent(target: string): string {
    return `${this.globalBase}rotation-intent:${target}`;
  }
  /**
   * Secrets rotations of `target` sent upstream to be created (Vault: custom secret-ids), with when, sealed
   * under the KEK as one list; gone once none may still be valid. A key of its own, not a field of the
   * intent: an instance of a version before it rewrites the intent knowing nothing of it, and would drop it.
   */
  rotationPending(target: string): string {
    return `${this.globalBase}rotation-pending:${target}`;
  }
  lock(name: string): string {
    return `${this.globalBase}lock:${name}`;
  }
  /**
   * Counter written before a replica `WAIT` (src/redis/replica-ack.ts), in a bucket's slot or the
   * global one, so the wait covers the writes already made on that slot's master. No value is read.
   */
  replicaFence(bucket: number | 'global'): string {
    return `${bucket === 'global' ? this.globalBase : this.base(bucket)}replica-fence`;
  }
  /** The fence of a task's bucket (its tree, leases and approvals). */
  replicaFenceOfTask(taskId: string): string {
    return this.replicaFence(this.bucketOfTask(taskId));
  }
  /** Every bucket's fence and the global one: on a Cluster, one key on each master that holds broker data. */
  replicaFences(): string[] {
    return [...this.bases.keys(), 'global' as const].map((b) => this.replicaFence(b));
  }
  /** Pub/sub channel (not a key; on a Cluster PUBLISH reaches every node). */
  channel(name: string): string {
    return `${this.prefix}:events:${name}`;
  }
  /** Throwaway keys of the Redis requirements probe (redis-probe.lua): one tag of their own, so one slot. */
  probe(kind: string): string {
    return `${this.prefix}:{${this.prefix}:probe}:${kind}`;
  }
  /** Console sessions and other single-key state: no hash tag, spread by key. */
  plain(kind: string, id: string): string {
    return `${this.prefix}:${kind}:${id}`;
  }
  /** Replay marker of a token's jti. */
  replay(trust: string, jtiHash: string): string {
    return `${this.prefix}:jti:${trust}:${jtiHash}`;
  }
  /** BullMQ prefix of queue group `g` (or a named queue): its own hash tag so each queue's keys share a slot. */
  queuePrefix(group: number | string): string {
    return `${this.prefix}:{${this.prefix}:q${group}}`;
  }
}

/** How an identity appears in a key name: its SHA-256, base64url (43 characters, whatever the identity's length). */
export function party(identity: string): string {
  return createHash('sha256').update(identity).digest('base64url');
}

/** An audit chain: one per bucket, and `ops` for broker-wide events. */
export type AuditChain = number | 'ops';

/** The hash tag of bucket `i` of `n`: the first `<prefix>.<i>.<k>` whose slot falls in the i-th of n equal slot ranges. */
function bucketTag(prefix: string, i: number, n: number): string {
  const lo = Math.floor((i * SLOTS) / n);
  const hi = Math.floor(((i + 1) * SLOTS) / n);
  for (let k = 0; k < 1_000_000; k++) {
    const tag = `${prefix}.${i}.${k}`;
    const s = calculateSlot(tag);
    if (s >= lo && s < hi) return tag;
  }
  return `${prefix}.${i}`;
}

/** murmur3's 32-bit finalizer: every input bit flips about half the output bits. */
function fmix32(h: number): number {
  let x = h >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}
