import { LRUCache } from 'lru-cache';
import { createHash } from 'node:crypto';
import { decodeJwt, decodeProtectedHeader, errors as joseErrors, jwtVerify, type JWTPayload } from 'jose';
import type { RedisClient } from '../redis/scripts.ts';
import type { LoadedConfig } from '../config/load.ts';
import type { TrustConfig } from '../config/schema.ts';
import { unavailable } from '../errors.ts';
import type { Logger } from '../logger.ts';
import type { Keys } from '../redis/keys.ts';
import type { Metrics } from '../metrics.ts';
import { KeySet } from './key-set.ts';
import { clip } from './log-safe.ts';
import { IdentityRejection, RejectionLog, rejectionError } from './rejection.ts';
import { looksLikeSpiffeId, parseSpiffeId } from './spiffe-id.ts';
import type { WorkloadIdentity } from './types.ts';

/** JWT-SVID allows exactly these (JWT-SVID.md 3); no HS*, no none, no EdDSA. */
const SPIFFE_ALGS = ['RS256', 'RS384', 'RS512', 'ES256', 'ES384', 'ES512', 'PS256', 'PS384', 'PS512'];
const OIDC_ALGS = [...SPIFFE_ALGS, 'EdDSA'];
/** Header parameters we accept. Anything else (jku, jwk, x5u, x5c, crit...) is refused outright. */
const ALLOWED_HEADER = new Set(['alg', 'kid', 'typ']);
/**
 * The largest NumericDate we take (9999-12-31T23:59:59Z). Anything beyond is
 * no date at all, and would overflow what the replay guard hands to Redis.
 */
const MAX_NUMERIC_DATE = 253_402_300_799;
/** OIDC Core 2: `sub` is at most 255 ASCII characters. Printable only: it becomes part of the identity string. */
const OIDC_SUB = /^[\x20-\x7e]{1,255}$/;
/** Bound of the verified-token cache; 10,000 entries is a few MB. */
const VERIFIED_CACHE_MAX = 10_000;

/**
 * Verifies workload identity tokens (SPIFFE JWT-SVIDs and OIDC ID tokens)
 * against the configured trust entries. The signature is always checked before
 * any claim is trusted; the unverified payload is only used to pick which
 * trust entry's keys to verify with.
 *
 * Every refusal is a 401 with a stable code and a fixed `reason` (see
 * ./rejection.ts). What exactly was wrong goes to the log, clipped, because
 * everything in a token that failed verification is attacker-controlled.
 *
 * Times (`exp`, `nbf`, `iat`, the lifetime, the replay marker's TTL) are
 * judged on Redis's clock like every other deadline of the broker, so an
 * instance whose own clock is a minute off neither refuses fresh tokens nor
 * accepts expired ones.
 *
 * A token is a bearer token, reused until it expires (JWT-SVIDs, Kubernetes
 * projected tokens and CI OIDC tokens all carry on being presented). Only a
 * trust entry with `singleUse: true` makes each token single-use: it must
 * carry a `jti`, which is remembered across instances until the token expires.
 */
export class IdentityVerifier {
  /**
   * Trust entries by trust domain (spiffe) and issuer (oidc). One source may have several entries with disjoint
   * audiences (config validation refuses an overlap), e.g. the console's sign-in client and the agents of one
   * IdP under different names for policy: a token's `aud` picks the entry (route).
   */
  private readonly spiffe = new Map<string, TrustEntry[]>();
  private readonly oidc = new Map<string, TrustEntry[]>();
  private readonly skew: number;
  private readonly maxLifetime: number;
  private readonly redis: RedisClient;
  private readonly keys: Keys;
  private readonly rejections: RejectionLog;
  /** Milliseconds since the epoch on the clock the broker decides time with (Redis's). */
  private readonly now: () => number;
  /**
   * Verified tokens of trust entries that are not single-use, reused until min(exp, cacheMs): verification is
   * the hottest path. lru-cache bounds it (least recently used evicted first), so
   * a flood of distinct valid tokens cannot grow memory past VERIFIED_CACHE_MAX entries.
   */
  private readonly cache = new LRUCache<string, { identity: WorkloadIdentity; until: number }>({ max: VERIFIED_CACHE_MAX });
  private readonly cacheMs: number;
  /** The console's sign-in client: its ID tokens start a console session, they are not bearer identities. */
  private readonly consoleClient: { issuer: string; clientId: string } | undefined;

