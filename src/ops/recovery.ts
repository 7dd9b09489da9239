import { randomUUID } from 'node:crypto';
import type { AuditLog } from '../audit/audit-log.ts';
import { type Archive, type Continuation, continueChains } from '../audit/restore.ts';
import type { AuditEvent, AuditRecord } from '../audit/record.ts';
import type { QuarantineEntry } from '../identity/quarantine.ts';
import type { Logger } from '../logger.ts';
import type { Keys } from '../redis/keys.ts';
import { reportTakeover, withLock } from '../redis/lock.ts';
import type { RedisClient } from '../redis/scripts.ts';
import type { SigningKeyStore } from '../signing/key-store.ts';

/** What recovery needs from the rest of the broker. */
export interface RecoveryDeps {
  redis: RedisClient;
  keys: Keys;
  logger: Logger;
  signing: SigningKeyStore;
  audit: AuditLog;
  /**
   * What the audit export holds: where each chain continues and the
   * quarantines in force (restored before the broker answers ready). Throws
   * when the export cannot be read: the broker then stays not-ready rather
   * than issue to an identity whose quarantine it lost.
   */
  readArchive: () => Promise<Archive>;
  restoreQuarantines: (entries: QuarantineEntry[]) => Promise<void>;
  /** Caches that describe data which may be gone (tasks). */
  clearCaches: () => void;
  /** Writes back the rotated upstream secrets this instance runs with (their only shared copy was in Redis). */
  restoreSecrets: () => Promise<void>;
}

/**
 * Notices that Redis lost its data (a restart without persistence, a wipe, a
 * failover to an empty replica) and recreates what the broker needs to issue,
 * within seconds, answering not-ready meanwhile:
 * - a random epoch marker is written once per dataset; it missing, or the
 *   signing keys missing, means the data is gone;
 * - one instance (under a lock) creates a signing key that signs at once (the
 *   one exception to the publish lead, contract section 4), continues every
 *   audit chain from the export's last record (so the export and what
 *   follows in Redis stay one chain), restores the quarantine list by
 *   replaying the export's quarantine records, and writes a
 *   `broker.data_loss` record into each chain saying what was lost; every
 *   instance drops its caches and reloads, and writes back the rotated
 *   upstream secrets it runs with (sealed; the newest generation wins).
 *
 * An empty Redis next to an export of this deployment is a data loss too,
 * even for a process that never saw the data (all instances restarted).
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

  private async recover(lostSeen: boolean): Promise<void> {
    this.healthy = false;
    if (lostSeen) this.d.logger.error('Redis lost its data: recreating the signing key and restoring quarantines before answering ready');
    // What this instance knew of the chains is the best record of how much was lost.
    const knownHeads = this.d.audit.knownHeads();
    this.d.clearCaches();
    this.d.audit.resetHeads();
    const done = await withLock(
      this.d.redis,
      this.d.keys.lock('recovery'),
      { ttlMs: 30_000, waitMs: 30_000, onTakeover: reportTakeover(this.d.logger, (e) => this.d.audit.append(e)) },
      async (lock) => {
        // Reading a large export can outlast the lock's TTL.
        const keep = setInterval(() => void lock.extend(30_000).catch(() => {}), 10_000);
        try {
          let lost = lostSeen;
          const current = await this.d.redis.get(this.d.keys.epoch());
          const created = await this.d.signing.ensure();
          if (!current) {
            const archive = await this.d.readArchive();
            if (!lost && archive.chains.size > 0) {
              lost = true;
              this.d.logger.error('Redis holds no data but the audit export does: continuing from the export (Redis lost its data)');
            }
            let continued: Continuation[] = [];
            if (lost) {
              continued = await continueChains(this.d.redis, this.d.keys, archive, knownHeads);
              await this.d.restoreQuarantines(archive.quarantines);
              // Records that slipped in after the loss go behind the export's last record, with their own time.
              await Promise.all(continued.flatMap((c) => c.orphans.map((o) => this.d.audit.appendTo(c.chain, strip(o.record), o.time))));
            }
            await this.d.redis.set(this.d.keys.epoch(), randomUUID(), 'NX');
            if (lost) await this.recordLoss(continued, archive.quarantines.length);
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
        } finally {
          clearInterval(keep);
        }
      },
    );
    if (!done) throw new Error('another instance is recovering; will look again');
    // Every instance that survived writes back what it runs with (the newest generation wins), before answering ready.
    await this.d.restoreSecrets();
    await this.d.signing.reload();
    this.epoch = (await this.d.redis.get(this.d.keys.epoch())) ?? undefined;
    this.healthy = this.epoch !== undefined && this.d.signing.size > 0;
  }

  /** One `broker.data_loss` record in each chain that had records, and always one in `ops`. */
  private async recordLoss(continued: Continuation[], quarantines: number): Promise<void> {
    const byChain = new Map(continued.map((c) => [c.chain, c]));
    if (!byChain.has('ops')) byChain.set('ops', { chain: 'ops', continuedFromSeq: 0, knownToSeq: undefined, orphans: [] });
    await Promise.all(
      [...byChain.values()].map((c) => {
        const detail: Record<string, string | number | boolean> = { continuedFromSeq: c.continuedFromSeq };
        // This instance's last head or a seal in the export went further than the export's records: at least
        // those were lost. Other instances may have written more; nobody can know how much.
        if (c.knownToSeq !== undefined && c.knownToSeq > c.continuedFromSeq) {
          detail.lostFromSeq = c.continuedFromSeq + 1;
          detail.lostToSeq = c.knownToSeq;
          detail.lost = `at least ${c.continuedFromSeq + 1}..${c.knownToSeq}`;
        } else {
          detail.lost = 'none known';
        }
        if (c.orphans.length > 0) detail.rechained = c.orphans.length;
        if (c.chain === 'ops') detail.quarantinesRestored = quarantines;
        return this.d.audit.appendTo(c.chain, {
          action: 'broker.data_loss',
          actor: 'broker',
          decision: 'ok',
          reason: 'redis_data_lost',
          detail,
        });
      }),
    );
  }
}

/** The event of a stored record (its chain fields are given again when it is re-appended). */
function strip(r: AuditRecord): AuditEvent {
  const { seq: _s, time: _t, prev: _p, hash: _h, ...event } = r;
  return event;
}
