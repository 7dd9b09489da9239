import { isTransient } from './errors.ts';
import type { CredentialRequest, IssuedCredential } from './types.ts';

interface Entry {
  value?: IssuedCredential;
  refreshAt: number;
  expiresAt: number;
  inflight?: Promise<IssuedCredential>;
}

/**
 * Credentials held until shortly before they expire, one entry per distinct
 * request (task, role, scopes, TTL). Concurrent callers share one request to
 * the broker.
 *
 * When to refresh: `marginSeconds` before expiry, but never more than a
 * quarter of the credential's lifetime, so a 60 s token is not refreshed
 * after 0 s. (botocore refreshes 15 minutes before expiry, which makes a
 * 900 s STS credential refresh on every call; this cache does not.)
 *
 * A refresh that fails for a transient reason (no answer, 5xx, 429) keeps
 * handing out the current credential while it is still valid; a refusal
 * (4xx: the task ended, the grant was narrowed) is thrown at once.
 */
export class CredentialCache {
  private readonly entries = new Map<string, Entry>();
  private readonly marginMs: number;
  private readonly now: () => number;

  constructor(opts: { marginSeconds: number; now: () => number }) {
    this.marginMs = opts.marginSeconds * 1000;
    this.now = opts.now;
  }

  /** The cached credential for `req`, or a new one from `issue`. */
  async get(req: CredentialRequest, issue: () => Promise<IssuedCredential>): Promise<IssuedCredential> {
    const key = cacheKey(req);
    let entry = this.entries.get(key);
    const now = this.now();
    if (entry?.value && now < entry.refreshAt) return entry.value;
    if (!entry) {
      entry = { refreshAt: 0, expiresAt: 0 };
      this.entries.set(key, entry);
    }
    const e = entry;
    e.inflight ??= issue()
      .then((cred) => {
        const issuedAt = this.now();
        // The earlier of the lease's end and the credential's own (an AWS session's Expiration, on AWS's
        // clock, may come a little before the lease's end, which the broker keeps on its own clock).
        const own = Date.parse(String((cred.credentials as { Expiration?: unknown } | undefined)?.Expiration ?? ''));
        const expiresAt = Number.isNaN(own) ? Date.parse(cred.expiresAt) : Math.min(own, Date.parse(cred.expiresAt));
        const lifetime = Math.max(0, expiresAt - issuedAt);
        e.value = cred;
        e.expiresAt = expiresAt;
        e.refreshAt = expiresAt - Math.min(this.marginMs, lifetime / 4);
        return cred;
      })
      .finally(() => {
        e.inflight = undefined;
      });
    try {
      return await e.inflight;
    } catch (err) {
      // Still valid for a few seconds: better than failing the caller's request.
      if (e.value && isTransient(err) && this.now() < e.expiresAt - 5_000) return e.value;
      if (!isTransient(err)) this.entries.delete(key);
      throw err;
    }
  }

  /** Credentials currently held (for revoking them on shutdown). */
  held(): IssuedCredential[] {
    return [...this.entries.values()].flatMap((e) => (e.value ? [e.value] : []));
  }

  clear(): void {
    this.entries.clear();
  }

  /**
   * Forgets every credential `ended` says has ended (its lease revoked, its task completed), so that the next
   * request asks the broker instead of handing out a credential resource servers refuse. A request in flight is
   * left to finish; its answer is the broker's word, given after the end.
   */
  forget(ended: (cred: IssuedCredential) => boolean): void {
    for (const [key, e] of this.entries) {
      if (e.value && ended(e.value)) {
        e.value = undefined;
        e.refreshAt = 0;
        e.expiresAt = 0;
        if (!e.inflight) this.entries.delete(key);
      }
    }
  }
}

function cacheKey(r: CredentialRequest): string {
  return JSON.stringify([r.taskId, r.role, r.scopes ?? null, r.ttlSeconds ?? null]);
}
