import pTimeout from 'p-timeout';
import type { LoadedConfig } from '../config/load.ts';
import type { RoleConfig } from '../config/schema.ts';
import { descriptorOf, PROVIDERS } from './index.ts';
import type { Provider, ProviderContext, ProviderDescriptor } from './types.ts';

/** The configured providers by kind, built from the static descriptor list. */
export class ProviderRegistry {
  private readonly byKind = new Map<string, Provider>();

  /** Builds every configured provider (jwt always; an upstream only when `providers.<kind>` is set). */
  static async create(config: LoadedConfig, ctx: ProviderContext, signing: unknown): Promise<ProviderRegistry> {
    const reg = new ProviderRegistry();
    try {
      for (const d of PROVIDERS as readonly ProviderDescriptor[]) {
        const settings = config.providers[d.kind];
        if (d.kind !== 'jwt' && settings === undefined) continue;
        reg.byKind.set(d.kind, await d.create(settings, ctx, { signing, config }));
      }
    } catch (err) {
      await reg.close();
      throw err;
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

  /**
   * Whether each upstream answers, by kind (a provider without `ready()` is left out): what /readyz reports and
   * `jit_upstream_up` exports. A check that fails or does not answer within `withinMs` is `false`; never rejects.
   */
  async readiness(withinMs = 1000): Promise<Record<string, boolean>> {
    const out: Record<string, boolean> = {};
    for (const [kind, p] of this.byKind) if (p.ready) out[kind] = await pTimeout(p.ready(), { milliseconds: withinMs }).catch(() => false);
    return out;
  }

  /** The provider kind behind a rotation target (`signing-key` → jwt), if configured. */
  byRotationTarget(target: string): [string, Provider] | undefined {
    const d = (PROVIDERS as readonly ProviderDescriptor[]).find((x) => x.rotationTarget === target);
    const p = d && this.byKind.get(d.kind);
    return d && p ? [d.kind, p] : undefined;
  }

  /** Rotation target of a kind. */
  static targetOf(kind: string): string {
    return descriptorOf(kind)?.rotationTarget ?? kind;
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.byKind.values()].map((p) => p.close()));
  }
}
