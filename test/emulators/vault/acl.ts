import type { TokenEntry, VaultState } from './state.ts';

/**
 * Just enough ACL: a token may call a path when one of its policies has a
 * pattern equal to the path, or a pattern ending in `*` that prefixes it.
 * The `root` policy allows everything. Capabilities are not modelled.
 */
export function allowed(state: VaultState, token: TokenEntry, path: string): boolean {
  if (token.policies.includes('root')) return true;
  for (const name of token.policies) {
    for (const pattern of state.policies.get(name) ?? []) {
      if (pattern.endsWith('*') ? path.startsWith(pattern.slice(0, -1)) : path === pattern) return true;
    }
  }
  return false;
}
