import { createHash } from 'node:crypto';
import { decodeJwt, decodeProtectedHeader, errors as joseErrors, jwtVerify, type JWTPayload } from 'jose';
import type { Redis } from 'ioredis';
import type { LoadedConfig } from '../config/load.ts';
import type { TrustConfig } from '../config/schema.ts';
import { unauthenticated } from '../errors.ts';
import type { Logger } from '../logger.ts';
import type { Keys } from '../redis/keys.ts';
import { KeySet } from './key-set.ts';
import { parseSpiffeId } from './spiffe-id.ts';
import type { WorkloadIdentity } from './types.ts';

/** JWT-SVID allows exactly these (JWT-SVID.md 3); no HS*, no none, no EdDSA. */
const SPIFFE_ALGS = ['RS256', 'RS384', 'RS512', 'ES256', 'ES384', 'ES512', 'PS256', 'PS384', 'PS512'];
const OIDC_ALGS = [...SPIFFE_ALGS, 'EdDSA'];
/** Header parameters we accept. Anything else (jku, jwk, x5u, x5c, crit...) is refused outright. */
const ALLOWED_HEADER = new Set(['alg', 'kid', 'typ']);

/** Why a token was refused: logged for operators, never returned to the caller. */
class IdentityRejection extends Error {
  readonly code: 'identity_invalid' | 'identity_expired' | 'identity_replayed';
  constructor(code: IdentityRejection['code'], reason: string) {
    super(reason);
    this.code = code;
  }
}

const CLIENT_DETAIL: Record<IdentityRejection['code'], string> = {
  identity_invalid: 'The workload identity token is not valid.',
  identity_expired: 'The workload identity token has expired.',
  identity_replayed: 'The workload identity token was already used.',
};

/**
 * Verifies workload identity tokens (SPIFFE JWT-SVIDs and OIDC ID tokens)
 * against the configured trust entries. The signature is always checked before
 * any claim is trusted; the unverified payload is only used to pick which
 * trust entry's keys to verify with.
 */
export class IdentityVerifier {
  private readonly spiffe = new Map<string, { trust: TrustConfig; keys: KeySet }>();
  private readonly oidc = new Map<string, { trust: TrustConfig; keys: KeySet }>();
  private readonly skew: number;
  private readonly maxLifetime: number;
  private readonly redis: Redis;
  private readonly keys: Keys;
  private readonly logger: Logger;
  /** Verified tokens without jti, reused until min(exp, cacheMs): verification is the hottest path. */
  private readonly cache = new Map<string, { identity: WorkloadIdentity; until: number }>();
  private readonly cacheMs: number;
  private static readonly CACHE_MAX = 10_000;

  constructor(config: LoadedConfig, deps: { redis: Redis; keys: Keys; logger: Logger; fetchImpl?: typeof fetch; cacheMs?: number }) {
    const opts = {
      maxAgeMs: config.identity.jwksCacheSeconds * 1000,
      cooldownMs: config.identity.jwksRefetchCooldownSeconds * 1000,
      fetchImpl: deps.fetchImpl,
    };
    for (const trust of config.trust) {
      const entry = { trust, keys: new KeySet(trust, opts) };
      if (trust.kind === 'spiffe') this.spiffe.set(trust.trustDomain!, entry);
      else this.oidc.set(trust.issuer!, entry);
    }
    this.skew = config.identity.clockSkewSeconds;
    this.maxLifetime = config.identity.maxTokenLifetimeSeconds;
    this.redis = deps.redis;
    this.keys = deps.keys;
    this.logger = deps.logger;
    this.cacheMs = deps.cacheMs ?? 30_000;
  }

  /** Loads every trust entry's keys; a broken file or inline set fails startup. */
  async init(): Promise<void> {
    await Promise.all([...this.spiffe.values(), ...this.oidc.values()].map((e) => e.keys.init()));
  }

  /**
   * Verifies `token` and returns the identity, or throws a 401 BrokerError
   * with a stable code and a detail that tells an attacker nothing.
   */
  async verify(token: string | undefined): Promise<WorkloadIdentity> {
    if (!token) throw unauthenticated('identity_missing', 'A workload identity token is required (Authorization: Bearer <jwt>).');
    const cached = this.cache.get(token);
    if (cached && cached.until > Date.now()) return cached.identity;
    try {
      return await this.verifyUncached(token);
    } catch (err) {
      if (err instanceof IdentityRejection) {
        this.logger.info({ code: err.code, reason: err.message }, 'identity rejected');
        throw unauthenticated(err.code, CLIENT_DETAIL[err.code]);
      }
      throw err;
    }
  }

