import { randomUUID } from 'node:crypto';
import type { AuditLog } from '../audit/audit-log.ts';
import { type Archive, type Continuation, continueChains, keptContinuations, lossSteps } from '../audit/restore.ts';
import type { AuditEvent, AuditRecord } from '../audit/record.ts';
import type { QuarantineEntry } from '../identity/quarantine.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import type { AuditChain, Keys } from '../redis/keys.ts';
import { reportTakeover, withLock } from '../redis/lock.ts';
import { EXPORT_LOCK } from '../audit/export.ts';
import { markerSeq } from '../audit/retention.ts';
import { type RedisClient, script } from '../redis/scripts.ts';
import type { SigningKeyStore } from '../signing/key-store.ts';
import type { Reapplied } from './reapply.ts';
import { isPresent, markedFlag, RECOVERING, readMarks, writeMarks } from './bucket-marks.ts';
import { type ChainRepair, type RollbackSign, RollbackWatch, repairChains, repairSteps } from './rollback.ts';

const claimRollback = script('rollback-claim');
const markLoss = script('loss-mark');

/**
 * The recovery lock. Every other instance is not ready (503) until the holder is done, so a holder killed
 * mid-recovery (SIGKILL, a lost machine) must not keep them waiting for long: it is set for 10 s and kept
 * extended while the recovery runs (reading the export, continuing the chains, restoring the quarantines: each
 * step checks the lock is still ours). 10 s rides out a Redis stall of several seconds (the keeper extends every
 * 3.3 s and gives the lock up only after 9 s without a confirmed extension) and lapses well within the 30 s the
 * survivors wait for the lock. `ttlMs` stays the previous release's TTL (30 s): a lock that long is still a
 * broker's, waited for during a rolling upgrade rather than taken over. Lower it to `holdMs` once no such
 * release runs (test/ops/recovery-lock-killed.test.ts).
 */
const RECOVERY_LOCK = { ttlMs: 30_000, holdMs: 10_000, waitMs: 30_000 };

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
  metrics: Metrics;
  /** Absolute path of the audit export (what a Redis that went back in time is compared with). */
  exportFile: string;
  /** Applies again the endings a Redis that went back in time lost (ops/reapply.ts). */
  reapply: (records: AuditRecord[]) => Promise<Reapplied>;
  /** One audit export pass now: exports and seals every chain (AuditExporter.exportNow). */
  sealAudit?: () => Promise<unknown>;
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
 *
 * Redis going back in time (restarted from an older snapshot: the marker is
 * in it) is noticed by RollbackWatch (ops/rollback.ts) and handled the same
 * way, not-ready meanwhile: under the recovery lock each chain is continued
 * from the export where the export reaches further, the endings Redis lost
 * (tasks ended, leases revoked, quarantines added or lifted: the export's,
 * and those this instance remembers writing) are applied again, rotated
 * secrets are written back, and `broker.data_loss` records (reason
 * `redis_rolled_back`) say what was lost.
 */
export class DataLossMonitor {
  private readonly d: RecoveryDeps;
  private epoch: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private recovering: Promise<void> | undefined;
  private checking: Promise<void> | undefined;
  private queued: Promise<void> | undefined;
  private healthy = false;
  /** Set by stop(): no check starts after it, and no wait for a lock goes on. */
  private readonly stopping = new AbortController();
  /** The seal after a recovery (see recover), which close() waits for too. */
  private sealing: Promise<unknown> | undefined;
  private readonly watch: RollbackWatch;
  /** A rollback noticed and not yet recovered from (recovery runs again at every check until it succeeds). */
  private rolledBack: RollbackSign | undefined;
  /** The chain heads this instance knew of when it noticed the rollback (what is known lost). */
  private knownAtRollback: Map<AuditChain, string> | undefined;
  /** This instance's recovery id for the rollback noticed (rollback-claim.lua), kept across its attempts. */
  private rollbackClaim: string | undefined;
  /**
   * What the attempts of this recovery applied again so far: each step is idempotent, so an attempt after one
   * that applied them and failed finds them applied and counts none; its records count what all attempts did.
   */
  private reappliedSoFar: Reapplied = { tasks: 0, leases: 0, quarantines: 0 };
  /**
   * A rollback recovery this instance had not finished when Redis lost its data: what it kept in Redis to finish
   * and record the rollback (its repairs, its claim and records) went with the data, so the rollback would be
   * recorded nowhere. Taken by the data-loss recovery (recover), which writes a record of it once the loss is
   * recorded (kept across its attempts until written).
   */
  private rollbackLost: LostRollback | undefined;
  /**
   * The records of data losses this instance stored with their marker (loss-mark.lua) that it has not seen
   * written, by epoch and index (their identity `loss:<epoch>:<n>`). Redis losing its data again before they
   * are written takes the stored copy with it; the next recovery knows nothing of that loss (the known heads
   * were reset by the first): these are written from here then (writeLoss), so the loss is still recorded.
   * Kept across recoveries, unlike what is remembered of a dataset.
   */
  private readonly lossUnwritten = new Map<string, Map<number, StoredRecord>>();
  /**
   * This instance created the signing key at a recovery attempt that failed before `signing.recreated` was
   * recorded (stored with the loss's records, or written): its next attempt finds the key in Redis and creates
   * none, as does every other instance, so only this one can still record it.
   */
  private signingUnrecorded = false;
  /** A loss of buckets noticed and not yet recovered from (counted and logged once, however many attempts). */
  private bucketsLost = false;
  /**
   * A whole data loss noticed and not yet recovered from: counted and logged once, however many attempts its
   * recovery takes (each failed attempt, a failover's refused commands say, is retried at the next check).
   */
  private dataLost = false;
  /** The buckets' markers at this instance's last check of this dataset (see recoveredElsewhere). */
  private marks: (string | null)[] | undefined;

