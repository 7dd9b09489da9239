/** A parsed SPIFFE ID (SPIFFE-ID.md section 2). */
export interface SpiffeId {
  trustDomain: string;
  path: string;
}

const SCHEME = 'spiffe://';
const TRUST_DOMAIN = /^[a-z0-9._-]+$/;
const SEGMENT = /^[A-Za-z0-9._-]+$/;

/** True when `s` looks like a SPIFFE ID in any letter case: such a subject must then parse canonically. */
export function looksLikeSpiffeId(s: string): boolean {
  return s.slice(0, SCHEME.length).toLowerCase() === SCHEME;
}

/**
 * Parses a workload's SPIFFE ID in canonical form only, returning the reason
 * on failure (worded like go-spiffe). The scheme and trust domain are
 * lowercase (the spec allows no other spelling, so `SPIFFE://` or an
 * uppercase trust domain is not another name for the same workload but no
 * name at all), and the path is not empty: the contract gives identities to
 * workloads, not to trust domains. No percent-encoding, query, fragment, port,
 * userinfo, empty or dot segments, or trailing slash.
 */
export function parseSpiffeId(id: string): SpiffeId | { error: string } {
  if (id.length === 0) return { error: 'cannot be empty' };
  if (id.length > 2048) return { error: 'longer than 2048 bytes' };
  if (!id.startsWith(SCHEME)) return { error: 'scheme is missing or invalid' };
  const rest = id.slice(SCHEME.length);
  const slash = rest.indexOf('/');
  const td = slash === -1 ? rest : rest.slice(0, slash);
  const path = slash === -1 ? '' : rest.slice(slash);
  if (td.length === 0) return { error: 'trust domain is missing' };
  if (td.length > 255 || !TRUST_DOMAIN.test(td)) {
    return { error: 'trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores' };
  }
  if (path === '') return { error: 'path is missing: a workload SPIFFE ID names a workload, not a trust domain' };
  if (path.endsWith('/')) return { error: 'path cannot have a trailing slash' };
  for (const seg of path.slice(1).split('/')) {
    if (seg === '') return { error: 'path cannot contain empty segments' };
    if (seg === '.' || seg === '..') return { error: 'path cannot contain dot segments' };
    if (!SEGMENT.test(seg)) return { error: 'path segment characters are limited to letters, numbers, dots, dashes, and underscores' };
  }
  return { trustDomain: td, path };
}

/**
 * Why a SPIFFE-looking identity or pattern can match no workload, if it cannot.
 * Only canonical SPIFFE IDs ever authenticate (parseSpiffeId above), so
 * `SPIFFE://td/agent/x`, `spiffe://td/agent/x/` or `spiffe://TD/...` names
 * nobody: as a quarantine or kill-switch pattern it would stop nothing while
 * the admin believes the agent stopped, as a task's agent no token could use
 * it. `spiffe://td/*` (every workload of a trust domain) is a pattern.
 */
export function spiffeProblem(p: string): string | undefined {
  if (!looksLikeSpiffeId(p)) return undefined;
  const parsed = parseSpiffeId(p.endsWith('/*') ? `${p.slice(0, -2)}/x` : p);
  return 'error' in parsed ? `not a canonical SPIFFE ID (${parsed.error}), so no workload can match it` : undefined;
}
