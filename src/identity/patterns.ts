/**
 * Identity patterns from config (orchestrators, admins, approvers): an exact
 * identity string, or one ending in `/*` matching any identity below that path.
 * Compiled once at startup into exact names and anchored prefixes.
 */
export class IdentityPatterns {
  private readonly exact = new Set<string>();
  private readonly prefixes: string[] = [];

  constructor(patterns: readonly string[]) {
    for (const p of patterns) {
      if (p.endsWith('/*')) this.prefixes.push(p.slice(0, -1));
      else this.exact.add(p);
    }
  }

  /** Returns the pattern that matched (for the audit record), or undefined. */
  match(identity: string): string | undefined {
    if (this.exact.has(identity)) return identity;
    for (const prefix of this.prefixes) {
      if (identity.length > prefix.length && identity.startsWith(prefix)) return `${prefix}*`;
    }
    return undefined;
  }

  matches(identity: string): boolean {
    return this.match(identity) !== undefined;
  }
}

/** The identity below a `/*` pattern (`a/b/` for `a/b/*`), or undefined for an exact identity. */
const prefixOf = (p: string): string | undefined => (p.endsWith('/*') ? p.slice(0, -1) : undefined);

/**
 * Pairs of patterns, one from each list, that some identity matches both of: equal exact identities, an exact
 * identity below a `/*` pattern, or two `/*` patterns one of which is below the other.
 */
export function overlapping(a: readonly string[], b: readonly string[]): [string, string][] {
  const out: [string, string][] = [];
  for (const p of a) {
    for (const q of b) {
      const pp = prefixOf(p);
      const qp = prefixOf(q);
      const both =
        pp === undefined && qp === undefined
          ? p === q
          : pp === undefined
            ? p.length > qp!.length && p.startsWith(qp!)
            : qp === undefined
              ? q.length > pp.length && q.startsWith(pp)
              : pp.startsWith(qp) || qp.startsWith(pp);
      if (both) out.push([p, q]);
    }
  }
  return out;
}
