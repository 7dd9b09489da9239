import type { ProviderDescriptor } from '../types.ts';
import { type VaultRoleConfig, vaultRoleSchema, vaultSettingsSchema } from './config.ts';

/** HashiCorp Vault: for a token role a scope is a Vault policy of the role; a dynamic secret takes none. */
export const vaultDescriptor: ProviderDescriptor<VaultRoleConfig> = {
  kind: 'vault',
  roleSchema: vaultRoleSchema,
  settingsSchema: vaultSettingsSchema,
  rotationTarget: 'vault',
  defaultScopes: (role) => (role.token ? [...role.token.policies] : []),
  allowedScopes: (role) => (role.token ? role.token.policies : []),
  // A token with none of the role's policies (Vault's `default` aside) can do nothing; a dynamic secret has no scopes at all.
  needsScope: (role) => role.token !== undefined,
  async create(settings, ctx) {
    const { createVaultProvider } = await import('./index.ts');
    return createVaultProvider(vaultSettingsSchema.parse(settings), ctx);
  },
};
