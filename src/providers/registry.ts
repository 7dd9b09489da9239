import type { LoadedConfig } from '../config/load.ts';
import type { RoleConfig } from '../config/schema.ts';
import type { SigningKeyStore } from '../signing/key-store.ts';
import { JwtProvider } from './jwt/provider.ts';
import type { Provider, ProviderContext } from './types.ts';

/**
 * Upstream providers live in their own folders (providers/<kind>/index.ts)
 * and are loaded only when configured, so a jwt-only broker never loads the
 * AWS SDK or node-vault. A configured provider whose folder is missing fails
 * startup with a clear message.
 */
async function loadUpstream(kind: string, factory: string, settings: unknown, ctx: ProviderContext, extra?: unknown): Promise<Provider> {
  let mod: Record<string, unknown>;
  try {
    mod = (await import(new URL(`./${kind}/index.ts`, import.meta.url).href)) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`providers.${kind} is configured but the ${kind} provider could not be loaded: ${(err as Error).message}`);
  }
  const create = mod[factory] as ((s: unknown, c: ProviderContext, x?: unknown) => Promise<Provider> | Provider) | undefined;
  if (typeof create !== 'function') throw new Error(`providers/${kind}/index.ts does not export ${factory}`);
  return await create(settings, ctx, extra);
}

/** The configured providers by kind. Upstream providers are only loaded when configured. */
export class ProviderRegistry {
  private readonly byKind = new Map<string, Provider>();

  static async create(config: LoadedConfig, ctx: ProviderContext, signing: SigningKeyStore): Promise<ProviderRegistry> {
    const reg = new ProviderRegistry();
    const maxJwtTtl = Math.max(
      60,
      ...Object.values(config.roles)
        .filter((r) => r.provider === 'jwt')
        .map((r) => r.maxTtlSeconds),
    );
    reg.byKind.set(
      'jwt',
      new JwtProvider({
        keys: signing,
        issuer: config.server.publicUrl,
        rotation: {
          leadMs: config.providers.jwt.publishLeadSeconds * 1000,
          maxTokenTtlMs: maxJwtTtl * 1000,
          graceMs: config.providers.jwt.retireGraceSeconds * 1000,
        },
      }) as Provider,
    );
    if (config.providers.aws) {
      reg.byKind.set(
        'aws',
        await loadUpstream('aws', 'createAwsProvider', config.providers.aws, ctx, {
          // Falling back to a TokenIssueTime cut-off also cuts off unrevoked sessions of the role: that must be evidence, not just a log line.
          onDenyFallback: (e: { roleArn: string; cutoff: string; droppedEntries: number; reason: string }) =>
            ctx.audit?.({
              action: 'aws.deny_fallback',
              actor: 'broker',
              decision: 'ok',
              reason: e.reason,
              detail: { roleArn: e.roleArn, cutoff: e.cutoff, droppedEntries: e.droppedEntries },
            }),
        }),
      );
    }
    if (config.providers.vault) reg.byKind.set('vault', await loadUpstream('vault', 'createVaultProvider', config.providers.vault, ctx));
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
