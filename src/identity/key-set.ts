import { readFile } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { importJWK, type JWK } from 'jose';
import type { TrustConfig } from '../config/schema.ts';
import { resolvePath } from '../config/load.ts';

type VerifyKey = Awaited<ReturnType<typeof importJWK>>;

/**
 * The verification keys of one trust entry. Keys come from a file, a URI or
 * inline. File and URI sources are re-read when the cache is stale or a token
 * names a kid we do not know (a rotation upstream), but at most once per
 * cooldown and with a single load in flight, so a flood of tokens with made-up
 * kids cannot turn us into a load generator against the issuer.
 *
 * SPIFFE bundles mark JWT authorities with `use: "jwt-svid"`; only those are
 * taken (never `x509-svid`). For OIDC, keys with no `use` or `use: "sig"`.
 * A key without `kid` is ignored: we only ever select keys by kid.
 */
export class KeySet {
  private keys = new Map<string, JWK>();
  private imported = new Map<string, VerifyKey>();
  /**
   * When the keys were last loaded, and last tried, on the monotonic clock (performance.now()): the cache's
   * age is a duration in this process. Counted with Date.now(), a wall clock stepped back an hour made the
   * age negative, and a key the issuer had withdrawn (a leaked one) kept verifying tokens for that hour
   * longer than jwksCacheSeconds (test/identity/key-set-clock-step.test.ts).
   */
  private loadedAt: number | undefined;
  private lastAttempt = Number.NEGATIVE_INFINITY;
  private inFlight: Promise<void> | undefined;
  private readonly trust: TrustConfig;
  private readonly maxAgeMs: number;
  private readonly cooldownMs: number;
  private readonly fetchImpl: typeof fetch;

  constructor(trust: TrustConfig, opts: { maxAgeMs: number; cooldownMs: number; fetchImpl?: typeof fetch }) {
    this.trust = trust;
    this.maxAgeMs = opts.maxAgeMs;
    this.cooldownMs = opts.cooldownMs;
    this.fetchImpl = opts.fetchImpl ?? fetch;
  }

  /** Loads the keys once; startup fails if a file or inline set is unusable. */
  async init(): Promise<void> {
    await this.refresh(true);
  }

  /** Resolves the key for `kid`, importing it for `alg`; undefined if unknown. */
  async getKey(kid: string, alg: string): Promise<VerifyKey | undefined> {
    const stale = 'uri' in this.trust.jwks && (this.loadedAt === undefined || performance.now() - this.loadedAt > this.maxAgeMs);
    if (!this.keys.has(kid) || stale) await this.refresh(false);
    const jwk = this.keys.get(kid);
    if (!jwk) return undefined;
    if (jwk.alg !== undefined && jwk.alg !== alg) return undefined;
    const cacheKey = `${kid}\u0000${alg}`;
    let key = this.imported.get(cacheKey);
    if (!key) {
      key = await importJWK(jwk, alg);
      this.imported.set(cacheKey, key);
    }
    return key;
  }

  /** Number of usable keys (for diagnostics). */
  get size(): number {
    return this.keys.size;
  }

  private async refresh(force: boolean): Promise<void> {
    if ('keys' in this.trust.jwks && this.loadedAt !== undefined) return;
    if (!force && performance.now() - this.lastAttempt < this.cooldownMs) return;
    if (this.inFlight) return this.inFlight;
    this.lastAttempt = performance.now();
    this.inFlight = this.load().finally(() => {
      this.inFlight = undefined;
    });
    try {
      await this.inFlight;
    } catch (err) {
      // At startup a broken source is fatal; later we keep serving the last good keys.
      if (force) throw err;
    }
  }

  private async load(): Promise<void> {
    const source = this.trust.jwks;
    let doc: unknown;
    if ('keys' in source) doc = { keys: source.keys };
    else if ('file' in source) doc = JSON.parse(await readFile(resolvePath(source.file), 'utf8'));
    else {
      const res = await this.fetchImpl(source.uri, { signal: AbortSignal.timeout(5000), headers: { accept: 'application/json' } });
      if (!res.ok) throw new Error(`JWKS fetch ${source.uri} answered ${res.status}`);
      doc = await res.json();
    }
    const next = new Map<string, JWK>();
    const keys = (doc as { keys?: unknown }).keys;
    if (!Array.isArray(keys)) throw new Error(`trust ${this.trust.name}: JWKS has no "keys" array`);
    for (const k of keys as JWK[]) {
      if (!k || typeof k !== 'object' || typeof k.kid !== 'string' || typeof k.kty !== 'string') continue;
      if (k.kty === 'oct') continue; // never a symmetric key: that is how HS256 confusion attacks start
      const usable = this.trust.kind === 'spiffe' ? k.use === 'jwt-svid' : k.use === undefined || k.use === 'sig';
      if (!usable) continue;
      // jose refuses keys whose `use` is not "sig"; we already filtered on it, so drop it before import.
      const { use: _use, key_ops: _ops, ...clean } = k;
      next.set(k.kid, clean as JWK);
    }
    this.keys = next;
    this.imported.clear();
    this.loadedAt = performance.now();
  }
}