  constructor(deps: RecoveryDeps) {
    this.d = deps;
    this.watch = new RollbackWatch({ redis: deps.redis, keys: deps.keys, audit: deps.audit, instance: randomUUID() });
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

  /**
   * Stops the checks: none starts after it (a queued one neither), a check under way starts no recovery, and
   * a wait for a lock gives up. Resolves once the check or recovery under way, and the seal after it, ended:
   * the broker's close() waits for that (bounded) before closing the connections. Closed under it, the
   * recovery failed and could not release its lock, left held for its TTL: every other instance answered 503
   * that long after a mere restart (test/ops/recovery-close.test.ts).
   */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.stopping.abort();
    await this.checking?.catch(() => {});
    await this.sealing?.catch(() => {});
  }

  /**
   * Checks the marker and the keys; recovers when either is gone. One check at a time: two overlapping ones
   * (the periodic one and a caller's, or a slow one and the next tick) each saw one wipe and each recovered,
   * counting the loss twice, and a look begun before the wipe took the recovered dataset for a rollback (a
   * second `broker.data_loss` record). A check asked for meanwhile runs once the current one ends, so what it
   * sees is no older than the call.
   */
  check(): Promise<void> {
    if (this.stopping.signal.aborted) return Promise.resolve();
    if (this.queued) return this.queued;
    if (this.checking) {
      this.queued = this.checking
        .catch(() => {})
        .then(() => {
          this.queued = undefined;
          return this.check();
        });
      return this.queued;
    }
    this.checking = this.checkOnce().finally(() => {
      this.checking = undefined;
    });
    return this.checking;
  }

  private async checkOnce(): Promise<void> {
    if (this.recovering) return this.recovering;
    let [epoch, keyCount, left, marked, marks] = await Promise.all([
      this.d.redis.get(this.d.keys.epoch()),
      this.d.redis.hlen(this.d.keys.signingKeys()),
      // Work a recovery kept and may not have finished (one key of each kind, all in the global slot).
      this.d.redis.exists(this.d.keys.recoveryUnfinished(), this.d.keys.lossRecords(), this.d.keys.rollbackPlans()),
      markedFlag(this.d.redis, this.d.keys),
      // Sent with the rest: on a Cluster each master answers its buckets' markers in the same round trip.
      readMarks(this.d.redis, this.d.keys),
    ]);
    // Buckets whose master came back empty while the epoch held (only once this dataset's markers were written).
    let lostBuckets = marked ? marks.flatMap((m, b) => (isPresent(m) ? [] : [b])) : [];
    if (lostBuckets.length > 0) {
      // The epoch was read before the markers, not with them: a wipe in between (on one node, another client's
      // FLUSHALL between the GET and the MGET) showed the epoch held and every marker gone, and a whole data
      // loss was counted and logged as the loss of buckets (test/ops/bucket-marks-wipe-race.test.ts). Read again
      // after the markers: still there, the markers were gone while it held (a bucket loss); gone or another
      // since, what was read is no one dataset, and the epoch read now decides (a data loss: recover below).
      const [again, keysAgain] = await Promise.all([this.d.redis.get(this.d.keys.epoch()), this.d.redis.hlen(this.d.keys.signingKeys())]);
      // Markers read before that are of no dataset to compare with later (recoveredElsewhere): none kept.
      if (again !== epoch || keysAgain === 0) [epoch, keyCount, lostBuckets, marks] = [again, keysAgain, [], []];
    }
    if (epoch && keyCount > 0 && epoch === this.epoch) {
      if (lostBuckets.length > 0) return this.startBucketRecovery(lostBuckets);
      this.recoveredElsewhere(marks);
      // A dataset of a release without markers (or whose global slot an instance of one set up again after a loss).
      if (!marked) await writeMarks(this.d.redis, this.d.keys, epoch, { nx: true });
      let sign = this.rolledBack ?? (await this.watch.look({ exportFile: this.d.exportFile }));
      if (!sign && left > 0 && !this.stopping.signal.aborted) sign = await this.finishLeft();
      if (!sign) {
        const bumps = this.watch.takeLostBumps();
        if (bumps > 0)
          this.d.logger.warn(
            { lostGenerationBumps: bumps },
            'Redis lost writes of this instance (a failover?), but no audit record it wrote and nothing the export holds: not a rollback',
          );
        this.healthy = true;
        // The dataset this instance took after a loss holds what it needs: that loss is over (see dataLost).
        this.dataLost = false;
        return;
      }
      this.noticed(sign);
      if (this.stopping.signal.aborted) return;
      this.recovering = this.recoverRollback(sign).finally(() => {
        this.recovering = undefined;
      });
      return this.recovering;
    }
    if (epoch && keyCount > 0 && this.epoch === undefined) {
      // First look at a dataset another instance set up: was it rolled back while nobody watched?
      this.healthy = false;
      // The records of a data loss whose recovery failed before it wrote them all (the instance may be gone):
      // before the epoch is taken as seen, so a failure here is tried again at the next check.
      await this.writeLoss();
      // Buckets lost while no instance watched: recovered first, then this first look starts over. Looked at
      // against the export first, their chains (heads gone, behind the export) read as Redis going back in time:
      // rolled_back counted, a redis_rolled_back record, then the bucket loss recorded again once the rollback
      // recovery was done (test/topologies/shard-loss-races.test.ts).
      if (lostBuckets.length > 0) return this.startBucketRecovery(lostBuckets, epoch).then(() => this.checkOnce());
      const sign = await this.watch.againstExport(this.d.exportFile, this.d.keys.prefix);
      // Likewise a rollback's, stored with its claim, whose claimant died part-way (not before the epoch is taken
      // as seen either). With a rollback to recover from, its recovery writes them if it claims for that recovery.
      if (!sign) await this.writeRollbacksLeft();
      this.epoch = epoch;
      // A dataset set up (here or elsewhere) after a loss this instance saw and failed to recover from: that loss is
      // over, and the next is another. Left set, no later loss was counted or logged by this instance
      // (test/ops/recovery-flag-cleared.test.ts).
      this.dataLost = false;
      await this.d.signing.reload();
      if (sign) {
        // Recovered at the next check (start() runs once the services that apply endings exist).
        this.noticed(sign);
        return;
      }
      this.marks = marks;
      if (!marked) await writeMarks(this.d.redis, this.d.keys, epoch, { nx: true });
      await this.watch.look();
      this.healthy = true;
      return;
    }
    if (this.stopping.signal.aborted) return;
    this.recovering = this.recover(this.epoch !== undefined || epoch !== null).finally(() => {
      this.recovering = undefined;
    });
    return this.recovering;
  }