  constructor(
    config: LoadedConfig,
    deps: {
      redis: RedisClient;
      keys: Keys;
      logger: Logger;
      metrics?: Metrics;
      fetchImpl?: typeof fetch;
      cacheMs?: number;
      /** The broker's clock in ms (RedisClock.now); the process clock when absent (unit tests). */
      now?: () => number;
    },
  ) {
    const opts = {
      maxAgeMs: config.identity.jwksCacheSeconds * 1000,
      cooldownMs: config.identity.jwksRefetchCooldownSeconds * 1000,
      fetchImpl: deps.fetchImpl,
    };
    for (const trust of config.trust) {
      if (trust.kind === 'spiffe' && trust.issuer !== undefined)
        deps.logger.warn({ trust: trust.name }, 'trust entry of kind spiffe sets issuer: ignored (only oidc entries match on iss)');
      const entry = { trust, keys: new KeySet(trust, opts) };
      const [bySource, source] = trust.kind === 'spiffe' ? [this.spiffe, trust.trustDomain!] : [this.oidc, trust.issuer!];
      bySource.set(source, [...(bySource.get(source) ?? []), entry]);
    }
    this.skew = config.identity.clockSkewSeconds;
    this.maxLifetime = config.identity.maxTokenLifetimeSeconds;
    this.redis = deps.redis;
    this.keys = deps.keys;
    this.rejections = new RejectionLog({ logger: deps.logger, metrics: deps.metrics });
    this.cacheMs = deps.cacheMs ?? 30_000;
    this.now = deps.now ?? Date.now;
    this.consoleClient = config.console ? { issuer: config.console.issuer, clientId: config.console.clientId } : undefined;
  }

  /** Loads every trust entry's keys; a broken file or inline set fails startup. */
  async init(): Promise<void> {
    await Promise.all([...this.spiffe.values(), ...this.oidc.values()].flat().map((e) => e.keys.init()));
  }

  /**
   * Verifies `token` and returns the identity, or throws a 401 BrokerError
   * with a stable code, a fixed `reason` and a detail that tells an attacker
   * nothing.
   */
  async verify(token: string | undefined, use: 'bearer' | 'console-sign-in' = 'bearer'): Promise<WorkloadIdentity> {
    if (!token) {
      this.rejections.record('missing', 'no token');
      throw rejectionError('missing');
    }
    // The cache holds bearer identities only: a console ID token verified at sign-in must not be one later.
    const cached = use === 'bearer' ? this.cache.get(token) : undefined;
    if (cached) {
      if (cached.until > this.now()) return cached.identity;
      this.cache.delete(token);
    }
    try {
      return await this.verifyUncached(token, use);
    } catch (err) {
      if (err instanceof IdentityRejection) {
        this.rejections.record(err.reason, err.message);
        throw rejectionError(err.reason);
      }
      throw err;
    }
  }

