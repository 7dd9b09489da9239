import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, randomUUID, sign as cryptoSign } from 'node:crypto';
import { promisify } from 'node:util';
import { unavailable } from '../errors.ts';
import { signEs256 } from './ecdsa.ts';
import type { Logger } from '../logger.ts';
import type { RedisClock } from '../redis/clock.ts';
import type { Keys } from '../redis/keys.ts';
import { type RedisClient, script } from '../redis/scripts.ts';
import type { Kek } from './kek.ts';

/**
 * How far back an immediate rotation dates the switch, and the first key its activation: more than any
 * instance's estimate of Redis's clock is off (so more than any two instances' estimates differ).
 */
const IMMEDIATE_SLACK_MS = 1000;

export type SigningAlg = 'ES256' | 'EdDSA';

/** Still in the JWKS at `now` (not yet retired): the only keys that may verify or sign. */
const published = (k: { retireAt?: number | undefined }, now: number): boolean => k.retireAt === undefined || k.retireAt > now;

const storeFirst = script('signing-key-first');
const storeRotated = script('signing-key-rotate');
const storeClaim = script('signing-key-claim');
/** crypto.sign with a callback: computed on the thread pool. */
const signAsync = promisify(cryptoSign);

/** A signing key as kept in Redis: the private part sealed under the KEK. */
interface StoredKey {
  kid: string;
  alg: SigningAlg;
  createdAt: number;
  /** It signs from this instant on (Redis's clock); until then it is only published. */
  activateAt: number;
  /** It leaves the JWKS at this instant (set when a newer key takes over). */
  retireAt?: number;
  /**
   * The longest token TTL (ms) any instance recorded signing with, before it did (signing-key-claim); only
   * grows. A rotation retires the key no sooner than this after it stops signing. Absent in keys written by
   * releases before it: their rotation reckons with the rotating instance's own longest TTL only.
   */
  maxTokenTtlMs?: number;
  /** Taken out by an immediate rotation (a compromised key): nothing brings it back into the JWKS. */
  dropped?: boolean;
  sealed: string;
}

interface LoadedKey extends Omit<StoredKey, 'sealed'> {
  privateKey: KeyObject;
  publicKey: KeyObject;
  publicJwk: Record<string, unknown>;
  /** Pre-encoded protected header of an at+jwt signed with this key. */
  header: string;
  /** Redis records this instance's longest token TTL on it (maxTokenTtlMs): it may sign with it. */
  covered: boolean;
}

/**
 * The broker's signing keys, shared by every instance through Redis (sealed
 * with the KEK) so tokens minted by one instance verify on all of them and
 * survive restarts. Rotation publishes the new key before it signs anything
 * and keeps the old one in the JWKS until every token it signed has expired.
 * Activation is decided on Redis's clock, so an instance whose clock runs
 * ahead neither signs with a key others do not publish yet nor stalls them.
 */
export class SigningKeyStore {
  private keys: LoadedKey[] = [];
  private readonly redis: RedisClient;
  private readonly k: Keys;
  private readonly kek: Kek;
  private readonly logger: Logger;
  private readonly clock: RedisClock;
  /** The longest TTL (ms) of a token this instance signs: its config's longest jwt role maxTtlSeconds. */
  private readonly maxTokenTtlMs: number;
  private readonly graceMs: number;
  /** Claims in flight, by kid (one per key however many issuances wait for it). */
  private readonly claims = new Map<string, Promise<boolean>>();
  readonly alg: SigningAlg;

  constructor(deps: {
    redis: RedisClient;
    keys: Keys;
    kek: Kek;
    logger: Logger;
    alg: SigningAlg;
    clock: RedisClock;
    /** This instance's longest jwt role TTL (ms; default 0: it records none). */
    maxTokenTtlMs?: number;
    /** Its providers.jwt.retireGraceSeconds (ms; default 0). */
    graceMs?: number;
  }) {
    this.redis = deps.redis;
    this.k = deps.keys;
    this.kek = deps.kek;
    this.logger = deps.logger;
    this.alg = deps.alg;
    this.clock = deps.clock;
    this.maxTokenTtlMs = deps.maxTokenTtlMs ?? 0;
    this.graceMs = deps.graceMs ?? 0;
  }

  /** Redis's clock (ms), as this store decides with it. */
  now(): number {
    return this.clock.now();
  }