  /**
   * Buckets whose marker holds another value than at this instance's last check: another instance recovered their
   * loss in between (each recovery writes its own id). What this instance knew of them is gone: its cached tasks,
   * and its chain heads, which a head now behind them would otherwise show as Redis going back in time (a second
   * `broker.data_loss` record, `redis_rolled_back`, for the same loss). Counted and logged, as every instance that
   * sees a data loss does.
   */
  private recoveredElsewhere(marks: (string | null)[]): void {
    const before = this.marks;
    this.marks = marks;
    const changed = before ? marks.flatMap((m, b) => (isPresent(m) && isPresent(before[b]) && m !== before[b] ? [b] : [])) : [];
    if (changed.length === 0) return;
    this.d.metrics.dataLoss.inc({ kind: 'bucket_lost' });
    this.d.logger.error(
      { buckets: changed },
      'Redis lost the data of some buckets and another instance recovered them (see the broker.data_loss audit records)',
    );
    this.d.clearCaches();
    this.d.audit.resetHeads();
    this.watch.reset();
  }

  /** `epoch`: the dataset's epoch marker the loss was seen with (this instance's, once it had its first look). */
  private startBucketRecovery(buckets: number[], epoch = this.epoch): Promise<void> {
    if (this.stopping.signal.aborted) return Promise.resolve();
    this.recovering = this.recoverBuckets(buckets, epoch).finally(() => {
      this.recovering = undefined;
    });
    return this.recovering;
  }

  /**
   * After one Cluster master came back empty while the epoch marker (on another master) held: the buckets whose
   * markers are gone lost their tasks, leases, approvals and audit chain heads. Handled as a data loss of those
   * buckets, not-ready meanwhile: under the recovery lock their chains are continued from the export (appends to
   * them wait for their marker: AuditLog `guardEpoch`), a `broker.data_loss` record (detail.kind `bucket`) goes
   * into each and one into `ops`, then their markers are written again. What the global slot holds (signing
   * keys, quarantines, rotated secrets) was not lost and is left alone.
   *
   * Once per loss, whatever fails part-way: the loss's id is put in the lost markers first (`recovering:<id>`),
   * its records are stored under it with the other losses' (Keys.lossRecords, field `buckets:<id>`) before the
   * markers are written back, and written from there each once (writeLoss); a later attempt, or another
   * instance, finds the id in the markers and goes on with it.
   */
  private async recoverBuckets(seen: number[], epoch: string | undefined): Promise<void> {
    this.healthy = false;
    if (!this.bucketsLost) {
      this.bucketsLost = true;
      this.d.metrics.dataLoss.inc({ kind: 'bucket_lost' });
      this.d.logger.error(
        { buckets: seen },
        'Redis lost the data of some buckets (a Cluster master came back empty?): their tasks, leases and approvals are gone; not ready until their audit chains are continued from the export',
      );
    }
    const knownHeads = this.d.audit.knownHeads();
    this.d.clearCaches();
    this.d.audit.resetHeads();
    const onTakeover = reportTakeover(this.d.logger, (e) => this.d.audit.append(e));
    let recorded = false;
    const done = await withLock(
      this.d.redis,
      this.d.keys.lock('recovery'),
      { ...RECOVERY_LOCK, onTakeover, signal: this.stopping.signal },
      async (_lock, held) => {
        // Emptied whole since (the global slot's master too): a data loss, which the next check handles.
        if ((await this.d.redis.get(this.d.keys.epoch())) !== epoch) return 'lost' as const;
        // Read again under the lock: another instance may have recovered them, or more may be gone.
        const marks = await readMarks(this.d.redis, this.d.keys);
        const lost = marks.flatMap((m, b) => (isPresent(m) ? [] : [b]));
        if (lost.length === 0) return 'done' as const;
        const ids = new Set(marks.flatMap((m) => (m?.startsWith(RECOVERING) ? [m.slice(RECOVERING.length)] : [])));
        const id = [...ids][0] ?? randomUUID();
        const fresh = lost.filter((b) => marks[b] === null);
        await Promise.all(fresh.map((b) => this.d.redis.set(this.d.keys.bucketMarker(b), `${RECOVERING}${id}`)));
        // The epoch was read before the markers: a wipe in between (or before these SETs) showed every marker gone,
        // and this recovery set them `recovering:` on the empty Redis, continued every chain there, wrote the
        // markers back over its own, and answered ready on a Redis without signing keys or epoch marker
        // (test/ops/bucket-marks-wipe-race.test.ts). Read again now: a wipe after the SETs takes them, and the
        // write-back (bucket-mark-set.lua) refuses.
        if ((await this.d.redis.get(this.d.keys.epoch())) !== epoch) return 'lost' as const;
        // What each lost marker holds now: written back below only over that (a bucket lost again meanwhile stays lost).
        const seenMarks = marks.map((m, b) => (fresh.includes(b) ? `${RECOVERING}${id}` : m));
        held.throwIfAborted();
        const archive = await this.d.readArchive();
        held.throwIfAborted();
        // Only the lost buckets' chains: a surviving chain is left alone by continueChains anyway (its head is there).
        const continued = (await continueChains(this.d.redis, this.d.keys, archive, knownHeads)).filter(
          (c) => c.chain !== 'ops' && lost.includes(c.chain),
        );
        held.throwIfAborted();
        await Promise.all(
          continued.flatMap((c) =>
            c.orphans.map((o) => this.d.audit.appendOnce(c.chain, strip(o.record), lossSteps.idOf(o.record), o.time)),
          ),
        );
        held.throwIfAborted();
        await this.d.redis.hsetnx(this.d.keys.lossRecords(), `buckets:${id}`, JSON.stringify(bucketLossRecords(continued, lost, id)));
        held.throwIfAborted();
        // Its own value: an instance that did not see the marker gone sees it changed (recoveredElsewhere). Not
        // over a bucket lost again since its chain was continued: its head is gone again, and a marker written
        // back over that loss hid it (the next record forked the chain at seq 1). Its records wait (stored with
        // this loss's id) until the next attempt continued it again.
        const refused = await writeMarks(this.d.redis, this.d.keys, id, { buckets: lost, seen: seenMarks });
        if (refused.length > 0)
          throw new Error(`buckets ${refused.join(',')} lost their data again during their recovery; will look again`);
        if (await this.writeLoss()) recorded = true;
        await this.finishContinuations();
        // On a Cluster the epoch marker is on another master than these markers: its loss meanwhile leaves the
        // write-back alone. Not answered ready on a Redis without it (the next check recovers the whole loss).
        return (await this.d.redis.get(this.d.keys.epoch())) === epoch ? ('done' as const) : ('lost' as const);
      },
    );
    if (!done) throw new Error('another instance is recovering; will look again');
    this.bucketsLost = false;
    this.marks = undefined;
    if (recorded) this.sealAfterLoss();
    // The whole dataset went meanwhile (signing keys, epoch marker): not ready; the next check recovers it. Taken
    // as recovered, this instance answered ready on a Redis without signing keys until that check.
    if (done.value === 'lost') return;
    // An instance's first look at the dataset found the loss: it goes on with that look (checkOnce).
    if (this.epoch === undefined) return;
    this.watch.reset();
    await this.watch.look();
    this.d.logger.warn('recovered from the loss of some buckets (see the broker.data_loss audit records for what was lost)');
    this.healthy = true;
  }

