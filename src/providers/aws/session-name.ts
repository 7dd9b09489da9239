import { createHash } from 'node:crypto';

/** STS's pattern for RoleSessionName and SourceIdentity: `[\w+=,.@-]*`. */
const NAME_CHAR = /[\w+=,.@-]/;
/** STS's pattern for tag keys and values: letters, spaces, digits and `_.:/=+-@`. */
const TAG_DISALLOWED = /[^\p{L}\p{Z}\p{N}_.:/=+\-@]/gu;
/** A task id as the broker makes them: `[A-Za-z0-9._:-]`, sub-tasks joined by `~`. */
const TASK_ID = /^[A-Za-z0-9._:~-]+$/;
/** A SPIFFE ID in canonical form: lower-case trust domain, path segments of `[A-Za-z0-9._-]`. */
const SPIFFE_ID = /^spiffe:\/\/([a-z0-9._-]+)((?:\/[A-Za-z0-9._-]+)+)$/;

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');
const shortHash = (s: string) => sha256(s).slice(0, 8);

/** Replaces every run of characters STS refuses in names with one `-`. */
function nameSafe(s: string): string {
  let out = '';
  let dash = false;
  for (const ch of s) {
    if (NAME_CHAR.test(ch)) {
      out += ch;
      dash = false;
    } else if (!dash) {
      out += '-';
      dash = true;
    }
  }
  return out;
}

/** Lengths of the agent and task keys in a session name (base32 characters: 50 and 40 bits). */
export const AGENT_KEY_CHARS = 10;
export const TASK_KEY_CHARS = 8;
const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';

/** The first `chars` base32 characters (lower case, 5 bits each) of SHA-256 of `s`. */
function base32Hash(s: string, chars: number): string {
  const bytes = createHash('sha256').update(s).digest();
  let out = '';
  for (let bit = 0; out.length < chars; bit += 5) {
    const i = bit >> 3;
    const v = ((bytes[i]! << 8) | (bytes[i + 1] ?? 0)) >> (11 - (bit & 7));
    out += BASE32[v & 31];
  }
  return out;
}

/**
 * The key of an agent in session names: 10 base32 characters of SHA-256 of
 * the identity (50 bits), so one `aws:userid` wildcard can deny every session
 * of the agent on a role, and two agents' keys practically never meet.
 */
export const agentKeyFor = (agent: string) => base32Hash(`agent\n${agent}`, AGENT_KEY_CHARS);
/** The key of a task in session names (40 bits; it only has to differ between the tasks of one agent). */
export const taskKeyFor = (taskId: string) => base32Hash(`task\n${taskId}`, TASK_KEY_CHARS);

/**
 * RoleSessionName for a lease: `jit-<agent key>-<task key>-<leaseId>` (56
 * chars for a broker lease id). It is unique per lease and known before STS
 * is called, so revocation can name exactly this session (`aws:userid` like
 * `*:<session name>`) without STS's answer, and CloudTrail entries lead
 * straight back to the lease. The keys let the deny list fold many revoked
 * sessions of one task (`*:jit-<agent>-<task>-*`) or of one agent
 * (`*:jit-<agent>-*`) into one entry when the role's policy runs out of room,
 * without touching anyone else's sessions (deny-fold.ts).
 */
export function sessionNameFor(leaseId: string, agent: string, taskId: string): string {
  const prefix = `jit-${agentKeyFor(agent)}-${taskKeyFor(taskId)}-`;
  let tail = nameSafe(leaseId);
  // Too long keeps the most specific tail plus a hash of the whole, so two long lease ids never collide.
  if (prefix.length + tail.length > 64) tail = `${tail.slice(-(64 - prefix.length - 9))}-${shortHash(leaseId)}`;
  return `${prefix}${tail}`;
}

/**
 * SourceIdentity for an agent, one-to-one, because revoking an agent denies
 * every session carrying its SourceIdentity: two agents must never share one.
 * A SPIFFE ID becomes its trust domain and path with `/` written as `@`
 * (`spiffe://example.org/agent/x` → `example.org@agent@x`; SPIFFE IDs contain
 * no `@`, so this is reversible). Anything else (an OIDC `issuer#sub`, a
 * SPIFFE ID over 64 chars) becomes a readable tail, `=`, and 16 hex digits of
 * SHA-256 of the whole identity; the `=` keeps the two forms apart.
 */
export function sourceIdentityFor(agent: string): string {
  const m = SPIFFE_ID.exec(agent);
  if (m) {
    const name = `${m[1]}${m[2]!.replaceAll('/', '@')}`;
    if (name.length <= 64) return name;
  }
  const readable = nameSafe(agent.replace(/^[a-z][a-z0-9+.-]*:\/\//i, ''))
    .replace(/^-+|-+$/g, '')
    .slice(-47)
    .replace(/^-+/, '');
  return `${readable || 'id'}=${sha256(agent).slice(0, 16)}`;
}

/** A tag value kept as it is: only characters STS accepts, and no `=` (which marks a hashed value). */
const TAG_VALUE_AS_IS = /^[\p{L}\p{Z}\p{N}_.:/+\-@]*$/u;

/** The longest prefix of `s` of at most `max` UTF-16 units that does not split a surrogate pair. */
function headOf(s: string, max: number): string {
  let out = '';
  for (const ch of s) {
    if (out.length + ch.length > max) break;
    out += ch;
  }
  return out;
}

/**
 * The `tenant` and `agent` session tags, one-to-one, because an operator may
 * grant by them (attribute-based access control: `aws:PrincipalTag/tenant`):
 * two tenants or two agents must never share a value. A value that STS accepts
 * as it is (its characters, at most 256 of them) and holds no `=` is kept
 * unchanged. Anything else becomes a readable head (refused characters as `_`,
 * at most 190), `=`, and the SHA-256 of the whole value in hex: kept values hold
 * no `=`, so the two forms never meet, and two values with the same head differ
 * in the hash. (Before, refused characters became `_` and values were cut at
 * 256, so `acme!prod` and `acme_prod` got the same tag.)
 */
export function tagValue(value: string): string {
  if (value.length <= 256 && TAG_VALUE_AS_IS.test(value)) return value;
  return `${headOf(value.replace(TAG_DISALLOWED, '_'), 190)}=${sha256(value)}`;
}

/**
 * The `task` session tag for a task id, one-to-one, because revoking a task
 * denies every session carrying its tag: two tasks must never share one.
 * `~` (sub-tasks) is not a legal tag character and becomes `/`, which no task
 * id contains. An id that would not fit STS's 256 chars (deep sub-task chains
 * reach 512) becomes its first 190 chars, `=`, and the SHA-256 of the whole id;
 * task ids contain no `=`, so the two forms never meet.
 */
export function taskTagValue(taskId: string): string {
  if (TASK_ID.test(taskId) && taskId.length <= 256) return taskId.replaceAll('~', '/');
  const head = taskId.replaceAll('~', '/').replace(TAG_DISALLOWED, '_').slice(0, 190);
  return `${head}=${sha256(taskId)}`;
}
