import { RotationLockLost } from '../providers/types.ts';
import type { Keys } from '../redis/keys.ts';
import type { HeldLock } from '../redis/lock.ts';
import { type RedisClient, script } from '../redis/scripts.ts';
import type { Kek } from '../signing/kek.ts';

const restoreScript = script('secret-restore');

/** A rotated secret as stored: sealed with the KEK, and its generation (one more per rotation). */
export interface StoredSecret {
  generation: number;
  sealed: string;
}

/** `g<generation>.<sealed>`; a value written before generations existed counts as generation 0. */
export function parseStored(raw: string): StoredSecret {
  const m = /^g(\d+)\.(.+)$/s.exec(raw);
  return m ? { generation: Number(m[1]), sealed: m[2]! } : { generation: 0, sealed: raw };
}

const format = (s: StoredSecret) => `g${s.generation}.${s.sealed}`;

/**
 * The rotated upstream secrets in Redis (`keys.secrets(target)`), and the one
 * this instance runs with. Redis is their only shared copy: when it loses its
 * data, an instance that still runs with a rotated secret writes it back
 * (`restore`), sealed as it was (this instance keeps the sealed form, never
 * the plaintext beyond what its provider holds), unless Redis already holds
 * the same or a newer generation, so instances started later load it instead
 * of the configured secret the rotation retired.
 */
export class SealedSecrets {
  private readonly held = new Map<string, StoredSecret>();
  private readonly redis: RedisClient;
  private readonly keys: Keys;
  private readonly kek: Kek;

  constructor(redis: RedisClient, keys: Keys, kek: Kek) {
    this.redis = redis;
    this.keys = keys;
    this.kek = kek;
  }

  /**
   * Seals and stores a new secret of `target`, one generation above any seen here or in Redis; with
   * `fence`, only while that lock is still held (else RotationLockLost, nothing written).
   */
  async write(target: string, secret: Record<string, string>, fence?: HeldLock): Promise<void> {
    const raw = await this.redis.get(this.keys.secrets(target));
    const seen = Math.max(raw ? parseStored(raw).generation : 0, this.held.get(target)?.generation ?? 0);
    const stored = { generation: seen + 1, sealed: this.kek.encrypt(JSON.stringify(secret), aad(target)) };
    if (!fence) await this.redis.set(this.keys.secrets(target), format(stored));
    else if (!(await fence.write(this.keys.secrets(target), format(stored)))) throw new RotationLockLost();
    this.held.set(target, stored);
  }

  /** The stored secret of `target`, opened; undefined when none was distributed. Throws when the KEK cannot open it. */
  async read(target: string): Promise<{ secret: Record<string, string>; stored: StoredSecret } | undefined> {
    const raw = await this.redis.get(this.keys.secrets(target));
    if (!raw) return undefined;
    const stored = parseStored(raw);
    return { secret: JSON.parse(this.kek.decrypt(stored.sealed, aad(target))) as Record<string, string>, stored };
  }

  /** Seals a secret a rotation of `target` is about to create upstream, for its intent (bound to that purpose). */
  sealPending(target: string, secret: string): string {
    return this.kek.encrypt(secret, `intent:${target}`);
  }

  /** Opens what `sealPending` sealed; throws when the KEK cannot. */
  openPending(target: string, sealed: string): string {
    return this.kek.decrypt(sealed, `intent:${target}`);
  }

  /** Records that this instance now runs with `stored` (after its provider switched to it). */
  hold(target: string, stored: StoredSecret): void {
    this.held.set(target, stored);
  }

  /** Writes back every secret this instance runs with that Redis lacks (or holds older); returns the targets written. */
  async restore(): Promise<string[]> {
    const written: string[] = [];
    for (const [target, stored] of this.held) {
      if ((await restoreScript.run(this.redis, [this.keys.secrets(target)], [stored.generation, format(stored)])) === 1)
        written.push(target);
    }
    return written;
  }
}

const aad = (target: string) => `secret:${target}`;
