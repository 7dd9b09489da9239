import { ConfigError } from '../../errors.ts';
import type { Logger } from '../../logger.ts';
import type { LeaseRecord } from '../../leases/types.ts';
import { Keys } from '../../redis/keys.ts';
import type { IssueIntent, IssueRequest, IssueResult, Provider, ProviderContext, RotationJournal, RotationResult } from '../types.ts';
import { VAULT_MAX_REQUEST_DURATION_SECONDS, vaultSettingsSchema, type VaultRoleConfig, type VaultSettings } from './config.ts';
import { issueDynamicSecret } from './dynamic-secret.ts';
import { checkExtraCaFile } from './ca-file.ts';
import { issueError } from './errors.ts';
import { revokeHandle } from './revoke.ts';
import { rotateSecretId, useSecretId } from './rotate.ts';
import { skipVerify } from './transport.ts';
import { VaultSession } from './session.ts';
import { issueTokenRole } from './token-role.ts';

export type { VaultRoleConfig, VaultSettings } from './config.ts';

/**
 * Credentials from HashiCorp Vault: child tokens with a role's policies
 * (`token:` roles) and dynamic secrets (`path:` roles). Both are revocable
 * upstream: tokens by accessor, dynamic secrets by their Vault lease.
 * See docs/providers/vault.md.
 */
export class VaultProvider implements Provider<VaultRoleConfig> {
  readonly kind = 'vault' as const;
  readonly minTtlSeconds = 1;
  readonly upstream = true;
  private readonly session: VaultSession;
  private readonly logger: Logger;
  private readonly issueTtl: number;
  private readonly now: () => number;
  private readonly maxRequestMs: number;

  constructor(
    session: VaultSession,
    logger: Logger,
    opts: { issueTtlSeconds: number; clock?: (() => number) | undefined; maxRequestDurationSeconds?: number },
  ) {
    this.session = session;
    this.logger = logger;
    this.issueTtl = opts.issueTtlSeconds;
    this.now = opts.clock ?? Date.now;
    this.maxRequestMs = (opts.maxRequestDurationSeconds ?? VAULT_MAX_REQUEST_DURATION_SECONDS) * 1000;
  }

  revocable(): boolean {
    return true;
  }

  /**
   * Nothing of the credential is known before Vault answers (Vault cannot be
   * searched by token metadata without sudo over every token), so it is made
   * short-lived instead: an issuance interrupted before the lease records it
   * leaves a token that dies within `issueTtlSeconds`.
   */
  intent(): IssueIntent {
    return { handle: {}, orphanMs: (this.issueTtl + 30) * 1000 };
  }

  issue(req: IssueRequest<VaultRoleConfig>): Promise<IssueResult> {
    return req.role.token
      ? issueTokenRole(this.session, req, this.issueTtl, this.now)
      : issueDynamicSecret(this.session, req, this.logger, this.issueTtl, this.now);
  }

  /** The lease is recorded: extend the short-lived token (or reader token) to the granted TTL. */
  async confirm(req: IssueRequest<VaultRoleConfig>, result: IssueResult): Promise<void> {
    const accessor = result.handle.accessor;
    if (req.ttlSeconds <= this.issueTtl || typeof accessor !== 'string') return;
    try {
      // Capped by Vault at the token's explicit max TTL (the granted TTL from creation).
      await this.session.call((c) => c.write('auth/token/renew-accessor', { accessor, increment: `${req.ttlSeconds}s` }));
    } catch (err) {
      throw issueError(err, 'extending the new token to its granted TTL');
    }
  }

  revoke(lease: LeaseRecord): Promise<void> {
    return revokeHandle(this.session, lease);
  }

  /** At TTL end Vault ends the credential by itself; revoking too keeps both sides in step and is idempotent. */
  expire(lease: LeaseRecord): Promise<void> {
    return revokeHandle(this.session, lease);
  }

  /** Vault is initialized, unsealed and reachable, and the broker holds a token. */
  async ready(): Promise<boolean> {
    if (!this.session.loggedIn) return false;
    try {
      // node-vault resolves sys/health with the body for every status code.
      const h = await this.session.anonymous().read('sys/health?standbyok=true');
      return h?.initialized === true && h?.sealed === false;
    } catch {
      return false;
    }
  }

  rotate(
    distribute?: (secret: Record<string, string>) => Promise<void>,
    _opts?: { immediate?: boolean },
    journal?: RotationJournal,
  ): Promise<RotationResult> {
    return rotateSecretId(this.session, this.logger, distribute, journal, { now: this.now, withinMs: this.maxRequestMs });
  }

  useSecret(secret: Record<string, string>): Promise<void> {
    return useSecretId(this.session, secret);
  }

  /** Accessor of the broker's current Vault token (an identifier, not a secret). */
  get tokenAccessor(): string | undefined {
    return this.session.accessor;
  }

  async close(): Promise<void> {
    this.session.close();
  }
}

/**
 * Creates the Vault provider and logs in. Credentials Vault refuses, and a config that can never work (a
 * malformed address, an unreadable NODE_EXTRA_CA_CERTS), fail startup (ConfigError naming the key); an
 * unreachable or sealed Vault, or one whose certificate the broker does not trust, does not: the provider
 * reports not ready, its roles answer 502 upstream_unavailable, and it keeps trying (session.ts).
 */
export async function createVaultProvider(settings: VaultSettings, ctx: ProviderContext): Promise<VaultProvider> {
  const parsed = vaultSettingsSchema.safeParse(settings);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new ConfigError(['providers', 'vault', ...issue.path.map(String)].join('.'), issue.message);
  }
  const logger = ctx.logger.child({ provider: 'vault' });
  checkExtraCaFile(parsed.data.address);
  if (skipVerify() && parsed.data.address.startsWith('https:')) {
    // Said once, loudly: anyone on the path to Vault could then read the broker's token and every secret it issues.
    const at = new URL(parsed.data.address);
    at.username = '';
    at.password = '';
    logger.warn(`vault: VAULT_SKIP_VERIFY is set: certificate checks are off for Vault at ${at.origin}${at.pathname}`);
  }
  const session = new VaultSession(parsed.data, logger);
  try {
    await session.start();
  } catch (err) {
    // After a rotation the configured secret-id is destroyed and the rotated one waits in Redis, sealed
    // with the KEK; startup switches to it right after the providers are created (useSecret, called by
    // RotationService.applyDistributedSecrets, which fails startup if it cannot decrypt or use it).
    // Only when no rotated secret exists is the refusal a config error.
    if (
      !(err instanceof ConfigError) ||
      !session.approle ||
      !ctx.redis ||
      !(await ctx.redis.exists(new Keys(ctx.keyPrefix).secrets('vault')))
    )
      throw err;
    logger.warn('vault: the configured AppRole secret-id was refused; switching to the rotated one distributed in Redis');
  }
  return new VaultProvider(session, logger, {
    issueTtlSeconds: parsed.data.issueTtlSeconds,
    clock: ctx.clock,
    maxRequestDurationSeconds: parsed.data.maxRequestDurationSeconds,
  });
}
