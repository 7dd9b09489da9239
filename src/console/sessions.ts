import { createHash, randomBytes } from 'node:crypto';
import type { WorkloadIdentity } from '../identity/types.ts';
import type { Keys } from '../redis/keys.ts';
import type { RedisClient } from '../redis/scripts.ts';

/** A signed-in person, as kept server-side. The ID token itself is never stored. */
export interface ConsoleSession {
  /** The person as a caller of the API: `<issuer>#<sub>`, kind oidc, the ID token's string claims. */
  identity: WorkloadIdentity;
  /** Epoch ms. */
  createdAt: number;
  /** Epoch ms: the ID token's `exp`, or earlier when `sessionMaxAgeSeconds` says so. */
  expiresAt: number;
}

/** Redis keys hold a hash of the cookie, so a copy of Redis does not hand out live sessions. */
const digest = (cookie: string) => createHash('sha256').update(cookie).digest('base64url');

/**
 * Console sessions in Redis, under the broker's prefix, so every instance
 * behind a load balancer sees the same sessions. They expire by Redis TTL;
 * reads also check the expiry (on the broker's clock, Redis's) so a TTL cannot
 * stretch a session. A sign-in in progress is not stored here: it waits in the
 * browser that started it (./pending-login.ts).
 */
export class ConsoleSessionStore {
  private readonly redis: RedisClient;
  private readonly keys: Keys;
  private readonly now: () => number;

  /** `now`: the broker's clock in ms (RedisClock.now); the process clock when absent. */
  constructor(deps: { redis: RedisClient; keys: Keys; now?: () => number }) {
    this.redis = deps.redis;
    this.keys = deps.keys;
    this.now = deps.now ?? Date.now;
  }

  /** Starts a session and returns the cookie value that names it. */
  async create(session: ConsoleSession): Promise<string> {
    const cookie = randomBytes(32).toString('base64url');
    const ttl = Math.max(1, session.expiresAt - this.now());
    await this.redis.set(this.keys.plain('console:session', digest(cookie)), JSON.stringify(session), 'PX', ttl);
    return cookie;
  }

  async get(cookie: string | undefined): Promise<ConsoleSession | undefined> {
    const handle = this.handle(cookie);
    if (handle === undefined) return undefined;
    const raw = await this.redis.get(this.keys.plain('console:session', handle));
    if (!raw) return undefined;
    const s = JSON.parse(raw) as ConsoleSession;
    return s.expiresAt > this.now() ? s : undefined;
  }

  async delete(cookie: string | undefined): Promise<void> {
    if (cookie) await this.redis.del(this.keys.plain('console:session', digest(cookie)));
  }

  /**
   * What names the session of `cookie` without being it (the hash its key holds), for a sign-in that ends it only
   * once it completes (routes.ts): the pending sign-in's cookie carries this, never a second copy of the session.
   */
  handle(cookie: string | undefined): string | undefined {
    return cookie && /^[A-Za-z0-9_-]{43}$/.test(cookie) ? digest(cookie) : undefined;
  }

  /** Ends the session `handle` names; what it was, when it was live. */
  async end(handle: string): Promise<ConsoleSession | undefined> {
    const key = this.keys.plain('console:session', handle);
    const res = await this.redis.multi().get(key).del(key).exec();
    const raw = res?.[0]?.[1];
    if (typeof raw !== 'string') return undefined;
    const s = JSON.parse(raw) as ConsoleSession;
    return s.expiresAt > this.now() ? s : undefined;
  }
}