  private async verifyUncached(token: string): Promise<WorkloadIdentity> {
    if (token.length > 16_384) throw new IdentityRejection('identity_invalid', 'token too large');
    let header: ReturnType<typeof decodeProtectedHeader>;
    let unverified: JWTPayload;
    try {
      header = decodeProtectedHeader(token);
      unverified = decodeJwt(token);
    } catch {
      throw new IdentityRejection('identity_invalid', 'not a compact JWS JWT');
    }
    for (const name of Object.keys(header)) {
      if (!ALLOWED_HEADER.has(name)) throw new IdentityRejection('identity_invalid', `header parameter "${name}" not allowed`);
    }
    if (header.typ !== undefined && header.typ !== 'JWT' && header.typ !== 'JOSE') {
      throw new IdentityRejection('identity_invalid', `typ "${String(header.typ)}" not allowed`);
    }
    if (typeof header.kid !== 'string' || header.kid === '') throw new IdentityRejection('identity_invalid', 'header has no kid');
    const { trust, keys, algorithms } = this.route(unverified);
    const kid = header.kid;
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(
        token,
        async (h) => {
          const key = await keys.getKey(kid, h.alg);
          if (!key) throw new IdentityRejection('identity_invalid', `kid "${kid}" not in trust ${trust.name}`);
          return key;
        },
        {
          algorithms,
          audience: trust.audiences,
          issuer: trust.kind === 'oidc' ? trust.issuer : undefined,
          clockTolerance: this.skew,
          requiredClaims: ['sub', 'exp', 'aud'],
        },
      ));
    } catch (err) {
      if (err instanceof IdentityRejection) throw err;
      if (err instanceof joseErrors.JWTExpired) throw new IdentityRejection('identity_expired', 'expired');
      const code = (err as { code?: string }).code ?? 'unknown';
      throw new IdentityRejection('identity_invalid', `${code}: ${(err as Error).message}`);
    }
    return this.accept(token, payload, trust);
  }

  /** Picks the trust entry from the unverified payload; verification then uses only that entry's keys. */
  private route(p: JWTPayload): { trust: TrustConfig; keys: KeySet; algorithms: string[] } {
    if (typeof p.sub === 'string' && /^spiffe:\/\//i.test(p.sub)) {
      const parsed = parseSpiffeId(p.sub);
      if ('error' in parsed) throw new IdentityRejection('identity_invalid', `invalid SPIFFE ID: ${parsed.error}`);
      const entry = this.spiffe.get(parsed.trustDomain);
      if (!entry) throw new IdentityRejection('identity_invalid', `no trust entry for trust domain ${parsed.trustDomain}`);
      return { ...entry, algorithms: SPIFFE_ALGS };
    }
    const entry = typeof p.iss === 'string' ? this.oidc.get(p.iss) : undefined;
    if (!entry) throw new IdentityRejection('identity_invalid', 'no trust entry for issuer');
    return { ...entry, algorithms: OIDC_ALGS };
  }

  private async accept(token: string, p: JWTPayload, trust: TrustConfig): Promise<WorkloadIdentity> {
    const now = Math.floor(Date.now() / 1000);
    const exp = p.exp!;
    if (typeof p.iat === 'number' && exp - p.iat > this.maxLifetime) {
      throw new IdentityRejection('identity_invalid', 'token lifetime exceeds identity.maxTokenLifetimeSeconds');
    }
    if (typeof p.iat === 'number' && p.iat > now + this.skew) throw new IdentityRejection('identity_invalid', 'iat in the future');
    const id = trust.kind === 'spiffe' ? p.sub! : `${p.iss}#${p.sub}`;
    const claims: Record<string, string> = {};
    for (const [k, v] of Object.entries(p)) if (typeof v === 'string') claims[k] = v;
    const identity: WorkloadIdentity = Object.freeze({ id, trust: trust.name, kind: trust.kind, claims: Object.freeze(claims), exp });
    if (typeof p.jti === 'string') {
      // A token with a jti is single-use for its whole lifetime (plus skew), across every instance.
      const ttlMs = Math.max(1, (exp + this.skew - now) * 1000);
      const key = this.keys.replay(trust.name, createHash('sha256').update(p.jti).digest('base64url'));
      const fresh = await this.redis.set(key, '1', 'PX', ttlMs, 'NX');
      if (fresh === null) throw new IdentityRejection('identity_replayed', 'jti replayed');
    } else {
      this.remember(token, identity, Math.min(exp * 1000, Date.now() + this.cacheMs));
    }
    return identity;
  }

  private remember(token: string, identity: WorkloadIdentity, until: number): void {
    if (this.cacheMs <= 0) return;
    if (this.cache.size >= IdentityVerifier.CACHE_MAX) {
      // Drop the oldest entry; Map iterates in insertion order.
      this.cache.delete(this.cache.keys().next().value!);
    }
    this.cache.set(token, { identity, until });
  }
}
