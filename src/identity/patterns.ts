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