  private async verifyUncached(token: string, use: 'bearer' | 'console-sign-in'): Promise<WorkloadIdentity> {
    if (token.length > 16_384) throw new IdentityRejection('malformed', `token too large (${token.length} chars)`);
    let header: ReturnType<typeof decodeProtectedHeader>;
    let unverified: JWTPayload;
    try {
      header = decodeProtectedHeader(token);
      unverified = decodeJwt(token);
    } catch {
      throw new IdentityRejection('malformed', 'not a compact JWS JWT');
    }
    for (const name of Object.keys(header)) {
      if (!ALLOWED_HEADER.has(name)) throw new IdentityRejection('malformed', `header parameter "${clip(name, 32)}" not allowed`);
    }
    if (header.typ !== undefined && header.typ !== 'JWT' && header.typ !== 'JOSE') {
      throw new IdentityRejection('malformed', `typ "${clip(header.typ, 32)}" not allowed`);
    }
    if (typeof header.kid !== 'string' || header.kid === '') throw new IdentityRejection('malformed', 'header has no kid');
    const { trust, keys, algorithms } = this.route(unverified);
    const kid = header.kid;
    const nowMs = this.now();
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(
        token,
        async (h) => {
          const key = await keys.getKey(kid, h.alg);
          if (!key) throw new IdentityRejection('unknown_key', `kid "${clip(kid)}" (alg ${clip(h.alg, 16)}) not in trust ${trust.name}`);
          return key;
        },
        {
          algorithms,
          audience: trust.audiences,
          issuer: trust.kind === 'oidc' ? trust.issuer : undefined,
          clockTolerance: this.skew,
          currentDate: new Date(nowMs),
          requiredClaims: trust.singleUse ? ['sub', 'exp', 'aud', 'jti'] : ['sub', 'exp', 'aud'],
        },
      ));
    } catch (err) {
      throw joseRejection(err, trust.name);
    }
    if (use === 'bearer' && this.forConsole(trust, payload))
      throw new IdentityRejection('audience', `an ID token of the console's sign-in client is not a bearer identity (trust ${trust.name})`);
    return this.accept(token, payload, trust, nowMs, use);
  }

  /**
   * Whether a verified token was issued to the console's sign-in client: its issuer's, naming the client id
   * in `aud` (alone or among others) or `azp`. A person's ID token is for the console's sign-in only (OIDC:
   * an ID token is for its client, not an access token): as a bearer on /v1 it would skip the console's
   * session bounds, sign-out and anti-CSRF header.
   */
  private forConsole(trust: TrustConfig, p: JWTPayload): boolean {
    const c = this.consoleClient;
    if (!c || trust.kind !== 'oidc' || trust.issuer !== c.issuer) return false;
    const aud = Array.isArray(p.aud) ? p.aud : [p.aud];
    return aud.includes(c.clientId) || p.azp === c.clientId;
  }

  /** Picks the trust entry from the unverified payload; verification then uses only that entry's keys. */
  private route(p: JWTPayload): { trust: TrustConfig; keys: KeySet; algorithms: string[] } {
    if (typeof p.sub !== 'string' || p.sub === '') throw new IdentityRejection('malformed', 'sub missing or not a string');
    if (looksLikeSpiffeId(p.sub)) {
      // Any spelling of the scheme takes this path, so a non-canonical SPIFFE ID is refused rather than read as something else.
      const parsed = parseSpiffeId(p.sub);
      if ('error' in parsed) throw new IdentityRejection('subject', `invalid SPIFFE ID ${clip(p.sub)}: ${parsed.error}`);
      const entries = this.spiffe.get(parsed.trustDomain);
      if (!entries) throw new IdentityRejection('untrusted', `no trust entry for trust domain ${clip(parsed.trustDomain)}`);
      return { ...byAudience(entries, p.aud), algorithms: SPIFFE_ALGS };
    }
    const entries = typeof p.iss === 'string' ? this.oidc.get(p.iss) : undefined;
    if (!entries) throw new IdentityRejection('untrusted', `no trust entry for issuer ${clip(p.iss)}`);
    const entry = byAudience(entries, p.aud);
    if (!OIDC_SUB.test(p.sub)) throw new IdentityRejection('subject', `OIDC sub ${clip(p.sub)} is not 1-255 printable ASCII characters`);
    // `<issuer>#<sub>` ending in `/*` is an identity pattern (src/identity/patterns.ts): quarantining or revoking
    // such an agent (the console's buttons send its identity as the pattern) would stop every identity below it.
    if (p.sub.endsWith('/*'))
      throw new IdentityRejection('subject', `OIDC sub ${clip(p.sub)} ends in /*, which reads as an identity pattern`);
    return { ...entry, algorithms: OIDC_ALGS };
  }

  private async accept(
    token: string,
    p: JWTPayload,
    trust: TrustConfig,
    nowMs: number,
    use: 'bearer' | 'console-sign-in',
  ): Promise<WorkloadIdentity> {
    const now = Math.floor(nowMs / 1000);
    for (const claim of ['exp', 'iat', 'nbf'] as const) {
      const v = p[claim];
      if (v !== undefined && !(Number.isSafeInteger(v) && v >= 0 && v <= MAX_NUMERIC_DATE)) {
        throw new IdentityRejection('malformed', `${claim} ${clip(v, 32)} is not a whole number of seconds in range`);
      }
    }
    const exp = p.exp!;
    const iat = p.iat;
    if (iat !== undefined && iat > now + this.skew) throw new IdentityRejection('not_yet_valid', 'iat in the future');
    // Contract: lifetime is exp - iat, or exp - now without iat. Measured from now, a token without iat cannot
    // dodge the bound by omitting it, and one with an old iat cannot either.
    const lifetime = exp - (iat ?? now);
    if (lifetime > this.maxLifetime) {
      throw new IdentityRejection(
        'lifetime',
        `lifetime ${lifetime} s (${iat === undefined ? 'exp - now' : 'exp - iat'}) exceeds identity.maxTokenLifetimeSeconds ${this.maxLifetime}`,
      );
    }
    if (p.jti !== undefined && (typeof p.jti !== 'string' || p.jti === '')) throw new IdentityRejection('malformed', 'jti not a string');
    const id = trust.kind === 'spiffe' ? p.sub! : `${p.iss}#${p.sub}`;
    const claims: Record<string, string> = {};
    for (const [k, v] of Object.entries(p)) if (typeof v === 'string') claims[k] = v;
    const identity: WorkloadIdentity = Object.freeze({ id, trust: trust.name, kind: trust.kind, claims: Object.freeze(claims), exp });
    if (trust.singleUse) {
      // Single-use for its whole lifetime (plus skew), across every instance; jose required the jti.
      // Bounded above by the lifetime check, so the PX value is always a small positive integer.
      const ttlMs = Math.max(1000, (exp + this.skew - now) * 1000);
      const key = this.keys.replay(
        trust.name,
        createHash('sha256')
          .update(p.jti as string)
          .digest('base64url'),
      );
      let fresh: string | null;
      try {
        fresh = await this.redis.set(key, '1', 'PX', ttlMs, 'NX');
      } catch (err) {
        throw unavailable('not_ready', 'The broker cannot check identity replay right now; retry shortly.', { cause: err });
      }
      if (fresh === null) throw new IdentityRejection('replayed', `jti replayed (trust ${trust.name})`);
    } else {
      // Never cached when single-use: every presentation must meet the replay marker.
      if (use === 'bearer') this.remember(token, identity, Math.min(exp * 1000, nowMs + this.cacheMs));
    }
    return identity;
  }

  private remember(token: string, identity: WorkloadIdentity, until: number): void {
    if (this.cacheMs <= 0) return;
    this.cache.set(token, { identity, until });
  }
}

