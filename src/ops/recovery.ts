import { randomUUID } from 'node:crypto';
import type { AuditLog } from '../audit/audit-log.ts';
import type { QuarantineEntry } from '../identity/quarantine.ts';
import type { Logger } from '../logger.ts';
import type { Keys } from '../redis/keys.ts';
import { withLock } from '../redis/lock.ts';
import type { RedisClient } from '../redis/scripts.ts';
import type { SigningKeyStore } from '../signing/key-store.ts';

/** What recovery needs from the rest of the broker. */
export interface RecoveryDeps {
  redis: RedisClient;
  keys: Keys;
  logger: Logger;
  signing: SigningKeyStore;
  audit: AuditLog;
  /** Quarantines as the audit export last recorded them (restored before the broker answers ready). */
  archivedQuarantines: () => Promise<QuarantineEntry[]>;
  restoreQuarantines: (entries: QuarantineEntry[]) => Promise<void>;
  /** Caches that describe data which may be gone (tasks). */
  clearCaches: () => void;
}

/**
 * Notices that Redis lost its data (a restart without persistence, a wipe, a
 * failover to an empty replica) and recreates what the broker needs to issue,
 * within seconds, answering not-ready meanwhile:
 * - a random epoch marker is written once per dataset; it missing, or the
 *   signing keys missing, means the data is gone;
 * - one instance (under a lock) creates a signing key that signs at once (the
 *   one exception to the publish lead, contract section 4), restores the
 *   quarantine list from the audit export, and writes both down in the audit
 *   log; every instance drops its caches and reloads.
 */
export class DataLossMonitor {
  private readonly d: RecoveryDeps;
  private epoch: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private recovering: Promise<void> | undefined;
  private healthy = false;

  constructor(deps: RecoveryDeps) {
    this.d = deps;
  }

  /** True while the broker holds what it needs to issue. */
  get ready(): boolean {
    return this.healthy && !this.recovering;
  }

  /** First look at startup (creates the signing key and the marker on an empty Redis). */
  async init(): Promise<void> {
    await this.check();
  }

  start(intervalMs: number): void {
    this.timer = setInterval(
      () => void this.check().catch((err) => this.d.logger.warn({ err: (err as Error).message }, 'data-loss check failed')),
      intervalMs,
    );
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Checks the marker and the keys; recovers when either is gone. */
  async check(): Promise<void> {
    if (this.recovering) return this.recovering;
    const [epoch, keyCount] = await Promise.all([this.d.redis.get(this.d.keys.epoch()), this.d.redis.hlen(this.d.keys.signingKeys())]);
    if (epoch && keyCount > 0 && epoch === this.epoch) {
      this.healthy = true;
      return;
    }
    if (epoch && keyCount > 0 && this.epoch === undefined) {
      // First look at a dataset another instance set up.
      this.epoch = epoch;
      await this.d.signing.reload();
      this.healthy = true;
      return;
    }
    this.recovering = this.recover(this.epoch !== undefined || epoch !== null).finally(() => {
      this.recovering = undefined;
    });
    return this.recovering;
  }

  private async recover(lost: boolean): Promise<void> {
    this.healthy = false;
    if (lost) this.d.logger.error('Redis lost its data: recreating the signing key and restoring quarantines before answering ready');
    this.d.clearCaches();
    this.d.audit.resetHeads();
    const done = await withLock(this.d.redis, this.d.keys.lock('recovery'), { ttlMs: 30_000, waitMs: 30_000 }, async () => {
      const current = await this.d.redis.get(this.d.keys.epoch());
      const created = await this.d.signing.ensure();
      if (!current) {
        if (lost) await this.d.restoreQuarantines(await this.d.archivedQuarantines());
        await this.d.redis.set(this.d.keys.epoch(), randomUUID(), 'NX');
        if (lost) {
          await this.d.audit.append({ action: 'broker.data_loss', actor: 'broker', decision: 'ok', reason: 'redis_data_lost' });
        }
      }
      if (created && lost) {
        await this.d.audit.append({
          action: 'signing.recreated',
          actor: 'broker',
          decision: 'ok',
          reason: 'redis_data_lost',
          detail: { immediate: true },
        });
      }
    });
    if (!done) throw new Error('another instance is recovering; will look again');
    await this.d.signing.reload();
    this.epoch = (await this.d.redis.get(this.d.keys.epoch())) ?? undefined;
    this.healthy = this.epoch !== undefined && this.d.signing.size > 0;
  }
}
