import { hash, type KeyObject } from 'node:crypto';
import { LRUCache } from 'lru-cache';

/**
 * Tokens the broker minted whose signature introspection has already checked. A resource server
 * introspects the same token on every call it receives, and the signature check (ECDSA P-256 verify,
 * ~100-200 µs) was the largest part of an introspection's CPU. Checking it again for the same bytes
 * under the same key gives the same answer, so a token seen before skips it; everything else (the key
 * still published, the claims, the lease and task status in Redis) is checked on every call.
 *
 * Only tokens whose signature verified are kept, so only the broker's own tokens (each one an issuance)
 * can fill it, and it holds at most MAX_ENTRIES of them and MAX_CHARS of their length, each until its `exp`
 * (on the broker's clock), the least recently used leaving first (lru-cache: a token introspected on every
 * call stays). The length bound because a token holds its scopes (up to 100 of 256 characters) and its `act`
 * chain: tens of KB each within every bound, so 10,000 of them would be hundreds of MB per instance, and any
 * agent with such a grant can have that many minted and introspected. A typical token (under 1 KB) meets the
 * count first; one longer than MAX_CHARS is not kept (verified on every call, as before this cache).
 * Keyed by the SHA-256 of the whole token: the tokens themselves (bearer credentials) are not kept.
 */
export const MAX_ENTRIES = 10_000;
/** The most token characters the entries stand for at once (their header and claims are held parsed). */
export const MAX_CHARS = 16_000_000;

export interface VerifiedToken {
  /** The key the signature verified with (compared with the key published for `kid` on every use). */
  key: KeyObject;
  header: Record<string, unknown>;
  claims: Record<string, unknown>;
}

export class VerifiedTokens {
  private readonly entries: LRUCache<string, VerifiedToken & { untilMs: number; chars: number }>;

  constructor(max = MAX_ENTRIES, maxChars = MAX_CHARS) {
    this.entries = new LRUCache({ max, maxSize: maxChars, sizeCalculation: (e) => Math.max(1, e.chars) });
  }

  /** What a token is kept under: its SHA-256 (one-shot `crypto.hash`: a createHash object costs more than the hash). */
  static id(token: string): string {
    return hash('sha256', token, 'base64url');
  }

  /** The entry of token id `id` if it verified before and its `exp` (ms) is not past at `nowMs`. */
  get(id: string, nowMs: number): VerifiedToken | undefined {
    const e = this.entries.get(id);
    if (!e) return undefined;
    if (e.untilMs <= nowMs) {
      this.entries.delete(id);
      return undefined;
    }
    return e;
  }

  /** Remembers a token (`chars` long) whose signature verified under `key`, until `untilMs` (its exp). */
  remember(id: string, entry: VerifiedToken, untilMs: number, chars: number): void {
    this.entries.set(id, { ...entry, untilMs, chars });
  }

  get size(): number {
    return this.entries.size;
  }
}