type TrustEntry = { trust: TrustConfig; keys: KeySet };

/**
 * The entry of one source whose audiences the (unverified) token names; verification then checks the signature
 * against that entry's keys only, and `aud` again. Audiences of one source's entries are disjoint (config); a token
 * naming audiences of two of them is refused: the caller would pick which entry's name, policy and `singleUse`
 * apply. With none, the first entry is taken and its audience check refuses the token (401 audience).
 */
function byAudience(entries: TrustEntry[], aud: unknown): TrustEntry {
  if (entries.length === 1) return entries[0]!;
  const named = Array.isArray(aud) ? aud : [aud];
  const matching = entries.filter((e) => e.trust.audiences.some((a) => named.includes(a)));
  if (matching.length > 1)
    throw new IdentityRejection('audience', `aud names audiences of trust entries ${matching.map((e) => e.trust.name).join(', ')}`);
  return matching[0] ?? entries[0]!;
}

/** Maps a jose failure to the reason the caller sees; the jose code and message (fixed texts) go to the log. */
function joseRejection(err: unknown, trust: string): IdentityRejection {
  if (err instanceof IdentityRejection) return err;
  const code = (err as { code?: string }).code ?? 'unknown';
  const detail = `${clip(code, 48)}: ${clip((err as Error).message, 120)} (trust ${trust})`;
  if (err instanceof joseErrors.JWTExpired) return new IdentityRejection('expired', detail);
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return new IdentityRejection('signature', detail);
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    if (err.claim === 'aud' && err.reason === 'check_failed') return new IdentityRejection('audience', detail);
    if (err.claim === 'nbf' && err.reason === 'check_failed') return new IdentityRejection('not_yet_valid', detail);
  }
  return new IdentityRejection('malformed', detail);
}
