import { hash } from 'node:crypto';

/** What happened, in the words the contract uses. */
export type AuditAction =
  | 'task.open'
  | 'task.complete'
  | 'task.expire'
  | 'task.revoke'
  | 'credential.issue'
  | 'credential.deny'
  | 'credential.pending'
  | 'credential.fail'
  | 'access.deny'
  | 'lease.revoke'
  | 'lease.expire'
  | 'lease.revoke_failed'
  | 'approval.decide'
  | 'rotate'
  | 'policy.reload'
  | 'aws.deny_fallback'
  | 'aws.deny_fold'
  | 'quarantine.add'
  | 'quarantine.remove'
  | 'admin.revoke'
  | 'signing.recreated'
  | 'lock.takeover'
  | 'secret.restored'
  | 'broker.data_loss'
  | 'audit.outbox_poison'
  | 'console.signin'
  | 'console.signout';

/**
 * Records of decisions that end something (a task, a lease) or change the
 * quarantine list: what a Redis that went back in time must be told again
 * (src/ops/reapply.ts). Expiries are left out: the deadlines are in Redis and pass again.
 */
export const ENDING_ACTIONS: ReadonlySet<AuditAction> = new Set<AuditAction>([
  'task.complete',
  'task.revoke',
  'lease.revoke',
  'quarantine.add',
  'quarantine.remove',
]);

/**
 * The actions whose records may sit in a chain's audit outbox (src/audit/outbox.ts): what the broker's
 * scripts build there (lib/outbox.lua callers, sweep.lua and leases-end.lua spell theirs out) and what the
 * broker puts there itself. The one list: `outboxMember` refuses any other action, and recovery parks a
 * member with another action as poison (a Redis writer's `console.signin` or `quarantine.remove` is not
 * chained). test/audit/outbox-hardening.test.ts checks that every action a Lua script writes is here.
 */
export const OUTBOX_ACTIONS = [
  'task.open',
  'task.complete',
  'task.expire',
  'task.revoke',
  'credential.issue',
  'credential.pending',
  'credential.fail',
  'lease.revoke',
  'lease.expire',
  'lease.revoke_failed',
  'approval.decide',
  'admin.revoke',
  'quarantine.add',
  'rotate',
  'policy.reload',
  'audit.outbox_poison',
] as const satisfies readonly AuditAction[];

export type OutboxAction = (typeof OUTBOX_ACTIONS)[number];
export const OUTBOX_ACTION_SET: ReadonlySet<string> = new Set<string>(OUTBOX_ACTIONS);

/** One audit record as callers describe it. Never put a secret in here. */
export interface AuditEvent {
  action: AuditAction;
  /** Caller identity string, or "broker" for the worker's own actions. */
  actor: string;
  decision: 'allow' | 'deny' | 'ok' | 'error';
  taskId?: string;
  role?: string;
  leaseId?: string;
  reason?: string;
  /** Policies that determined a policy decision. */
  policies?: string[];
  /** Repeated identical denials folded into this record (same actor, code and minute). */
  count?: number;
  detail?: Record<string, string | number | boolean | string[]>;
}

/** A record that may go to an audit outbox (OUTBOX_ACTIONS). */
export type OutboxEvent = AuditEvent & { action: OutboxAction };

/** A record as stored: the event plus its place in its chain. */
export interface AuditRecord extends AuditEvent {
  seq: number;
  time: string;
  prev: string;
  hash: string;
}

export const GENESIS = '0'.repeat(64);

/**
 * Whether `r`, parsed from JSON that Redis kept (a recovery's unfinished work), has the fields of a stored record
 * that appending it again reads: what fails this is dropped as unreadable, not appended half-formed.
 */
export function isAuditRecord(r: unknown): r is AuditRecord {
  const x = r as Partial<AuditRecord> | null;
  return (
    typeof x === 'object' &&
    x !== null &&
    typeof x.seq === 'number' &&
    typeof x.hash === 'string' &&
    typeof x.time === 'string' &&
    typeof x.action === 'string' &&
    typeof x.actor === 'string'
  );
}

/**
 * Hash of a record: SHA-256 over the previous hash, a newline and the record's
 * canonical JSON (keys sorted), as UTF-8. One-shot `crypto.hash` rather than a
 * `createHash` object: every issuance hashes a record (and the export re-hashes
 * it), and each Hash object is a native wrapper that the young-generation GC
 * must process when it dies; the one-shot call leaves none and is ~30% faster.
 */
export function hashRecord(r: Omit<AuditRecord, 'hash'>): string {
  return hash('sha256', `${r.prev}\n${canonicalJson(r)}`, 'hex');
}

/**
 * JSON with object keys sorted at every level, so the hash does not depend on
 * key order; properties whose value is undefined are left out. Built by
 * concatenation (no intermediate arrays): every issuance hashes a record.
 */
export function canonicalJson(v: unknown): string {
  if (typeof v !== 'object' || v === null) return JSON.stringify(v);
  if (Array.isArray(v)) {
    let out = '[';
    for (let i = 0; i < v.length; i++) {
      if (i > 0) out += ',';
      out += canonicalJson(v[i]) ?? ''; // as Array.prototype.join writes an undefined element
    }
    return `${out}]`;
  }
  const o = v as Record<string, unknown>;
  let out = '{';
  const keys = Object.keys(o);
  sortKeys(keys);
  for (const k of keys) {
    const x = o[k];
    if (x === undefined) continue;
    if (out.length > 1) out += ',';
    out += `${JSON.stringify(k)}:${canonicalJson(x)}`;
  }
  return `${out}}`;
}

/**
 * Sorts `keys` in place into the order `Array.prototype.sort()` gives strings
 * (UTF-16 code units). `sort()` copies the array into a work array first
 * (~1.7 KB of garbage per issuance across a record's objects, measured with
 * scripts/bench/alloc.ts); an insertion sort over a record's few keys
 * allocates nothing. Long key lists still go to `sort()`.
 */
function sortKeys(keys: string[]): void {
  if (keys.length > 24) {
    keys.sort();
    return;
  }
  for (let i = 1; i < keys.length; i++) {
    const k = keys[i]!;
    let j = i - 1;
    while (j >= 0 && keys[j]! > k) {
      keys[j + 1] = keys[j]!;
      j -= 1;
    }
    keys[j + 1] = k;
  }
}