  /** Said once per rollback, however many attempts its recovery takes. */
  private noticed(sign: RollbackSign): void {
    this.healthy = false;
    if (this.rolledBack) return;
    this.rolledBack = sign;
    this.d.metrics.dataLoss.inc({ kind: 'rolled_back' });
    this.d.logger.error(
      { ...sign },
      'Redis went back in time (restarted from an older snapshot?): what was decided after it is gone; not ready until the chains are continued from the export and the endings it lost are applied again',
    );
  }

  /**
   * After Redis went back in time: under the recovery lock (and the export
   * lock, so no export runs on a chain being repaired), continues the chains
   * from the export, then appends again the records that clashed with it,
   * applies the lost endings again, and records what happened. Throws (and
   * runs again at the next check) when it could not finish.
   */
  private async recoverRollback(sign: RollbackSign): Promise<void> {
    this.healthy = false;
    // Taken at the first attempt: a failed attempt already forgot the heads this instance wrote.
    this.knownAtRollback ??= this.watch.known();
    const known = this.knownAtRollback;
    // What the export (or this instance) showed existed counts as known too.
    if (sign.chain !== undefined && markerSeq(sign.known) > markerSeq(known.get(sign.chain))) known.set(sign.chain, sign.known);
    const remembered = this.d.audit.endings();
    this.d.clearCaches();
    this.d.audit.resetHeads();
    const onTakeover = reportTakeover(this.d.logger, (e) => this.d.audit.append(e));
    const lockOpts = { ...RECOVERY_LOCK, onTakeover, signal: this.stopping.signal };
    const done = await withLock(this.d.redis, this.d.keys.lock('recovery'), lockOpts, async (_lock, held) => {
      // Emptied since: a data loss, which the next check handles.
      if ((await this.d.redis.get(this.d.keys.epoch())) !== this.epoch) return 'lost' as const;
      // The export's own hold and bound (audit/export.ts), kept extended: a longer TTL is a lock no broker sets,
      // which exporters take over, and a longer hold would keep exports waiting for a killed recovery.
      const repaired = await withLock(
        this.d.redis,
        this.d.keys.lock('audit-export'),
        { ...EXPORT_LOCK, waitMs: 30_000, onTakeover, signal: this.stopping.signal },
        async (_exportLock, exportHeld) => {
          const signal = AbortSignal.any([held, exportHeld]);
          // Kept with each repair step: an instance that finds a step kept goes by it to the claim it belongs to.
          this.rollbackClaim ??= randomUUID();
          const deps = { redis: this.d.redis, keys: this.d.keys, file: this.d.exportFile, recovery: this.rollbackClaim };
          return await repairChains(deps, known, remembered, signal);
        },
      );
      if (!repaired) throw new Error('the audit export lock stayed busy; will look again');
      const repair = repaired.value;
      // Each step only while the lock is still this instance's: one that lost it (cut off for a hold, taken by
      // another instance since) must not go on writing beside the new holder; the next check starts over.
      held.throwIfAborted();
      if (repair.unreadable > 0)
        this.d.logger.error({ entries: repair.unreadable }, 'kept rollback repairs that are not what the repair stores; left out');
      // Records written on the rolled-back chains before this was noticed, behind the export's end, with their own
      // time. Taken off the chains by this attempt or kept from an earlier one that took them off (repairChains),
      // which may have appended some: each once.
      await Promise.all(
        repair.orphans.map((o) => this.d.audit.appendOnce(o.chain, strip(o.record), repairSteps.idOf(o.record), o.record.time)),
      );
      held.throwIfAborted();
      const now = await this.d.reapply(repair.reapply);
      const before = this.reappliedSoFar;
      const reapplied: Reapplied = {
        tasks: before.tasks + now.tasks,
        leases: before.leases + now.leases,
        quarantines: before.quarantines + now.quarantines,
      };
      this.reappliedSoFar = reapplied;
      held.throwIfAborted();
      // One set of records per rollback: a recovery listed since this instance's last good look handled it (every
      // instance still repairs and applies again what it remembers; those records are each audited). Claimed
      // in one step before recording: a look and a later push let an instance stalled between them (its lock
      // lapsed, another took it and recorded) record the same rollback again. The claim stores the claimant's
      // records (what its first attempt found: a later one finds the chains repaired), and they are written
      // from there, each once: by the claimant at whichever attempt gets through, or by an instance that finds
      // the claim while they are not all written (the claimant may have died part-way).
      this.rollbackClaim ??= randomUUID();
      const planned = rollbackRecords(sign, repair.chains, reapplied, this.rollbackClaim);
      const [by, stored] = (await claimRollback.run(
        this.d.redis,
        [this.d.keys.rollbackRecoveries(), this.d.keys.rollbackPlans()],
        [this.rollbackClaim, JSON.stringify(planned), ...sign.recoveriesSeen],
      )) as [string, string | null];
      if (stored !== null) await this.writeRollback(by, stored);
      // Recorded (the repairs kept are in the claim's records, their records appended, their endings applied).
      // Before the claim's records are dropped: an instance that finds a repair kept (RollbackWatch.unfinished)
      // goes by those to write the records of that claim rather than a second set.
      await repairSteps.drop(this.d.redis, this.d.keys, repair.kept);
      if (stored !== null) await this.d.redis.hdel(this.d.keys.rollbackPlans(), by);
      if (by !== this.rollbackClaim)
        this.d.logger.warn(
          { recovery: by, ...reapplied },
          'this rollback was claimed by another instance, which records it; applied again what this one remembered',
        );
      return 'done' as const;
    });
    if (!done) throw new Error('another instance is recovering; will look again');
    if (done.value === 'lost') return;
    await this.d.restoreSecrets();
    await this.d.signing.reload();
    this.d.audit.forgetEndings();
    this.rolledBack = undefined;
    this.knownAtRollback = undefined;
    this.rollbackClaim = undefined;
    this.reappliedSoFar = { tasks: 0, leases: 0, quarantines: 0 };
    this.watch.reset();
    await this.watch.look();
    this.d.logger.warn('recovered from Redis going back in time (see the broker.data_loss audit records for what was lost)');
    this.healthy = true;
  }

