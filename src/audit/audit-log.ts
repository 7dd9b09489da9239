import type { Logger } from '../logger.ts';
import type { AuditChain, Keys } from '../redis/keys.ts';
import type { RedisClient } from '../redis/scripts.ts';
import { ChainWriter } from './chain-writer.ts';
import { DenialFolds } from './denial-folds.ts';
import { ONCE_PREFIX, parseOutboxMember } from './outbox-member.ts';
import type { AuditEvent, AuditRecord } from './record.ts';

/**
 * Appends hash-chained audit records to Redis streams shared by every
 * instance: one chain per bucket (a task's records go to its bucket, so on a
 * Cluster no single master takes every write) and an `ops` chain for
 * broker-wide events. Each record carries the previous record's hash, so
 * editing or deleting one breaks its chain (`npm run audit:verify`).
 *
 * Appends are batched per chain and written as compare-and-set scripts on
 * the chain head, a few batches in flight at once (src/audit/chain-writer.ts);
 * if another instance moved the head meanwhile, the records are re-hashed on
 * the real head and sent again.
 *
 * Repeated denials (same actor, code, task and minute) are folded: the first is
 * written at once, the rest become one record with their `count` when the
 * minute is over, so a denied caller looping cannot grow the log without bound
 * (the table and its bounds: src/audit/denial-folds.ts).
 */
/**
 * A record appended more than this after its `time` is late: the chain's lateness (Keys.auditLate) is
 * raised before it is written. Below it, audit queries read TIME_SLACK_MS past their window anyway.
 */
export const LATE_MS = 1_000;
/**
 * How far an audit query by time reads beyond its window in stream-id terms (src/lists/audit-query.ts): a
 * record's `time` and its stream id (Redis's clock when appended) differ by the append's own delay (a
 * command timeout, 2 s by default, at most) and by the process clock's skew to Redis's for records a
 * process times itself (the broker warns from 1 s of skew).
 */
export const TIME_SLACK_MS = 5_000;

export class AuditLog {
  private readonly writer: ChainWriter;
  private readonly redis: RedisClient;
  /** appendTo calls with a time waiting for their lateness to be noted, and the last of them (see appendTo). */
  private lateWaiting = 0;
  private lateTail: Promise<unknown> = Promise.resolve();
  private readonly folds: DenialFolds;
  private foldTimer: NodeJS.Timeout | undefined;
  private readonly keys: Keys;
  private readonly logger: Logger;
  private readonly now: () => number;

  /**
   * `guardEpoch`: before starting a chain at seq 1, wait until Redis holds the
   * broker's data-loss marker (the epoch). After Redis lost its data, chains
   * must continue from the export (recovery sets their heads before it
   * writes the epoch); a record written meanwhile would start a second chain.
   * A bucket's chain waits for its bucket's marker instead (Keys.bucketMarker:
   * on a Cluster a bucket's master can lose its data while the epoch holds).
   */
  constructor(deps: {
    redis: RedisClient;
    keys: Keys;
    logger: Logger;
    taskIndexMs: number;
    now?: () => number;
    guardEpoch?: boolean;
    /** Distinct keys tracked per minute before the rest fold per (task, code, action) (src/audit/denial-folds.ts). */
    foldMaxKeys?: number;
  }) {
    this.keys = deps.keys;
    this.redis = deps.redis;
    this.logger = deps.logger.child({ audit: true });
    this.now = deps.now ?? Date.now;
    this.writer = new ChainWriter({
      redis: deps.redis,
      keys: deps.keys,
      logger: this.logger,
      taskIndexMs: deps.taskIndexMs,
      guardEpoch: deps.guardEpoch ?? false,
    });
    this.folds = new DenialFolds(deps.foldMaxKeys);
  }

  /** The chain a record belongs to: its task's bucket, else `ops`. */
  chainOf(event: Pick<AuditEvent, 'taskId'>): AuditChain {
    return event.taskId ? this.keys.bucketOfTask(event.taskId) : 'ops';
  }

  /** Resolves once the record is durable in Redis; callers that hand out credentials wait for it. */
  append(event: AuditEvent): Promise<void> {
    return this.appendTo(this.chainOf(event), event);
  }

  /**
   * Appends to a given chain (a record about the chain itself, e.g. that it
   * continues after a data loss). `time` keeps a record's original time when
   * it is re-chained.
   */
  async appendTo(chain: AuditChain, event: AuditEvent, time?: string): Promise<void> {
    const late = this.lateWait(chain, time);
    if (late) await late;
    await this.write(chain, event, time);
  }

