import type { Logger } from '../logger.ts';
import type { AuditChain, Keys } from '../redis/keys.ts';
import { type RedisClient, script } from '../redis/scripts.ts';
import { DenialFolds } from './denial-folds.ts';
import { type AuditEvent, type AuditRecord, GENESIS, hashRecord } from './record.ts';

const appendScript = script('audit-append');

type Pending = { event: AuditEvent; time: string; resolve: () => void; reject: (e: unknown) => void };

/** One chain's write state in this process. */
interface ChainState {
  queue: Pending[];
  writing: boolean;
  /** The chain head as this instance last saw it (`seq:hash`), '' when the chain is empty; undefined until read. */
  head: string | undefined;
}

/**
 * Appends hash-chained audit records to Redis streams shared by every
 * instance: one chain per bucket (a task's records go to its bucket, so on a
 * Cluster no single master takes every write) and an `ops` chain for
 * broker-wide events. Each record carries the previous record's hash, so
 * editing or deleting one breaks its chain (`npm run audit:verify`).
 *
 * Appends are batched per chain: while one batch is being written, new
 * records queue up and go in the next one, hashed in order against the head
 * this instance last saw and written in one compare-and-set script; if
 * another instance moved the head meanwhile, the batch is re-hashed on the
 * real head and retried.
 *
 * Repeated denials (same actor, code, task and minute) are folded: the first is
 * written at once, the rest become one record with their `count` when the
 * minute is over, so a denied caller looping cannot grow the log without bound
 * (the table and its bounds: src/audit/denial-folds.ts).
 */
export class AuditLog {
  private readonly chains = new Map<AuditChain, ChainState>();
  private readonly folds: DenialFolds;
  private foldTimer: NodeJS.Timeout | undefined;
  private readonly redis: RedisClient;
  private readonly keys: Keys;
  private readonly logger: Logger;
  private readonly taskIndexMs: number;
  private readonly now: () => number;
  private readonly guardEpoch: boolean;

  /**
   * `guardEpoch`: before starting a chain at seq 1, wait until Redis holds the
   * broker's data-loss marker (the epoch). After Redis lost its data, chains
   * must continue from the export (recovery sets their heads before it
   * writes the epoch); a record written meanwhile would start a second chain.
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
    this.redis = deps.redis;
    this.keys = deps.keys;
    this.logger = deps.logger.child({ audit: true });
    this.taskIndexMs = deps.taskIndexMs;
    this.now = deps.now ?? Date.now;
    this.guardEpoch = deps.guardEpoch ?? false;
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
  appendTo(chain: AuditChain, event: AuditEvent, time?: string): Promise<void> {
    let st = this.chains.get(chain);
    if (!st) {
      st = { queue: [], writing: false, head: undefined };
      this.chains.set(chain, st);
    }
    const state = st;
    return new Promise((resolve, reject) => {
      state.queue.push({ event, time: time ?? new Date(this.now()).toISOString(), resolve, reject });
      if (!state.writing) void this.drain(chain, state);
    });
  }

  /** Appends many records (each durable once the promise resolves). */
  async appendAll(events: readonly AuditEvent[]): Promise<void> {
    await Promise.all(events.map((e) => this.append(e)));
  }

  /**
   * A denial: written at once the first time this minute for (actor, code, task),
   * folded into one counted record at the end of the minute after that.
   */
  async denial(event: AuditEvent): Promise<void> {
    const first = this.folds.admit(event, Math.floor(this.now() / 60_000));
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
    const out = new Map<AuditChain, string>();
    for (const [chain, st] of this.chains) if (st.head) out.set(chain, st.head);
    return out;
  }

  /** Forgets what it knew of the chain heads (after Redis lost its data). */
  resetHeads(): void {
    for (const st of this.chains.values()) st.head = undefined;
  }

  private async drain(chain: AuditChain, st: ChainState): Promise<void> {
    st.writing = true;
    try {
      while (st.queue.length > 0) {
        const batch = st.queue.splice(0, 500);
        try {
          const records = await this.writeBatch(chain, st, batch);
          if (this.logger.isLevelEnabled('debug')) for (const r of records) this.logger.debug({ audit: r }, 'audit');
          for (const p of batch) p.resolve();
        } catch (err) {
          st.head = undefined;
          this.logger.error({ err }, 'audit append failed');
          for (const p of batch) p.reject(err);
        }
      }
    } finally {
      st.writing = false;
    }
  }

  private async writeBatch(chain: AuditChain, st: ChainState, batch: Pending[]): Promise<AuditRecord[]> {
    const headKey = this.keys.auditHead(chain);
    st.head ??= (await this.redis.get(headKey)) ?? '';
    for (let attempt = 0; attempt < 50; attempt++) {
      const expected: string = st.head ?? '';
      if (expected === '' && this.guardEpoch) await this.awaitEpoch();
      const colon = expected.indexOf(':');
      let seq = expected ? Number(expected.slice(0, colon)) : 0;
      let prev = expected ? expected.slice(colon + 1) : GENESIS;
      const records: AuditRecord[] = [];
      const args: string[] = [];
      for (const p of batch) {
        seq += 1;
        const base = { ...p.event, seq, time: p.time, prev };
        const record: AuditRecord = { ...base, hash: hashRecord(base) };
        records.push(record);
        args.push(JSON.stringify(record), record.taskId ?? '');
        prev = record.hash;
      }
      const next = `${seq}:${prev}`;
      const actual = (await appendScript.run(
        this.redis,
        [headKey, this.keys.auditStream(chain)],
        [expected, next, this.keys.auditBase(chain), this.taskIndexMs, ...args],
      )) as string | null;
      if (actual === null) {
        st.head = next;
        return records;
      }
      st.head = actual; // another instance appended: re-hash on the real head
    }
    throw new Error('audit chain contention: gave up after 50 attempts');
  }

  private async awaitEpoch(): Promise<void> {
    const deadline = Date.now() + 15_000;
    while ((await this.redis.get(this.keys.epoch())) === null) {
      if (Date.now() > deadline) throw new Error('audit: Redis lost its data and the chains were not continued from the export yet');
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Waits for queued records to be written (shutdown), folded denials included. */
  async flush(): Promise<void> {
    await this.flushFolds(true);
    const busy = () => [...this.chains.values()].some((s) => s.writing || s.queue.length > 0);
    while (busy()) await new Promise((r) => setTimeout(r, 5));
  }
}