  /**
   * Writes the records a rollback recovery stored with its claim (rollback-claim.lua), each once per recovery
   * (AuditLog.appendOnce: an attempt that wrote some and failed, or two instances at once, write none twice);
   * the caller drops them from Redis.
   */
  private async writeRollback(recovery: string, stored: string): Promise<void> {
    const records = parseStoredRecords(stored, this.d.keys.auditChains(), isRollbackEvent);
    if (!records) {
      this.d.logger.error({ recovery }, 'the records stored with a rollback claim are not records; not written');
      return;
    }
    await Promise.all(records.map((r) => this.d.audit.appendOnce(r.chain, r.event, `rollback:${recovery}`)));
  }

  /**
   * Writes the records rollback recoveries stored with their claim and did not drop, then drops them. Their
   * claimant wrote them, or died part-way: a recovery that repaired nothing (the export did not reach what Redis
   * lost) keeps no repair for an instance to find and finish, and only an instance recovering from the same
   * rollback claimed for it, so nobody wrote the rest. One still under way writes none twice (each once).
   */
  private async writeRollbacksLeft(): Promise<void> {
    const stored = await this.d.redis.hgetall(this.d.keys.rollbackPlans());
    for (const [recovery, records] of Object.entries(stored)) {
      await this.writeRollback(recovery, records);
      await this.d.redis.hdel(this.d.keys.rollbackPlans(), recovery);
    }
  }

