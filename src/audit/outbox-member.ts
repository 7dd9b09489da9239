import { randomBytes } from 'node:crypto';
import { OUTBOX_ACTION_SET, type OutboxEvent } from './record.ts';

/**
 * Members of a chain's audit outbox (lib/outbox.lua): `<tag> <record JSON>`. The outbox is a sorted set, which
 * keeps one of two equal members: two decisions whose records are identical (a kill switch run twice by the
 * same admin with the same selector, a first failed revoke recorded by two jobs of one lease) would be one
 * member, and the second record would be dropped as already written. The tag makes each decision its own
 * member. It is not part of the record: the chain holds the JSON after it.
 *
 * Tags made here are this process's random prefix and a counter (unique across processes without a round
 * trip, so a member can be named before the script that adds it has answered); scripts tag the records they
 * build with their Redis time. A member that starts with `{` is a record without a tag (written before tags).
 */
const PROCESS_TAG = randomBytes(6).toString('base64url');
let counter = 0;

/** A new outbox member for `event` (an action of OUTBOX_ACTIONS: recovery would park any other as poison). */
export function outboxMember(event: OutboxEvent): string {
  if (!OUTBOX_ACTION_SET.has(event.action)) throw new Error(`audit outbox: ${event.action} is not an outbox action (OUTBOX_ACTIONS)`);
  counter = (counter + 1) % Number.MAX_SAFE_INTEGER;
  return `${PROCESS_TAG}.${counter.toString(36)} ${JSON.stringify(event)}`;
}

/**
 * What a record's identity starts with where an outbox member would be (AuditLog.appendOnce, audit-append.lua).
 * No member starts so (tags are base64url or digits), and one that does is poison (parseOutboxMember): appended
 * as an outbox record, it would be taken for an identity, written without leaving the outbox, and stay there.
 */
export const ONCE_PREFIX = 'once:';

/**
 * How long a chain's ids of records written once (`<base>audit-once`) live after the last one written: a week,
 * far longer than any retry of the step that writes them (rare: one per rollback or data loss). Handed to
 * audit-append.lua (ARGV[5]), which keeps them without expiry while a recovery step is kept in the chain, and
 * set again when the step is dropped (src/audit/kept-steps.ts).
 */
export const ONCE_KEEP_MS = 604_800_000;

/**
 * The largest member read as a record. The largest record the broker puts in an outbox is a
 * `credential.issue` with 100 scopes of 256 characters (the request schema's bounds, ~26 KB), a 2 KB
 * identity, a 512-character task id and its determining policies: under 40 KB. Four times a
 * `credential.issue` with a thousand long policy ids still fits. Above this, a member is poison: JSON.parse
 * of it would cost milliseconds per pass, every pass, and nothing the broker writes comes near it.
 */
export const OUTBOX_MEMBER_MAX_BYTES = 256 * 1024;
/** Fields of `detail` (a record's `detail` is flat: strings, finite numbers, booleans, string arrays). */
const MAX_DETAIL_KEYS = 64;

const DECISIONS: ReadonlySet<unknown> = new Set(['allow', 'deny', 'ok', 'error']);
const OPTIONAL_STRINGS = ['taskId', 'role', 'leaseId', 'reason'] as const;
/** Every field an AuditEvent has: any other field (`hash`, `seq`, `prev`, `time`, ...) makes a member poison. */
const FIELDS: ReadonlySet<string> = new Set(['action', 'actor', 'decision', 'policies', 'count', 'detail', ...OPTIONAL_STRINGS]);

const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === 'string');
const isDetailValue = (v: unknown): boolean =>
  typeof v === 'string' || typeof v === 'boolean' || (typeof v === 'number' && Number.isFinite(v)) || isStrings(v);

/**
 * The record in an outbox member, or undefined when the member is not one (poison: see src/audit/outbox.ts).
 * Strict, because the outbox is the one way into the hash-chained log that is not the broker's own code:
 * whoever can write the outbox key can put anything there (docs/audit.md, "What a Redis writer can do"). A
 * record is at most OUTBOX_MEMBER_MAX_BYTES, a JSON object with exactly AuditEvent's fields (a `hash` or
 * `seq` copied into the chained record would break verify), an action of OUTBOX_ACTIONS, a string `actor`,
 * a known `decision`, and the other fields of the types AuditEvent gives them; `detail` flat (so nothing
 * in it nests: hashing and serialising it cannot overflow the stack). Every check is iterative.
 */
export function parseOutboxMember(member: string): OutboxEvent | undefined {
  if (member.length > OUTBOX_MEMBER_MAX_BYTES || Buffer.byteLength(member) > OUTBOX_MEMBER_MAX_BYTES) return undefined;
  if (member.startsWith(ONCE_PREFIX)) return undefined;
  const json = member.startsWith('{') ? member : member.slice(member.indexOf(' ') + 1);
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  const r = v as Record<string, unknown>;
  for (const k of Object.keys(r)) if (!FIELDS.has(k)) return undefined;
  if (typeof r.action !== 'string' || !OUTBOX_ACTION_SET.has(r.action)) return undefined;
  if (typeof r.actor !== 'string' || r.actor === '' || !DECISIONS.has(r.decision)) return undefined;
  for (const f of OPTIONAL_STRINGS) if (r[f] !== undefined && typeof r[f] !== 'string') return undefined;
  if (r.policies !== undefined && !isStrings(r.policies)) return undefined;
  if (r.count !== undefined && !(typeof r.count === 'number' && Number.isSafeInteger(r.count) && r.count > 0)) return undefined;
  if (r.detail !== undefined) {
    if (typeof r.detail !== 'object' || r.detail === null || Array.isArray(r.detail)) return undefined;
    const keys = Object.keys(r.detail);
    if (keys.length > MAX_DETAIL_KEYS) return undefined;
    for (const k of keys) if (!isDetailValue((r.detail as Record<string, unknown>)[k])) return undefined;
  }
  return r as unknown as OutboxEvent;
}
