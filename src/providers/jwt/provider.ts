import type { LoadedConfig } from '../../config/load.ts';
import { conflict } from '../../errors.ts';
import type { SigningKeyStore } from '../../signing/key-store.ts';
import type { IssueRequest, IssueResult, Provider, ProviderExtras, RotationResult, StartedIssue } from '../types.ts';
import type { JwtRoleConfig } from './config.ts';

/**
 * RFC 8693 `act` claim for a delegation chain, outermost = the agent that
 * delegated most recently: C acting for B acting for A → { sub: B, act: { sub: A } }.
 */
export function actClaim(delegators: readonly string[]): Record<string, unknown> | undefined {
  let act: Record<string, unknown> | undefined;
  for (let i = delegators.length - 1; i >= 0; i--) act = act ? { sub: delegators[i], act } : { sub: delegators[i] };
  return act;
}

interface RotationTimes {
  leadMs: number;
  maxTokenTtlMs: number;
  graceMs: number;
}

/**
 * The built-in provider: RFC 9068 JWT access tokens signed by the broker.
 * Nothing upstream: revocation marks the lease and introspection answers
 * inactive at once. A token verified offline stays valid until `exp`, which
 * is why jwt roles keep short TTLs.
 */
export class JwtProvider implements Provider<JwtRoleConfig> {
  readonly kind = 'jwt' as const;
  readonly minTtlSeconds = 1;
  readonly upstream = false;
  private readonly keys: SigningKeyStore;
  private readonly issuer: string;
  private readonly rotation: RotationTimes;

  constructor(deps: { keys: SigningKeyStore; issuer: string; rotation: RotationTimes }) {
    this.keys = deps.keys;
    this.issuer = deps.issuer;
    this.rotation = deps.rotation;
  }

  revocable(): boolean {
    return true;
  }

  issue(req: IssueRequest<JwtRoleConfig>): Promise<IssueResult> {
    return this.start(req).done;
  }

  /** The claims are fixed before signing, so the lease (its expiry = `exp`) can be recorded while it runs. */
  start(req: IssueRequest<JwtRoleConfig>): StartedIssue {
    // iat/exp on Redis's clock (the lease expiry is decided on it too).
    const iat = Math.floor(this.keys.now() / 1000);
    // Never past the task's deadline: the TTL was clamped to the time left when the request was decided, and
    // everything since (policy, an approval's lookup and use, each a Redis round trip a loaded Redis answers late)
    // would otherwise be added past it, as would the 1-s minimum with under a second left. A verifier offline
    // accepts the token until `exp`, whatever became of its task.
    const exp = Math.min(iat + req.ttlSeconds, Math.floor(req.task.expiresAt / 1000));
    // The deadline falls within this second: a token would be dead on arrival (`exp` not after `iat`). Refused as
    // an ended task is, before anything is recorded (this runs before the lease is created).
    if (exp <= iat) throw conflict('task_not_open', `Task ${req.task.taskId} ends within the second: no credential can live past it.`);
    const scope = req.scopes.join(' ');
    const act = actClaim(req.task.delegators);
    const signed = this.keys.sign(
      { typ: 'at+jwt' },
      {
        iss: this.issuer,
        sub: req.agent,
        aud: req.role.audience,
        exp,
        iat,
        jti: req.leaseId,
        client_id: req.agent,
        scope,
        task_id: req.task.taskId,
        ...(act ? { act } : {}),
      },
    );
    const done = signed.then((token) => ({
      credentials: { access_token: token, token_type: 'Bearer', expires_in: Math.max(0, exp - iat), scope },
      handle: {},
      expiresAt: exp * 1000,
    }));
    return { handle: {}, expiresAt: exp * 1000, done };
  }

  async revoke(): Promise<void> {
    // Nothing upstream: the lease status is what introspection checks.
  }

  async rotate(_distribute?: unknown, opts: { immediate?: boolean } = {}): Promise<RotationResult> {
    const r = await this.keys.rotate({ ...this.rotation, immediate: opts.immediate === true });
    return {
      target: 'signing-key',
      rotated: ['signing-key'],
      detail: { kid: r.kid, activatesAt: new Date(r.activateAt).toISOString(), retiring: r.retired, immediate: opts.immediate === true },
      secret: {},
    };
  }

  async close(): Promise<void> {}
}

/** The longest TTL (ms) of a token an instance with `config` signs: its longest jwt role maxTtlSeconds (0: none). */
export function longestJwtTtlMs(config: LoadedConfig): number {
  const jwtTtls = Object.values(config.roles).flatMap((r) => (r.provider === 'jwt' ? [r.maxTtlSeconds] : []));
  return Math.max(0, ...jwtTtls) * 1000;
}

/** Factory used by the jwt descriptor. */
export function createJwtProvider(extra: ProviderExtras): JwtProvider {
  const keys = extra.signing as SigningKeyStore;
  const config = extra.config as LoadedConfig;
  const settings = config.providers.jwt;
  return new JwtProvider({
    keys,
    issuer: config.server.publicUrl,
    rotation: {
      leadMs: settings.publishLeadSeconds * 1000,
      // At least 60 s; each key's own record (the longest TTL any instance signed with) may add to it.
      maxTokenTtlMs: Math.max(60_000, longestJwtTtlMs(config)),
      graceMs: settings.retireGraceSeconds * 1000,
    },
  });
}
