import type { RoleConfig } from '../providers/index.ts';

/** Names an object inherits: never roles, whatever a caller sends (`constructor`, `__proto__`, ...). */
export const RESERVED_NAMES: ReadonlySet<string> = new Set(['__proto__', 'constructor', 'prototype']);

/**
 * The configured role `name`, looked up as an own property only, so a name
 * that an object merely inherits (`toString`, `hasOwnProperty`, ...) is no role.
 */
export function roleOf(roles: Readonly<Record<string, RoleConfig>>, name: string): RoleConfig | undefined {
  return Object.hasOwn(roles, name) ? roles[name] : undefined;
}
