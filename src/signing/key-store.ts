import { createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, sign as cryptoSign, type KeyObject } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Keys } from '../redis.ts';
import type { Kek } from './kek.ts';
import type { Logger } from '../logger.ts';

export type SigningAlg = 'ES256' | 'EdDSA';

/** A signing key as kept in Redis: the private part sealed under the KEK. */
interface StoredKey {
  kid: string;
  alg: SigningAlg;
  createdAt: number;
  /** It signs from this instant on; until then it is only published. */
  activateAt: number;
  /** It leaves the JWKS at this instant (set when a newer key takes over). */
  retireAt?: number;
  sealed: string;
}

interface LoadedKey extends Omit<StoredKey, 'sealed'> {
  privateKey: KeyObject;
  publicKey: KeyObject;
  publicJwk: Record<string, unknown>;
}

/**
 * The broker's signing keys, shared by every instance through Redis (sealed
 * with the KEK) so tokens minted by one instance verify on all of them and
 * survive restarts. Rotation publishes the new key before it signs anything
 * and keeps the old one in the JWKS until every token it signed has expired.
 */
export class SigningKeyStore {
  private keys: LoadedKey[] = [];
  private readonly redis: Redis;
  private readonly k: Keys;
  private readonly kek: Kek;
  private readonly logger: Logger;
  readonly alg: SigningAlg;

  constructor(deps: { redis: Redis; keys: Keys; kek: Kek; logger: Logger; alg: SigningAlg }) {
    this.redis = deps.redis;
    this.k = deps.keys;
    this.kek = deps.kek;
    this.logger = deps.logger;
    this.alg = deps.alg;
  }

  /** Loads the keys, creating the first one if none exists (one instance wins a lock). */
  async init(): Promise<void> {
    await this.reload();
    if (this.keys.length > 0) return;
    const got = await this.redis.set(this.k.signingLock(), '1', 'PX', 10_000, 'NX');
    if (got) {
      try {
        if ((await this.redis.hlen(this.k.signingKeys())) === 0) await this.store(this.generate(Date.now()));
      } finally {
        await this.redis.del(this.k.signingLock());
      }
    } else {
      // Another instance is creating it; wait for it briefly.
      for (let i = 0; i < 50 && (await this.redis.hlen(this.k.signingKeys())) === 0; i++) await new Promise((r) => setTimeout(r, 100));
    }
    await this.reload();
    if (this.keys.length === 0) throw new Error('no signing key could be created or loaded');
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
      loaded.push({ kid, alg, createdAt, activateAt, retireAt, privateKey, publicKey, publicJwk: { ...pub, kid, alg, use: 'sig' } });
    }
    loaded.sort((a, b) => b.activateAt - a.activateAt);
    this.keys = loaded;
  }

  /** The key that signs now: the newest one already active. */
  current(now = Date.now()): LoadedKey {
    const key = this.keys.find((k) => k.activateAt <= now);
    if (!key) throw new Error('no active signing key');
    return key;
  }

  /** Public key for a kid still published (for introspection). */
  publicKey(kid: string, now = Date.now()): KeyObject | undefined {
    const k = this.keys.find((x) => x.kid === kid);
    return k && (k.retireAt === undefined || k.retireAt > now) ? k.publicKey : undefined;
  }

  /** The JWKS: every key not yet retired, including one published but not yet signing. */
  jwks(now = Date.now()): { keys: Record<string, unknown>[] } {
    return { keys: this.keys.filter((k) => k.retireAt === undefined || k.retireAt > now).map((k) => k.publicJwk) };
  }

  /** Signs a JWS compact serialization with the current key. */
  sign(header: Record<string, unknown>, payload: Record<string, unknown>): string {
    const key = this.current();
    const h = Buffer.from(JSON.stringify({ ...header, alg: key.alg, kid: key.kid })).toString('base64url');
    const p = Buffer.from(JSON.stringify(payload)).toString('base64url');
    const input = `${h}.${p}`;
    const sig =
      key.alg === 'ES256'
        ? cryptoSign('sha256', Buffer.from(input), { key: key.privateKey, dsaEncoding: 'ieee-p1363' })
        : cryptoSign(null, Buffer.from(input), key.privateKey);
    return `${input}.${sig.toString('base64url')}`;
  }

  /**
   * Rotates: a new key is published now and signs from `now + leadMs`; every
   * older key leaves the JWKS once the longest-lived token it could have
   * signed has expired (`maxTokenTtlMs` after the switch, plus grace).
   */
  async rotate(opts: {
    leadMs: number;
    maxTokenTtlMs: number;
    graceMs: number;
  }): Promise<{ kid: string; activateAt: number; retired: string[] }> {
    const now = Date.now();
    const next = this.generate(now + opts.leadMs);
    await this.reload();
    const retireAt = next.activateAt + opts.maxTokenTtlMs + opts.graceMs;
    const multi = this.redis.multi();
    const retired: string[] = [];
    for (const k of this.keys) {
      if (k.retireAt !== undefined && k.retireAt <= now) {
        multi.hdel(this.k.signingKeys(), k.kid); // long gone from the JWKS: forget it
        continue;
      }
      if (k.retireAt === undefined || k.retireAt > retireAt) {
        retired.push(k.kid);
        const stored = JSON.parse((await this.redis.hget(this.k.signingKeys(), k.kid))!) as StoredKey;
        multi.hset(this.k.signingKeys(), k.kid, JSON.stringify({ ...stored, retireAt }));
      }
    }
    multi.hset(this.k.signingKeys(), next.kid, JSON.stringify(next));
    await multi.exec();
    await this.reload();
    this.logger.info({ kid: next.kid, activateAt: new Date(next.activateAt).toISOString(), retired }, 'signing key rotated');
    return { kid: next.kid, activateAt: next.activateAt, retired };
  }

  private generate(activateAt: number): StoredKey {
    const { privateKey } = this.alg === 'ES256' ? generateKeyPairSync('ec', { namedCurve: 'P-256' }) : generateKeyPairSync('ed25519');
    const kid = randomUUID();
    const jwk = JSON.stringify(privateKey.export({ format: 'jwk' }));
    return { kid, alg: this.alg, createdAt: Date.now(), activateAt, sealed: this.kek.encrypt(jwk, `signing-key:${kid}`) };
  }

  private async store(k: StoredKey): Promise<void> {
    await this.redis.hset(this.k.signingKeys(), k.kid, JSON.stringify(k));
  }
}