  /**
   * Loads the keys, creating one that signs at once if Redis holds none (the
   * first start, or Redis lost its data). Returns true when this call created it.
   */
  async ensure(): Promise<boolean> {
    await this.reload();
    if (this.keys.length > 0) return false;
    const created = (await storeFirst.run(this.redis, [this.k.signingKeys()], [...this.generateArgs(), IMMEDIATE_SLACK_MS])) === 1;
    await this.reload();
    if (this.keys.length === 0) throw new Error('no signing key could be created or loaded');
    if (created) this.logger.warn({ kid: this.keys[0]?.kid }, 'signing key created (Redis held none); it signs at once');
    return created;
  }

  /** Number of keys loaded (0 means Redis lost them: the broker is not ready). */
  get size(): number {
    return this.keys.length;
  }

  /**
   * Re-reads every key from Redis. Called at startup, on a change notice and periodically. Each key this
   * instance signs with or will (the current one and those only published yet) gets this instance's
   * longest token TTL recorded on it first, if Redis does not hold one as long (a write per key and
   * instance at most, never one per issuance).
   */
  async reload(): Promise<void> {
    const all = await this.redis.hgetall(this.k.signingKeys());
    const loaded: LoadedKey[] = [];
    for (const raw of Object.values(all)) {
      const s = JSON.parse(raw) as StoredKey;
      // A key we cannot decrypt means a wrong KEK: refuse rather than sign with something else.
      const jwk = JSON.parse(this.kek.decrypt(s.sealed, `signing-key:${s.kid}`));
      const privateKey = createPrivateKey({ key: jwk, format: 'jwk' });
      const publicKey = createPublicKey(privateKey);
      const { kid, alg, createdAt, activateAt, retireAt, maxTokenTtlMs } = s;
      const pub = publicKey.export({ format: 'jwk' }) as Record<string, unknown>;
      const header = Buffer.from(JSON.stringify({ typ: 'at+jwt', alg, kid })).toString('base64url');
      loaded.push({
        kid,
        alg,
        createdAt,
        activateAt,
        ...(retireAt === undefined ? {} : { retireAt }),
        ...(maxTokenTtlMs === undefined ? {} : { maxTokenTtlMs }),
        privateKey,
        publicKey,
        publicJwk: { ...pub, kid, alg, use: 'sig' },
        header,
        covered: (maxTokenTtlMs ?? 0) >= this.maxTokenTtlMs,
      });
    }
    loaded.sort((a, b) => b.activateAt - a.activateAt);
    this.keys = loaded;
    const now = this.clock.now();
    const current = loaded.find((k) => k.activateAt <= now && published(k, now));
    const mine = loaded.filter((k) => !k.covered && published(k, now) && (k === current || k.activateAt > now));
    // A claim that fails here (Redis unreachable) is made again before the key signs (sign()).
    await Promise.all(
      mine.map((k) =>
        this.claim(k).catch((err: unknown) =>
          this.logger.warn({ kid: k.kid, err: (err as Error).message }, 'signing key: could not record the longest token TTL yet'),
        ),
      ),
    );
  }

  /**
   * Records this instance's longest token TTL on `key` in Redis (signing-key-claim), so that a rotation,
   * by any instance and with whatever config, keeps the key in the JWKS until every token it could sign
   * here has expired. Resolves false when Redis no longer holds the key or retired it: it may not sign.
   */
  private claim(key: LoadedKey): Promise<boolean> {
    let pending = this.claims.get(key.kid);
    if (pending) return pending;
    pending = (async () => {
      try {
        const raw = await storeClaim.run(this.redis, [this.k.signingKeys()], [key.kid, this.maxTokenTtlMs, this.graceMs]);
        if (typeof raw !== 'string') return false;
        const stored = JSON.parse(raw) as StoredKey;
        for (const k of [key, ...this.keys.filter((x) => x.kid === key.kid && x !== key)]) {
          if (stored.retireAt !== undefined) k.retireAt = stored.retireAt;
          if (stored.maxTokenTtlMs !== undefined) k.maxTokenTtlMs = stored.maxTokenTtlMs;
          k.covered = true;
        }
        return true;
      } finally {
        this.claims.delete(key.kid);
      }
    })();
    this.claims.set(key.kid, pending);
    return pending;
  }

  /** The key that signs now: the newest one already active, and not retired, on Redis's clock. */
  current(now = this.clock.now()): LoadedKey {
    const key = this.keys.find((k) => k.activateAt <= now && published(k, now));
    if (!key) throw unavailable('not_ready', 'The broker has no active signing key right now; retry in a few seconds.');
    return key;
  }