  private async recover(lostSeen: boolean): Promise<void> {
    this.healthy = false;
    if (lostSeen && !this.dataLost) {
      this.dataLost = true;
      this.d.logger.error('Redis lost its data: recreating the signing key and restoring quarantines before answering ready');
      this.d.metrics.dataLoss.inc({ kind: 'lost' });
    }
    // A rollback recovery cut short by this loss: recorded once the loss is (what it kept in Redis is gone).
    if (this.rolledBack && !this.rollbackLost) {
      this.rollbackLost = {
        sign: this.rolledBack,
        recovery: this.rollbackClaim ?? randomUUID(),
        reapplied: this.reappliedSoFar,
        known: this.knownAtRollback ?? this.watch.known(),
      };
      this.d.logger.error(
        { recovery: this.rollbackLost.recovery, seen: this.rolledBack.seen },
        'Redis lost its data during a rollback recovery: what it kept to finish and record the rollback is gone; recording that it was cut short',
      );
    }
    // What was remembered of the lost dataset means nothing on the new one (its tasks and leases are gone).
    this.marks = undefined;
    this.rolledBack = undefined;
    this.knownAtRollback = undefined;
    this.rollbackClaim = undefined;
    this.reappliedSoFar = { tasks: 0, leases: 0, quarantines: 0 };
    this.watch.reset();
    this.d.audit.forgetEndings();
    // What this instance knew of the chains is the best record of how much was lost: with what it knew when it
    // noticed a rollback it was recovering from (its recovery forgot the heads it had written).
    const knownHeads = this.d.audit.knownHeads();
    for (const [chain, head] of this.rollbackLost?.known ?? [])
      if (markerSeq(head) > markerSeq(knownHeads.get(chain))) knownHeads.set(chain, head);
    this.d.clearCaches();
    this.d.audit.resetHeads();
    let recorded = false;
    let signingRecorded = false;
    const done = await withLock(
      this.d.redis,
      this.d.keys.lock('recovery'),
      {
        ...RECOVERY_LOCK,
        onTakeover: reportTakeover(this.d.logger, (e) => this.d.audit.append(e)),
        signal: this.stopping.signal,
      },
      // Kept extended throughout: reading a large export can outlast the hold many times over.
      async (_lock, held) => {
        let lost = lostSeen;
        const current = await this.d.redis.get(this.d.keys.epoch());
        const created = (await this.d.signing.ensure()) || this.signingUnrecorded;
        this.signingUnrecorded = created;
        if (!current) {
          // The buckets' markers before any chain is continued: written back below only over these (a master
          // losing its data meanwhile, after its chains were continued, stays noticed: bucket-mark-set.lua).
          const seenMarks = await readMarks(this.d.redis, this.d.keys);
          const archive = await this.d.readArchive();
          if (!lost && archive.chains.size > 0) {
            lost = true;
            this.d.logger.error('Redis holds no data but the audit export does: continuing from the export (Redis lost its data)');
          }
          let continued: Continuation[] = [];
          // As in recoverRollback: each step only while the lock is still this instance's (reading a large
          // export can outlast it).
          held.throwIfAborted();
          if (lost) {
            continued = await continueChains(this.d.redis, this.d.keys, archive, knownHeads);
            held.throwIfAborted();
            await this.d.restoreQuarantines(archive.quarantines);
            held.throwIfAborted();
            // Records that slipped in after the loss go behind the export's last record, with their own time. Taken
            // off the chains by this attempt or kept from an earlier one that took them off (continueChains), which
            // may have appended some: each once.
            await Promise.all(
              continued.flatMap((c) =>
                c.orphans.map((o) => this.d.audit.appendOnce(c.chain, strip(o.record), lossSteps.idOf(o.record), o.time)),
              ),
            );
          }
          held.throwIfAborted();
          // The records are stored with the marker, in its step, and written from there (writeLoss), each once:
          // written after it, an attempt that failed between the two (or part-way through them) left the rest
          // unwritten for good, as the marker told every later attempt the loss was recorded.
          const records = lost ? lossRecords(continued, archive.quarantines.length) : [];
          if (lost && created) records.push({ chain: 'ops', event: SIGNING_RECREATED });
          // Refused: another instance finished this recovery (it took the lock after this one's lapsed under
          // a stall) and recorded the loss; a second record would count one loss twice.
          const epoch = randomUUID();
          // Every chain is continued above, so every bucket holds what it can: its marker written (before the
          // epoch marker, which appends to a bucket's empty chain do not wait for: they wait for its marker).
          // The bucket count went with the global slot too: kept, so a broker started with another count is
          // still refused (src/broker.ts assertBuckets).
          await this.d.redis.hsetnx(this.d.keys.meta(), 'buckets', String(this.d.keys.buckets));
          const refused = await writeMarks(this.d.redis, this.d.keys, epoch, { seen: seenMarks });
          if (refused.length > 0) throw new Error(`buckets ${refused.join(',')} lost their data during the recovery; trying again`);
          const marked = await markLoss.run(
            this.d.redis,
            [this.d.keys.epoch(), this.d.keys.lossRecords()],
            [epoch, records.length > 0 ? JSON.stringify(records) : ''],
          );
          if (marked === 1 && records.length > 0) this.lossUnwritten.set(epoch, new Map(records.map((r, n) => [n, r])));
          signingRecorded = marked === 1 && lost && created;
          // Stored with the loss's records: written from there (or, Redis losing them, from lossUnwritten).
          if (marked === 1) this.signingUnrecorded = false;
        }
        // This attempt's records, or those of an attempt (this instance's or another's) that set the marker and
        // failed before it wrote them all.
        if (await this.writeLoss()) recorded = true;
        await this.finishContinuations();
        // Once the loss is recorded, whichever instance recorded it: the rollback recovery it cut short, once
        // (this instance's attempts, and the records of other instances that were recovering too, each their own).
        const cut = this.rollbackLost;
        if (cut) {
          await this.d.audit.appendOnce('ops', lostRollbackRecord(cut), `rollback-lost:${cut.recovery}`);
          this.rollbackLost = undefined;
          recorded = true;
        }
        if (created && lost && !signingRecorded) await this.d.audit.append(SIGNING_RECREATED);
        this.signingUnrecorded = false;
      },
    );
    if (!done) throw new Error('another instance is recovering; will look again');
    // Every instance that survived writes back what it runs with (the newest generation wins), before answering ready.
    await this.d.restoreSecrets();
    await this.d.signing.reload();
    this.epoch = (await this.d.redis.get(this.d.keys.epoch())) ?? undefined;
    this.healthy = this.epoch !== undefined && this.d.signing.size > 0;
    if (this.healthy) this.dataLost = false;
    // Redis's seals went with its data, and the export's newest seal of an idle chain can be older than
    // audit.sealMaxAgeSeconds (idle chains are resealed in Redis only): the broker.data_loss records just written
    // behind it would read as "sealing has stopped" to audit:verify until the next pass. Seal them now, without
    // holding readiness back on another instance's export pass.
    if (recorded) this.sealAfterLoss();
  }

  /** Kept (stop() waits for it): left to run past close(), it failed on the closed connections. */
  private sealAfterLoss(): void {
    if (this.d.sealAudit) {
      const sealing = this.d
        .sealAudit()
        .catch((err: Error) => this.d.logger.warn({ err: err.message }, 'audit: sealing after the data loss failed; the next pass seals'))
        .finally(() => {
          if (this.sealing === sealing) this.sealing = undefined;
        });
      this.sealing = sealing;
    }
  }

