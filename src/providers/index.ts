import { awsDescriptor } from './aws/descriptor.ts';
import { jwtDescriptor } from './jwt/descriptor.ts';
import type { ProviderDescriptor } from './types.ts';
import { vaultDescriptor } from './vault/descriptor.ts';

/**
 * Every provider kind the broker knows, in one static list. The config
 * schema, the registry, the scope rules, rotation and revocation all read
 * from here; adding an upstream is adding a folder with a `descriptor.ts`.
 */
export const PROVIDERS = [jwtDescriptor, awsDescriptor, vaultDescriptor] as const;

/** The descriptor of `kind` (undefined for an unknown kind). */
export function descriptorOf(kind: string): ProviderDescriptor | undefined {
  return (PROVIDERS as readonly ProviderDescriptor[]).find((d) => d.kind === kind);
}

/** A role as configured: the union of every provider's role shape. */
export type RoleConfig = (typeof PROVIDERS)[number] extends infer D ? (D extends ProviderDescriptor<infer R> ? R : never) : never;