  /** Public key for a kid still published (for introspection). */
  publicKey(kid: string, now = this.clock.now()): KeyObject | undefined {
    const k = this.keys.find((x) => x.kid === kid);
    return k && published(k, now) ? k.publicKey : undefined;
  }

  /** The JWKS: every key not yet retired, including one published but not yet signing. */
  jwks(now = this.clock.now()): { keys: Record<string, unknown>[] } {
    return { keys: this.keys.filter((k) => published(k, now)).map((k) => k.publicJwk) };
  }

  /**
   * Signs an at+jwt (JWS compact serialization) with the current key (chosen
   * now). The signature itself is computed on libuv's thread pool: it is the
   * largest single cost of an issuance, and off the event loop it runs beside
   * the next request instead of in front of it.
   */
  async sign(_header: { typ: 'at+jwt' }, payload: Record<string, unknown>): Promise<string> {
    let key = this.current();
    // Never a token from a key Redis does not know this instance's longest TTL for (a rotation would
    // retire it too soon). Normally recorded by reload() already: a Redis write at most once per key.
    if (!key.covered && !(await this.claim(key))) {
      await this.reload(); // gone or retired in Redis meanwhile: take what it holds now
      key = this.current();
      if (!key.covered && !(await this.claim(key)))
        throw unavailable('not_ready', 'The broker has no active signing key right now; retry in a few seconds.');
    }
    const input = `${key.header}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
    const data = Buffer.from(input);
    const sig = key.alg === 'ES256' ? await signEs256(data, key.privateKey) : await signAsync(null, data, key.privateKey);
    return `${input}.${sig.toString('base64url')}`;
  }

  /**
   * Rotates. Normally the new key is published now and signs from
   * `now + leadMs`, and older keys leave the JWKS once the longest-lived token
   * they could have signed has expired: `graceMs` after the longer of
   * `maxTokenTtlMs` (this instance's) and what every instance recorded on the
   * key (its maxTokenTtlMs). `immediate` (a compromised key): the new key signs
   * at once and every older key leaves the JWKS now.
   */
  async rotate(opts: { leadMs: number; maxTokenTtlMs: number; graceMs: number; immediate?: boolean }): Promise<{
    kid: string;
    activateAt: number;
    retired: string[];
  }> {
    await this.clock.sync().catch(() => {});
    const now = this.clock.now();
    // Immediate: dated a little in the past, so that every instance, whose estimate of Redis's clock
    // may run milliseconds behind this one's, stops publishing and signing with the old key at once.
    const at = opts.immediate ? now - IMMEDIATE_SLACK_MS : now + opts.leadMs;
    const next = this.generate(at, now);
    // One script, not read-then-write: a rotation that stalled past its lock and lands late must not move
    // back the retireAt a later (immediate) rotation set, or a compromised key would return to the JWKS;
    // and each key's recorded longest TTL is read where it is used.
    const retired = (await storeRotated.run(
      this.redis,
      [this.k.signingKeys()],
      [next.kid, JSON.stringify(next), next.activateAt, now, opts.immediate ? -1 : Math.max(0, opts.maxTokenTtlMs), opts.graceMs],
    )) as string[];
    await this.reload();
    this.logger.info(
      { kid: next.kid, activateAt: new Date(next.activateAt).toISOString(), retired, immediate: opts.immediate === true },
      'signing key rotated',
    );
    return { kid: next.kid, activateAt: next.activateAt, retired };
  }

  private generate(activateAt: number, now: number): StoredKey {
    const { privateKey } = this.alg === 'ES256' ? generateKeyPairSync('ec', { namedCurve: 'P-256' }) : generateKeyPairSync('ed25519');
    const kid = randomUUID();
    const jwk = JSON.stringify(privateKey.export({ format: 'jwk' }));
    // This instance signs with it: its longest TTL is recorded from the start (others add theirs: claim()).
    return {
      kid,
      alg: this.alg,
      createdAt: now,
      activateAt,
      maxTokenTtlMs: this.maxTokenTtlMs,
      sealed: this.kek.encrypt(jwk, `signing-key:${kid}`),
    };
  }

  /** [kid, stored JSON] for the first-key script (which sets the times on Redis's clock). */
  private generateArgs(): [string, string] {
    const k = this.generate(0, 0);
    return [k.kid, JSON.stringify(k)];
  }
}