  /**
   * Writes the records of data losses stored with their marker (loss-mark.lua), each once per loss
   * (AuditLog.appendOnce: an attempt that wrote some and failed, or two instances at once, write none twice),
   * then drops them from Redis; and those this instance stored that Redis lost before they were written
   * (lossUnwritten). Resolves whether there were any.
   */
  private async writeLoss(): Promise<boolean> {
    const [stored, marker] = await Promise.all([this.d.redis.hgetall(this.d.keys.lossRecords()), this.d.redis.get(this.d.keys.epoch())]);
    const epochs = Object.keys(stored);
    let carried = false;
    for (const [epoch, left] of this.lossUnwritten) {
      if (epoch in stored || marker === null) continue;
      // Still this loss's dataset: its stored copy leaves only once all are written (by another instance).
      if (epoch === marker) {
        this.lossUnwritten.delete(epoch);
        continue;
      }
      // Redis lost its data again (another loss's marker) and the stored copy with it: written from here, each
      // once (a failure part-way leaves the rest here for the next attempt).
      carried = true;
      await Promise.all(
        [...left].map(([n, r]) => this.d.audit.appendOnce(r.chain, r.event, `loss:${epoch}:${n}`).then(() => left.delete(n))),
      );
      this.lossUnwritten.delete(epoch);
    }
    for (const epoch of epochs) {
      const records = parseStoredRecords(stored[epoch]!, this.d.keys.auditChains(), isLossEvent);
      const left = this.lossUnwritten.get(epoch);
      if (records)
        await Promise.all(
          records.map((r, i) => this.d.audit.appendOnce(r.chain, r.event, `loss:${epoch}:${i}`).then(() => left?.delete(i))),
        );
      else this.d.logger.error({ epoch }, 'the records stored with a data-loss marker are not records; not written');
      await this.d.redis.hdel(this.d.keys.lossRecords(), epoch);
      this.lossUnwritten.delete(epoch);
    }
    return epochs.length > 0 || carried;
  }

  /**
   * Once the loss is recorded (its records stored with the marker): appends, each once, what continuation steps
   * took off the chains (this attempt appended them before the marker; an attempt that set the marker and failed
   * before dropping them, or one whose step ran beside another instance's recovery, may not have), then drops
   * what they kept.
   */
  private async finishContinuations(): Promise<void> {
    const kept = await keptContinuations(this.d.redis, this.d.keys);
    await Promise.all(kept.flatMap((c) => c.orphans.map((o) => this.d.audit.appendOnce(c.chain, strip(o), lossSteps.idOf(o), o.time))));
    await lossSteps.drop(
      this.d.redis,
      this.d.keys,
      kept.map((c) => c.chain),
    );
  }

  /**
   * The periodic check found work a recovery kept and did not finish (Keys.recoveryUnfinished, stored loss or
   * rollback records): its instance died, or its attempt failed and it was closed. Only an instance starting up
   * looked for it before, so it waited for a restart. Under the recovery lock, tried once (its holder is the one
   * recovering: nothing is left over while it works, and this check must not wait): writes the stored records,
   * appends what continuation steps kept; a rollback repair kept is a rollback to recover from (returned: the
   * caller recovers, as an instance starting up does). Clears the flag once nothing is left.
   */
  private async finishLeft(): Promise<RollbackSign | undefined> {
    const onTakeover = reportTakeover(this.d.logger, (e) => this.d.audit.append(e));
    const done = await withLock(
      this.d.redis,
      this.d.keys.lock('recovery'),
      { ...RECOVERY_LOCK, waitMs: 0, onTakeover, signal: this.stopping.signal },
      async (_lock, held) => {
        // A data loss since: the next check recovers (and finishes this with it).
        if ((await this.d.redis.get(this.d.keys.epoch())) !== this.epoch) return undefined;
        await this.writeLoss();
        held.throwIfAborted();
        const sign = await this.watch.leftUnfinished();
        if (sign) return sign;
        await this.finishContinuations();
        held.throwIfAborted();
        // A claim's records with no repair kept: the claimant dropped its repairs (after writing them) and failed
        // before dropping these. Written again, each once (none twice), then dropped.
        const plans = await this.d.redis.hgetall(this.d.keys.rollbackPlans());
        for (const [id, stored] of Object.entries(plans)) {
          await this.writeRollback(id, stored);
          await this.d.redis.hdel(this.d.keys.rollbackPlans(), id);
        }
        held.throwIfAborted();
        // Set only under this lock (before a recovery's per-chain steps), so nothing sets it meanwhile.
        await this.d.redis.del(this.d.keys.recoveryUnfinished());
        return undefined;
      },
    );
    return done?.value;
  }
}

const SIGNING_RECREATED: AuditEvent = {
  action: 'signing.recreated',
  actor: 'broker',
  decision: 'ok',
  reason: 'redis_data_lost',
  detail: { immediate: true },
};

/** One `broker.data_loss` record in each chain that had records, and always one in `ops`. */
function lossRecords(continued: Continuation[], quarantines: number): StoredRecord[] {
  const byChain = new Map(continued.map((c) => [c.chain, c]));
  if (!byChain.has('ops')) byChain.set('ops', { chain: 'ops', continuedFromSeq: 0, knownToSeq: undefined, orphans: [] });
  return [...byChain.values()].map((c) => {
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
    return { chain: c.chain, event: { action: 'broker.data_loss', actor: 'broker', decision: 'ok', reason: 'redis_data_lost', detail } };
  });
}

/**
 * One `broker.data_loss` record in each lost bucket's chain (continued from the export, or with nothing exported:
 * then it starts it) and one in `ops` naming the buckets. `detail.kind: "bucket"` tells them from a whole loss.
 */