  /**
   * Before a record with its own `time` is written: what to wait for while its lateness is noted, or undefined
   * when on time (then it is written without a microtask: callers' records are sent in the order appended).
   */
  private lateWait(chain: AuditChain, time: string | undefined): Promise<void> | undefined {
    if (time === undefined || (this.lateWaiting === 0 && !this.isLate(Date.parse(time)))) return undefined;
    // Re-chained records are appended in the order given (Promise.all of many): a late one waits for its
    // lateness to be noted, and the ones after it wait behind it rather than overtake it.
    const at = Date.parse(time);
    const mine = this.lateTail.then(() => (this.isLate(at) ? this.noteLate(chain, at) : undefined));
    this.lateTail = mine.catch(() => {});
    this.lateWaiting += 1;
    return mine.finally(() => {
      this.lateWaiting -= 1;
    });
  }

  private isLate(at: number): boolean {
    return this.now() - at > LATE_MS;
  }

  /**
   * Before a record timed `at` (ms) is written, if that is more than LATE_MS ago (isLate): raises the chain's
   * lateness (Keys.auditLate), so that a query whose window covers `at` reads far enough to find it.
   */
  private async noteLate(chain: AuditChain, at: number): Promise<void> {
    const late = this.now() - at;
    // Rounded up to the second and with the slack: the process clock is not Redis's.
    await this.redis.zadd(this.keys.auditLate(chain), 'GT', Math.ceil((late + TIME_SLACK_MS) / 1000) * 1000, 'max');
  }

  /**
   * Appends records a script put in `chain`'s audit outbox (lib/outbox.lua) when it made the decision they
   * record; `at` is the outbox score (Redis ms, the decision's time), the records' time. Each is written
   * only while its member is in the outbox and leaves it in the same step, so it lands exactly once: by
   * this call, or by recovery (src/audit/outbox.ts) if this process died first or took too long. Resolves
   * once every record is in the chain, whoever wrote it.
   */
  async appendOutbox(chain: AuditChain, members: readonly string[], at: number): Promise<void> {
    await this.appendOutboxCounted(chain, members, at);
  }

  /**
   * appendOutbox, resolving with how many of the records this call wrote: the others were in the chain
   * already (for recovery: appended by the process that made the decision after all).
   */
  async appendOutboxCounted(chain: AuditChain, members: readonly string[], at: number): Promise<number> {
    if (members.length === 0) return 0;
    // Checked without a microtask when on time: callers' records are sent in the order they were appended.
    if (this.isLate(at)) await this.noteLate(chain, at);
    const time = new Date(at).toISOString();
    const written = await Promise.all(
      members.map((m) => {
        const event = parseOutboxMember(m);
        return event ? this.write(chain, event, time, m) : Promise.reject(new Error('audit outbox: a member that is not a record'));
      }),
    );
    return written.filter(Boolean).length;
  }

  /**
   * appendOutbox for a caller whose answer must not depend on the append: the decision and its records are
   * already in Redis (the script that made it put them in the outbox), so the decision is made and will be
   * recorded whatever happens here. A failed append (Redis failed between the script and the append, a
   * command timeout, chain contention given up) is logged, and recovery (src/audit/outbox.ts) appends the
   * records from the outbox after its grace period. Answering an error instead would tell the caller that
   * nothing happened when something did: an issued credential (counted against `tasks.maxLeases`, alive
   * upstream) handed to nobody, a task open under an id a retry cannot reuse, a kill switch stopped part-way.
   */
  async settleOutbox(chain: AuditChain, members: readonly string[], at: number): Promise<void> {
    try {
      await this.appendOutbox(chain, members, at);
    } catch (err) {
      this.logger.warn(
        { chain, records: members.length, err: (err as Error).message },
        'audit append failed after the decision was made; recovery appends its records from the outbox',
      );
    }
  }

  /**
   * Appends `event` naming its outbox `member` (outboxMember), which a script sent just before on the same
   * connection adds when it makes the decision (a lease it records): sent without waiting for that script's
   * answer, it travels in the same socket write and costs no round trip of its own, and is written only if
   * the script added the member. Resolves whether this call wrote it: false when the member was absent (the
   * script refused, or Redis ran the two in the other order, e.g. after a Cluster redirect: the caller then
   * appends it with appendOutbox, which writes it only if the member is there), or taken by recovery already.
   * `event` may say more than the member's record (what was learnt after the script); recovery writes the
   * member's.
   */
  appendMember(event: AuditEvent, member: string, chain: AuditChain = this.chainOf(event)): Promise<boolean> {
    return this.write(chain, event, undefined, member);
  }

