import type { Logger } from '../logger.ts';
import type { Keys } from '../redis/keys.ts';
import type { RedisClient } from '../redis/scripts.ts';
import { IdentityPatterns } from './patterns.ts';

/** One quarantine in force. */
export interface QuarantineEntry {
  pattern: string;
  reason: string;
  by: string;
  /** ISO 8601. */
  at: string;
}

/**
 * Identities an admin has quarantined: every `/v1` call by a matching identity
 * is refused. Kept in Redis (shared by every instance) and mirrored in memory,
 * so the check on every request costs no round trip; a change is announced
 * on the broker's channel and every instance also re-reads the list every few
 * seconds (a missed message costs at most that long). After Redis lost its
 * data the list is restored from the audit export before the broker answers
 * ready (see ops/recovery.ts).
 */
export class Quarantine {
  private patterns = new IdentityPatterns([]);
  private entries: QuarantineEntry[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly redis: RedisClient;
  private readonly keys: Keys;
  private readonly logger: Logger;

  constructor(deps: { redis: RedisClient; keys: Keys; logger: Logger }) {
    this.redis = deps.redis;
    this.keys = deps.keys;
    this.logger = deps.logger;
  }

  /** The pattern quarantining `identity`, if any. */
  match(identity: string): string | undefined {
    return this.patterns.match(identity);
  }

  list(): QuarantineEntry[] {
    return [...this.entries];
  }

  async reload(): Promise<void> {
    const all = await this.redis.hgetall(this.keys.quarantine());
    const entries = Object.entries(all).map(([pattern, raw]) => ({ pattern, ...(JSON.parse(raw) as Omit<QuarantineEntry, 'pattern'>) }));
    entries.sort((a, b) => a.at.localeCompare(b.at) || a.pattern.localeCompare(b.pattern));
    this.entries = entries;
    this.patterns = new IdentityPatterns(entries.map((e) => e.pattern));
  }

  /** Reloads now and every `intervalMs`. */
  async start(intervalMs = 2000): Promise<void> {
    await this.reload();
    this.timer = setInterval(
      () => void this.reload().catch((err) => this.logger.warn({ err: (err as Error).message }, 'quarantine reload failed')),
      intervalMs,
    );
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  async add(entry: QuarantineEntry): Promise<void> {
    const { pattern, ...rest } = entry;
    await this.redis.hset(this.keys.quarantine(), pattern, JSON.stringify(rest));
    await this.reload();
  }

  /** Returns false when no such quarantine was in force. */
  async remove(pattern: string): Promise<boolean> {
    const n = await this.redis.hdel(this.keys.quarantine(), pattern);
    await this.reload();
    return n > 0;
  }

  /** Replaces the whole list (restoring it after a data loss). */
  async restore(entries: readonly QuarantineEntry[]): Promise<void> {
    const multi = this.redis.multi().del(this.keys.quarantine());
    for (const { pattern, ...rest } of entries) multi.hset(this.keys.quarantine(), pattern, JSON.stringify(rest));
    await multi.exec();
    await this.reload();
  }
}
