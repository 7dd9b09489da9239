import { randomBytes } from 'node:crypto';
import type { AuditEvent } from './record.ts';

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

/** A new outbox member for `event`. */
export function outboxMember(event: AuditEvent): string {
  counter = (counter + 1) % Number.MAX_SAFE_INTEGER;
  return `${PROCESS_TAG}.${counter.toString(36)} ${JSON.stringify(event)}`;
}

const DECISIONS: ReadonlySet<unknown> = new Set(['allow', 'deny', 'ok', 'error']);
const OPTIONAL_STRINGS = ['taskId', 'role', 'leaseId', 'reason'] as const;

/**
 * The record in an outbox member, or undefined when the member is not one (poison: see
 * src/audit/outbox.ts). A record is a JSON object with a string `action` and `actor`, a known `decision`,
 * and fields of the types AuditEvent gives them.
 */
export function parseOutboxMember(member: string): AuditEvent | undefined {
  const json = member.startsWith('{') ? member : member.slice(member.indexOf(' ') + 1);
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  const r = v as Record<string, unknown>;
  if (typeof r.action !== 'string' || r.action === '' || typeof r.actor !== 'string' || !DECISIONS.has(r.decision)) return undefined;
  for (const f of OPTIONAL_STRINGS) if (r[f] !== undefined && typeof r[f] !== 'string') return undefined;
  if (r.policies !== undefined && !(Array.isArray(r.policies) && r.policies.every((p) => typeof p === 'string'))) return undefined;
  if (r.count !== undefined && typeof r.count !== 'number') return undefined;
  if (r.detail !== undefined && (typeof r.detail !== 'object' || r.detail === null || Array.isArray(r.detail))) return undefined;
  return r as unknown as AuditEvent;
}