  /**
   * Appends `event` to `chain` once per `id` (a stable identity, unique within the chain; no space): Redis keeps
   * the ids written (Keys.auditOnce) and checks it in the append's own step (audit-append.lua), so a step
   * that failed part-way and is run again, or run by two instances, writes each of its records once. Resolves
   * whether this call wrote it (false: written before). `time`: the record's own time, as for appendTo (a
   * record taken off a chain and appended again behind the export's end keeps its time).
   */
  appendOnce(chain: AuditChain, event: AuditEvent, id: string, time?: string): Promise<boolean> {
    if (id === '' || id.includes(' ')) return Promise.reject(new Error('audit: a record identity must be non-empty, without spaces'));
    const late = this.lateWait(chain, time);
    const member = `${ONCE_PREFIX}${id}`;
    return late ? late.then(() => this.write(chain, event, time, member)) : this.write(chain, event, time, member);
  }

  /**
   * The script that was to add outbox `member` refused (the caller of appendMember learnt it from the
   * script's answer): the record naming it is not sent if it has not left yet, and nothing more is hashed
   * on it if it has (ChainWriter.withdraw), so the refusal does not make other callers' records be sent again.
   */
  withdraw(chain: AuditChain, member: string): void {
    this.writer.withdraw(chain, member);
  }

  private write(chain: AuditChain, event: AuditEvent, time?: string, outbox = ''): Promise<boolean> {
    return new Promise((resolve, reject) => {
      this.writer.write(chain, {
        event,
        time: time ?? new Date(this.now()).toISOString(),
        outbox,
        attempts: 0,
        resolve,
        reject,
      });
    });
  }

  /** Appends many records (each durable once the promise resolves). */
  async appendAll(events: readonly AuditEvent[]): Promise<void> {
    await Promise.all(events.map((e) => this.append(e)));
  }

  /**
   * A denial: written at once the first time this minute for (actor, code, task),
   * folded into one counted record at the end of the minute after that. `ownTask`: the actor is a party
   * of the record's task (its agent or orchestrator), whose denials keep their task (denial-folds.ts).
   */
  async denial(event: AuditEvent, opts: { ownTask?: boolean } = {}): Promise<void> {
    const first = this.folds.admit(event, Math.floor(this.now() / 60_000), opts.ownTask === true);
    if (!first) return;
    this.startFoldTimer();
    try {
      await this.append(first.entry.event);
    } catch (err) {
      // Not recorded (Redis failing): counted in the minute's folded record instead, which says so. The
      // rest of the minute's denials fold as usual rather than each waiting on a failing Redis.
      this.folds.unwritten(first.key, first.entry);
      this.startFoldTimer();
      throw err;
    }
  }

  /** Writes the counted records of finished minutes (all minutes with `all`). */
  async flushFolds(all: boolean): Promise<void> {
    const taken = this.folds.take(Math.floor(this.now() / 60_000), all);
    if (this.folds.size === 0 && this.foldTimer) {
      clearInterval(this.foldTimer);
      this.foldTimer = undefined;
    }
    // Each record on its own: only those not written go back (one written twice would overstate a count).
    const results = await Promise.allSettled(taken.map(([, f]) => this.append(DenialFolds.record(f))));
    const failed = taken.filter((_, i) => results[i]!.status === 'rejected');
    if (failed.length === 0) return;
    this.logger.error(
      { err: (results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason, records: failed.length },
      'audit: folded denials could not be written; retrying at the next flush',
    );
    for (const [key, fold] of failed) this.folds.putBack(key, fold);
    this.startFoldTimer();
  }

  private startFoldTimer(): void {
    this.foldTimer ??= setInterval(() => void this.flushFolds(false), 5_000);
    this.foldTimer.unref();
  }

  /** The chain heads (`seq:hash`) as this instance last saw them: after a data loss, the end of what was lost. */
  knownHeads(): Map<AuditChain, string> {
    return this.writer.knownHeads();
  }

  /** Confirmed heads a reported head replaced since the last call (see ChainWriter.takeReplaced). */
  takeReplaced(): Map<AuditChain, { heads: string[]; overflow: boolean }> {
    return this.writer.takeReplaced();
  }

  /** Chains whose head Redis reported behind the one it had confirmed, since the last call (see ChainWriter.takeWentBack). */
  takeWentBack(): Map<AuditChain, { redis: string; known: string }> {
    return this.writer.takeWentBack();
  }

  /** The ending records this process wrote, newest last (see ChainWriter.endings). */
  endings(): { chain: AuditChain; record: AuditRecord }[] {
    return this.writer.endings();
  }

  forgetEndings(): void {
    this.writer.forgetEndings();
  }

  /** Forgets what it knew of the chain heads (after Redis lost its data). */
  resetHeads(): void {
    this.writer.resetHeads();
  }

  /** Waits for queued records to be written (shutdown), folded denials included. */
  async flush(): Promise<void> {
    await this.flushFolds(true);
    while (this.writer.busy()) await new Promise((r) => setTimeout(r, 5));
  }
}
