import type { LoadedConfig } from '../config/load.ts';
import type { RoleConfig } from '../config/schema.ts';
import type { SigningKeyStore } from '../signing/key-store.ts';
import { JwtProvider } from './jwt/provider.ts';
import type { Provider, ProviderContext } from './types.ts';

/** The configured providers by kind. Upstream providers are only loaded when configured. */
export class ProviderRegistry {
  private readonly byKind = new Map<string, Provider>();

  static async create(config: LoadedConfig, ctx: ProviderContext, signing: SigningKeyStore): Promise<ProviderRegistry> {
    const reg = new ProviderRegistry();
    const maxJwtTtl = Math.max(60, ...Object.values(config.roles).filter((r) => r.provider === 'jwt').map((r) => r.maxTtlSeconds));
    reg.byKind.set('jwt', new JwtProvider({
      keys: signing,
      issuer: config.server.publicUrl,
      rotation: {
        leadMs: config.providers.jwt.publishLeadSeconds * 1000,
        maxTokenTtlMs: maxJwtTtl * 1000,
        graceMs: config.providers.jwt.retireGraceSeconds * 1000,
      },
    }) as Provider);
    if (config.providers.aws) {
      const { createAwsProvider } = await import('./aws/index.ts');
      reg.byKind.set('aws', await createAwsProvider(config.providers.aws, ctx) as unknown as Provider);
    }
    if (config.providers.vault) {
      const { createVaultProvider } = await import('./vault/index.ts');
      reg.byKind.set('vault', await createVaultProvider(config.providers.vault, ctx) as unknown as Provider);
    }
    return reg;
  }

  /** Registers a provider directly (tests, embedding). */
  set(kind: string, provider: Provider): void {
    this.byKind.set(kind, provider);
  }

  forRole(role: RoleConfig): Provider {
    const p = this.byKind.get(role.provider);
    if (!p) throw new Error(`provider ${role.provider} is not configured`);
    return p;
  }

  get(kind: string): Provider | undefined {
    return this.byKind.get(kind);
  }

  all(): [string, Provider][] {
    return [...this.byKind.entries()];
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.byKind.values()].map((p) => p.close()));
  }
}