function bucketLossRecords(continued: Continuation[], lost: number[], id: string): StoredRecord[] {
  const chains = lossRecords(continued, 0).filter((r) => r.chain !== 'ops');
  const have = new Set(chains.map((r) => r.chain));
  for (const b of lost)
    if (!have.has(b))
      chains.push({
        chain: b,
        event: {
          action: 'broker.data_loss',
          actor: 'broker',
          decision: 'ok',
          reason: 'redis_data_lost',
          detail: { continuedFromSeq: 0, lost: 'none known' },
        },
      });
  for (const r of chains) (r.event.detail as Record<string, unknown>).kind = 'bucket';
  const ops: StoredRecord = {
    chain: 'ops',
    event: {
      action: 'broker.data_loss',
      actor: 'broker',
      decision: 'ok',
      reason: 'redis_data_lost',
      detail: { kind: 'bucket', buckets: lost.join(','), loss: id, lost: 'the tasks, leases and approvals of these buckets' },
    },
  };
  return [ops, ...chains];
}

/** What a data loss's stored records may be (Redis is writable by others: nothing but the broker's own). */
const isLossEvent = (e: AuditEvent): boolean =>
  e.actor === 'broker' &&
  e.decision === 'ok' &&
  e.reason === 'redis_data_lost' &&
  (e.action === 'broker.data_loss' || e.action === 'signing.recreated');

/** What a rollback's stored records may be. */
const isRollbackEvent = (e: AuditEvent): boolean =>
  e.action === 'broker.data_loss' && e.actor === 'broker' && e.decision === 'ok' && e.reason === 'redis_rolled_back';

/** A record for one chain, as stored in Redis before it is written (with a rollback's claim, a loss's marker). */
interface StoredRecord {
  chain: AuditChain;
  event: AuditEvent;
}

/** A rollback recovery cut short by a data loss (DataLossMonitor.rollbackLost). */
interface LostRollback {
  sign: RollbackSign;
  /** This instance's recovery id for it (its claim's, or a fresh one if it had not got that far). */
  recovery: string;
  /** What its attempts applied again before the data was lost. */
  reapplied: Reapplied;
  /** The chain heads known when the rollback was noticed. */
  known: Map<AuditChain, string>;
}

/**
 * The record of a rollback whose recovery a data loss cut short (in `ops`): what showed it, and what its recovery
 * had applied again. What it repaired and found lost went with the data (the `redis_data_lost` records say what
 * the loss took, this instance's heads at the rollback included).
 */
function lostRollbackRecord(cut: LostRollback): AuditEvent {
  return {
    action: 'broker.data_loss',
    actor: 'broker',
    decision: 'ok',
    reason: 'redis_rolled_back',
    detail: {
      kind: 'rollback',
      unfinished: 'redis_data_lost',
      seen: cut.sign.seen,
      recovery: cut.recovery,
      lost: 'unknown: its recovery was cut short by a data loss (see the redis_data_lost records)',
      tasksEndedAgain: cut.reapplied.tasks,
      leasesRevokedAgain: cut.reapplied.leases,
      quarantinesAppliedAgain: cut.reapplied.quarantines,
    },
  };
}

/** One `broker.data_loss` record (reason `redis_rolled_back`) in `ops` and in each chain the repair changed. */
function rollbackRecords(sign: RollbackSign, chains: ChainRepair[], reapplied: Reapplied, recovery: string): StoredRecord[] {
  const byChain = new Map(chains.map((c) => [c.chain, c]));
  if (!byChain.has('ops')) byChain.set('ops', { chain: 'ops', redisHead: '', continuedFrom: '', rechained: 0 });
  return [...byChain.values()].map((c) => {
    const detail: Record<string, string | number | boolean> = {
      kind: 'rollback',
      continuedFromSeq: markerSeq(c.continuedFrom),
      redisSeq: markerSeq(c.redisHead),
    };
    if (c.lostFromSeq !== undefined && c.lostToSeq !== undefined) {
      detail.lostFromSeq = c.lostFromSeq;
      detail.lostToSeq = c.lostToSeq;
      detail.lost = `at least ${c.lostFromSeq}..${c.lostToSeq}`;
    } else {
      detail.lost = 'none known';
    }
    if (c.rechained > 0) detail.rechained = c.rechained;
    if (c.chain === 'ops') {
      detail.seen = sign.seen;
      detail.recovery = recovery;
      detail.tasksEndedAgain = reapplied.tasks;
      detail.leasesRevokedAgain = reapplied.leases;
      detail.quarantinesAppliedAgain = reapplied.quarantines;
    }
    return { chain: c.chain, event: { action: 'broker.data_loss', actor: 'broker', decision: 'ok', reason: 'redis_rolled_back', detail } };
  });
}

/**
 * Records stored in Redis to be written (with a rollback's claim, a loss's marker), or undefined when they are not
 * what the broker stores (Redis is writable by others: nothing but records `allowed`, on chains of this deployment).
 */
function parseStoredRecords(
  stored: string,
  chains: readonly AuditChain[],
  allowed: (e: AuditEvent) => boolean,
): StoredRecord[] | undefined {
  let v: unknown;
  try {
    v = JSON.parse(stored);
  } catch {
    return undefined;
  }
  if (!Array.isArray(v)) return undefined;
  const ok = v.every((r: Partial<StoredRecord> | null) => {
    const e = r?.event;
    return (
      r !== null &&
      typeof r === 'object' &&
      chains.includes(r.chain as AuditChain) &&
      typeof e === 'object' &&
      e !== null &&
      allowed(e as AuditEvent)
    );
  });
  return ok ? (v as StoredRecord[]) : undefined;
}

/** The event of a stored record (its chain fields are given again when it is re-appended). */
function strip(r: AuditRecord): AuditEvent {
  const { seq: _s, time: _t, prev: _p, hash: _h, ...event } = r;
  return event;
}
