import { createHash } from 'node:crypto';

/** STS's pattern for RoleSessionName and SourceIdentity: `[\w+=,.@-]*`. */
const NAME_CHAR = /[\w+=,.@-]/;
/** STS's pattern for tag keys and values: letters, spaces, digits and `_.:/=+-@`. */
const TAG_DISALLOWED = /[^\p{L}\p{Z}\p{N}_.:/=+\-@]/gu;

const shortHash = (s: string) => createHash('sha256').update(s).digest('hex').slice(0, 8);

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
 * RoleSessionName for a lease: `jit-<leaseId>`. It is unique per lease, so the
 * `aws:userid` (`ROLEID:<session>`) that revocation denies names exactly this
 * credential, and CloudTrail entries lead straight back to the lease.
 */
export function sessionNameFor(leaseId: string): string {
  return fit(nameSafe(`jit-${leaseId}`), leaseId);
}

/**
 * SourceIdentity for an agent: its identity without the URI scheme, with
 * characters STS refuses replaced (`spiffe://example.org/agent/x` →
 * `example.org-agent-x`). It survives role chaining, so whatever the agent
 * does downstream stays attributable to it.
 */
export function sourceIdentityFor(agent: string): string {
  const bare = agent.replace(/^[a-z][a-z0-9+.-]*:\/\//i, '');
  const name = fit(nameSafe(bare).replace(/^-+|-+$/g, ''), agent);
  // STS reserves the aws: prefix (":" is already replaced, this is belt and braces).
  return /^aws:/i.test(name) ? `x-${name}`.slice(0, 64) : name;
}

/** A tag value STS accepts: disallowed characters become `_`, at most 256 chars. */
export function tagValue(value: string): string {
  return value.replace(TAG_DISALLOWED, '_').slice(0, 256);
}
