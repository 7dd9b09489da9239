import type { ProviderDescriptor } from '../types.ts';
import { type JwtRoleConfig, jwtRoleSchema } from './config.ts';

/** The built-in signer: RFC 9068 access tokens; a scope is an OAuth scope in the token's `scope`. */
export const jwtDescriptor: ProviderDescriptor<JwtRoleConfig> = {
  kind: 'jwt',
  roleSchema: jwtRoleSchema,
  rotationTarget: 'signing-key',
  defaultScopes: (role) => [...(role.scopes ?? [])],
  allowedScopes: (role) => role.scopes,
  // A JWT may carry no scope: its audience is its grant.
  needsScope: () => false,
  async create(_settings, _ctx, extra) {
    const { createJwtProvider } = await import('./provider.ts');
    return createJwtProvider(extra);
  },
};
