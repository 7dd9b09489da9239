/** A parsed SPIFFE ID (SPIFFE-ID.md section 2). */
export interface SpiffeId {
  trustDomain: string;
  path: string;
}

const TRUST_DOMAIN = /^[a-z0-9._-]+$/;
const SEGMENT = /^[A-Za-z0-9._-]+$/;

/**
 * Parses a SPIFFE ID strictly, returning the reason on failure (the reasons
 * follow go-spiffe's wording). No percent-encoding, query, fragment, port,
 * userinfo, empty or dot segments, or trailing slash.
 */
export function parseSpiffeId(id: string): SpiffeId | { error: string } {
  if (id.length === 0) return { error: 'cannot be empty' };
  if (id.length > 2048) return { error: 'longer than 2048 bytes' };
  if (!/^spiffe:\/\//i.test(id)) return { error: 'scheme is missing or invalid' };
  const rest = id.slice('spiffe://'.length);
  const slash = rest.indexOf('/');
  const td = slash === -1 ? rest : rest.slice(0, slash);
  const path = slash === -1 ? '' : rest.slice(slash);
  if (td.length === 0) return { error: 'trust domain is missing' };
  if (td.length > 255 || !TRUST_DOMAIN.test(td)) {
    return { error: 'trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores' };
  }
  if (path !== '') {
    if (path.endsWith('/')) return { error: 'path cannot have a trailing slash' };
    for (const seg of path.slice(1).split('/')) {
      if (seg === '') return { error: 'path cannot contain empty segments' };
      if (seg === '.' || seg === '..') return { error: 'path cannot contain dot segments' };
      if (!SEGMENT.test(seg)) return { error: 'path segment characters are limited to letters, numbers, dots, dashes, and underscores' };
    }
  }
  return { trustDomain: td, path };
}
