import type { Logger } from '../logger.ts';
import type { Keys } from '../redis/keys.ts';
import { type RedisClient, script } from '../redis/scripts.ts';
import { IdentityPatterns } from './patterns.ts';

const addScript = script('quarantine-add');

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

  /**
   * Re-reads the list. Read with the dataset's epoch marker (same slot): with the marker gone, Redis lost its data
   * and an empty list means nothing, so the list in force stays until recovery restores it from the audit export
   * (`restore` forces the read). Replacing it with the empty read lifted every quarantine until then.
   */
  async reload(opts: { force?: boolean } = {}): Promise<void> {
    const res = await this.redis.multi().hgetall(this.keys.quarantine()).exists(this.keys.epoch()).exec();
    if (!res) throw new Error('quarantine read aborted');
    for (const [err] of res) if (err) throw err;
    const all = res[0]![1] as Record<string, string>;
    if (res[1]![1] === 0 && !opts.force && this.entries.length > 0) {
      this.logger.warn('quarantine list not re-read: Redis lost its data; the list in force stays until it is restored');
      return;
    }
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

  /**
   * Puts `entry` in force. `member`: its `quarantine.add` record's outbox member (outboxMember), put in the
   * ops chain's audit outbox in the same step (quarantine-add.lua); returns its score (Redis ms) then.
   */
  async add(entry: QuarantineEntry, member?: string): Promise<number | undefined> {
    const { pattern, ...rest } = entry;
    let at: number | undefined;
    if (member)
      at = Number(
        await addScript.run(this.redis, [this.keys.quarantine(), this.keys.auditOutbox('ops')], [pattern, JSON.stringify(rest), member]),
      );
    else await this.redis.hset(this.keys.quarantine(), pattern, JSON.stringify(rest));
    await this.reload();
    return at;
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
    await this.reload({ force: true });
  }
}
