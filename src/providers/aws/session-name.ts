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

/**
 * Fits a name into STS's 2-64 chars: too long keeps the most specific tail
 * plus a hash of the whole, so two long names never collide.
 */
function fit(name: string, original: string): string {
  if (name.length > 64) name = `${name.slice(-(64 - 9))}-${shortHash(original)}`.replace(/^-+/, '');
  if (name.length < 2) name = `x-${shortHash(original)}`;
  return name;
}

/**
 * RoleSessionName for a lease: `jit-<leaseId>`. It is unique per lease and
 * known before STS is called, so revocation can name exactly this session
 * (`aws:userid` like `*:jit-<leaseId>`) without STS's answer, and CloudTrail
 * entries lead straight back to the lease.
 */
export function sessionNameFor(leaseId: string): string {
  return fit(nameSafe(`jit-${leaseId}`), leaseId);
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

/** A tag value STS accepts: disallowed characters become `_`, at most 256 chars (informational tags only). */
export function tagValue(value: string): string {
  return value.replace(TAG_DISALLOWED, '_').slice(0, 256);
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
