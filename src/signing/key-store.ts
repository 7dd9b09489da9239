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
  sealed: string;
}

interface LoadedKey extends Omit<StoredKey, 'sealed'> {
  privateKey: KeyObject;
  publicKey: KeyObject;
  publicJwk: Record<string, unknown>;
  /** Pre-encoded protected header of an at+jwt signed with this key. */
  header: string;
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
  readonly alg: SigningAlg;

  constructor(deps: { redis: RedisClient; keys: Keys; kek: Kek; logger: Logger; alg: SigningAlg; clock: RedisClock }) {
    this.redis = deps.redis;
    this.k = deps.keys;
    this.kek = deps.kek;
    this.logger = deps.logger;
    this.alg = deps.alg;
    this.clock = deps.clock;
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

  /** Re-reads every key from Redis. Called on a change notice and periodically. */
  async reload(): Promise<void> {
    const all = await this.redis.hgetall(this.k.signingKeys());
    const loaded: LoadedKey[] = [];
    for (const raw of Object.values(all)) {
      const s = JSON.parse(raw) as StoredKey;
      // A key we cannot decrypt means a wrong KEK: refuse rather than sign with something else.
      const jwk = JSON.parse(this.kek.decrypt(s.sealed, `signing-key:${s.kid}`));
      const privateKey = createPrivateKey({ key: jwk, format: 'jwk' });
      const publicKey = createPublicKey(privateKey);
      const { kid, alg, createdAt, activateAt, retireAt } = s;
      const pub = publicKey.export({ format: 'jwk' }) as Record<string, unknown>;
      const header = Buffer.from(JSON.stringify({ typ: 'at+jwt', alg, kid })).toString('base64url');
      loaded.push({
        kid,
        alg,
        createdAt,
        activateAt,
        ...(retireAt === undefined ? {} : { retireAt }),
        privateKey,
        publicKey,
        publicJwk: { ...pub, kid, alg, use: 'sig' },
        header,
      });
    }
    loaded.sort((a, b) => b.activateAt - a.activateAt);
    this.keys = loaded;
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
    const key = this.current();
    const input = `${key.header}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
    const data = Buffer.from(input);
    const sig = key.alg === 'ES256' ? await signEs256(data, key.privateKey) : await signAsync(null, data, key.privateKey);
    return `${input}.${sig.toString('base64url')}`;
  }

  /**
   * Rotates. Normally the new key is published now and signs from
   * `now + leadMs`, and older keys leave the JWKS once the longest-lived token
   * they could have signed has expired. `immediate` (a compromised key): the
   * new key signs at once and every older key leaves the JWKS now.
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
    const retireAt = opts.immediate ? at : next.activateAt + opts.maxTokenTtlMs + opts.graceMs;
    // One script, not read-then-write: a rotation that stalled past its lock and lands late must not move
    // back the retireAt a later (immediate) rotation set, or a compromised key would return to the JWKS.
    const retired = (await storeRotated.run(
      this.redis,
      [this.k.signingKeys()],
      [next.kid, JSON.stringify(next), retireAt, now],
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
    return { kid, alg: this.alg, createdAt: now, activateAt, sealed: this.kek.encrypt(jwk, `signing-key:${kid}`) };
  }

  /** [kid, stored JSON] for the first-key script (which sets the times on Redis's clock). */
  private generateArgs(): [string, string] {
    const k = this.generate(0, 0);
    return [k.kid, JSON.stringify(k)];
  }
}
