import { performance } from 'node:perf_hooks';
import type { Logger } from '../logger.ts';
import { isPresent } from '../ops/bucket-marks.ts';
import type { AuditChain, Keys } from '../redis/keys.ts';
import { type RedisClient, script } from '../redis/scripts.ts';
import { ONCE_KEEP_MS } from './outbox-member.ts';
import { type AuditEvent, type AuditRecord, ENDING_ACTIONS, GENESIS, hashRecord } from './record.ts';

const appendScript = script('audit-append');

/** The seq of a head (`seq:hash`), 0 for an empty chain. */
const seqOf = (head: string): number => (head ? Number(head.slice(0, head.indexOf(':'))) : 0);

/** Whether head `a` is behind head `b`: a lower seq, or the same seq with another hash (another history). */
const isBehind = (a: string, b: string): boolean => seqOf(a) < seqOf(b) || (seqOf(a) === seqOf(b) && a !== b);

/** Batches one chain may have in Redis's hands at once. */
const MAX_IN_FLIGHT = 2;
/** Records per batch (one script call). */
const MAX_BATCH = 500;
/** Ending records (ENDING_ACTIONS) this process remembers having written, for a Redis that went back in time. */
const MAX_ENDINGS = 10_000;
/**
 * Times one record is re-hashed on a head another instance moved before it is given up. Each round some batch is
 * written, so the chain moves; but an instance whose pipelined batches keep winning can hold off another's record
 * until it has written its own queue (CI once saw a record lose 50 rounds to 200 records of another instance). A
 * random wait before resending made that worse: the loser waited while the winner went on.
 */
const MAX_ATTEMPTS = 500;
/** Heads one chain keeps for the rollback check between two looks (see `takeReplaced`); past it, `overflow`. */
const MAX_REPLACED = 1000;

export interface Pending {
  event: AuditEvent;
  time: string;
  /**
   * The record's member of the chain's audit outbox (see `AuditLog.appendOutbox`); '' for none. Written
   * only while the member is there, which it leaves in the same step: an absent one was written already
   * (or, for a record sent right behind its script, the script did not add it).
   */
  outbox: string;
  attempts: number;
  resolve: (written: boolean) => void;
  reject: (e: unknown) => void;
}

/** A batch in Redis's hands. */
interface Flight {
  /** The head it leaves when written. */
  next: string;
  batch: Pending[];
  /** It holds a withdrawn record: it will be refused. */
  doomed?: boolean;
}

/** One chain's write state in this process. */
interface ChainState {
  queue: Pending[];
  /** The batches in Redis's hands, in the order sent, each with the head it leaves and its records. */
  flying: Flight[];
  /** Flights in `flying` holding a record withdrawn (see `withdraw`): nothing is hashed on them. */
  doomed: number;
  /**
   * The head the next batch is hashed on: the chain head (`seq:hash`, '' when empty) as it will be once
   * the batches in flight are written; undefined until read from Redis.
   */
  head: string | undefined;
  /** The head as last confirmed by Redis (what was durably written), for `knownHeads`. */
  confirmed: string | undefined;
  /**
   * Confirmed heads that a head Redis reported (not one this process wrote on them) replaced or contradicted
   * since the rollback watch last took them: nothing says the reported head descends from them (see
   * `takeReplaced`). `overflow`: more than MAX_REPLACED, some dropped.
   */
  replaced: string[];
  overflow: boolean;
  /** Set once a batch in flight was refused: its records (and those of every later batch) to send again, in order. */
  resend: Pending[] | undefined;
  /** What the latest answer said the head is, while `resend` is set; undefined when it is unknown (an error). */
  reported: string | undefined;
  /** The head is being read, or the data-loss marker awaited: nothing is sent meanwhile. */
  waiting: boolean;
  /** The data-loss marker was seen since the head was last learned from Redis (see `guardEpoch`). */
  epochSeen: boolean;
}

/**
 * Writes records to the hash chains, each batch a compare-and-set on the
 * chain head (src/redis/lua/audit-append.lua). Up to MAX_IN_FLIGHT batches
 * are in Redis's hands at once, each hashed on the head the one before it
 * will leave: a record sent right behind the command it records (a lease
 * script) then travels in the same socket write and its answer comes back
 * with that command's, where one batch at a time made it wait a round trip
 * of its own after the previous batch. When a batch is refused (another
 * instance moved the head, or a record's outbox member is absent), every
 * batch after it is refused too, since it was hashed on the refused one:
 * once all in flight have answered, their records are re-hashed on the real
 * head and sent again, in their order (without those the refusal named: an
 * outbox member already written, or never added).
 */
export class ChainWriter {
  private readonly chains = new Map<AuditChain, ChainState>();
  /** Per chain, the first head Redis reported behind the confirmed one since the last `takeWentBack` (see there). */
  private wentBack = new Map<AuditChain, { redis: string; known: string }>();
  /** The last MAX_ENDINGS ending records this process wrote, oldest first (see `endings`). */
  private recent: { chain: AuditChain; record: AuditRecord }[] = [];
  private readonly redis: RedisClient;
  private readonly keys: Keys;
  private readonly logger: Logger;
  private readonly taskIndexMs: number;
  private readonly guardEpoch: boolean;

  constructor(deps: { redis: RedisClient; keys: Keys; logger: Logger; taskIndexMs: number; guardEpoch: boolean }) {
    this.redis = deps.redis;
    this.keys = deps.keys;
    this.logger = deps.logger;
    this.taskIndexMs = deps.taskIndexMs;
    this.guardEpoch = deps.guardEpoch;
  }

  /** Queues a record; sent at once when the chain has room in flight (so in the caller's socket write). */
  write(chain: AuditChain, p: Pending): void {
    let st = this.chains.get(chain);
    if (!st) {
      st = {
        queue: [],
        flying: [],
        doomed: 0,
        head: undefined,
        confirmed: undefined,
        replaced: [],
        overflow: false,
        resend: undefined,
        reported: undefined,
        waiting: false,
        epochSeen: false,
      };
      this.chains.set(chain, st);
    }
    st.queue.push(p);
    this.pump(chain, st);
  }

  /** The chain heads as Redis last confirmed them: after a data loss, the end of what was lost. */
  knownHeads(): Map<AuditChain, string> {
    const out = new Map<AuditChain, string>();
    for (const [chain, st] of this.chains) if (st.confirmed) out.set(chain, st.confirmed);
    return out;
  }

  /**
   * The confirmed heads replaced or contradicted by a head Redis reported since the last call, per chain
   * (then forgotten). `knownHeads` alone cannot show that Redis lost them: after a rollback, records written
   * on the rolled-back history (this process's, re-hashed on the head Redis reports, or other instances')
   * can carry the chain past the head this process had confirmed, and the confirmed head then moves onto
   * that other history. The rollback watch checks that Redis still holds each of these.
   */
  takeReplaced(): Map<AuditChain, { heads: string[]; overflow: boolean }> {
    const out = new Map<AuditChain, { heads: string[]; overflow: boolean }>();
    for (const [chain, st] of this.chains) {
      if (st.replaced.length === 0 && !st.overflow) continue;
      out.set(chain, { heads: st.replaced, overflow: st.overflow });
      st.replaced = [];
      st.overflow = false;
    }
    return out;
  }

  /**
   * The chains on which Redis reported a head behind the one it had confirmed to this process (a lower seq,
   * or the same seq with another hash), with both heads, since the last call (then forgotten). A chain head
   * only moves forward while the data-loss marker holds, so that is Redis going back in time, seen at once:
   * the records this process then writes are chained on the head Redis reports and can carry the chain past
   * the one it had confirmed, after which `knownHeads` alone no longer shows it (and, with no generation
   * bump since the snapshot, neither does `takeReplaced`, which is only checked when the generation went back).
   */
  takeWentBack(): Map<AuditChain, { redis: string; known: string }> {
    const out = this.wentBack;
    this.wentBack = new Map();
    return out;
  }

  /**
   * The ending records (a task or lease ended, a quarantine changed) this process wrote, newest last:
   * after Redis went back in time, what this process can tell it again even when the export never got them.
   */
  endings(): { chain: AuditChain; record: AuditRecord }[] {
    return [...this.recent];
  }

  /** Forgets the remembered ending records (once told again, or after a data loss). */
  forgetEndings(): void {
    this.recent = [];
  }

  /** Forgets the chain heads (after Redis lost its data): each is read again before the next batch. */
  resetHeads(): void {
    this.wentBack = new Map();
    for (const st of this.chains.values()) {
      st.head = undefined;
      st.confirmed = undefined;
      st.replaced = [];
      st.overflow = false;
      st.epochSeen = false;
    }
  }

  /** Whether any record is queued or in flight. */
  busy(): boolean {
    for (const st of this.chains.values()) if (st.flying.length > 0 || st.queue.length > 0 || st.resend || st.waiting) return true;
    return false;
  }

  /**
   * The script that was to add outbox `member` refused (a lease-create that did not record the lease): the
   * record sent or queued behind it, naming that member, will not be written. Still queued: it leaves the
   * queue unsent, so it cannot refuse a batch of other callers' records. Already in flight: no batch is
   * hashed on that flight any more (each would be refused with it and sent again); the records that would
   * have been wait for its answer, then go out on the head it leaves. Only a batch sent behind it before
   * this call is refused with it (the chain is hashed: its records are re-hashed and sent again).
   */
  withdraw(chain: AuditChain, member: string): void {
    const st = this.chains.get(chain);
    if (!st || member === '') return;
    const drop = (list: Pending[]): boolean => {
      const i = list.findIndex((p) => p.outbox === member);
      if (i < 0) return false;
      list.splice(i, 1)[0]!.resolve(false);
      return true;
    };
    if (drop(st.queue) || (st.resend && drop(st.resend))) return;
    const flight = st.flying.find((f) => !f.doomed && f.batch.some((p) => p.outbox === member));
    if (flight) {
      flight.doomed = true;
      st.doomed += 1;
    }
  }

  private pump(chain: AuditChain, st: ChainState): void {
    if (st.resend || st.waiting || st.doomed > 0) return;
    if (st.head === undefined || (st.head === '' && this.guardEpoch && !st.epochSeen)) {
      // Read (or wait for the data-loss marker) only with nothing in flight: those batches decide the head.
      if (st.flying.length === 0 && st.queue.length > 0) void this.prepare(chain, st);
      return;
    }
    while (st.queue.length > 0 && st.flying.length < MAX_IN_FLIGHT) this.send(chain, st, st.queue.splice(0, MAX_BATCH));
  }

  /**
   * Reads the head. With `guardEpoch`, an empty chain first waits for the data-loss marker: after Redis
   * lost its data, chains continue from the export, and a record written before that would start a
   * second chain at seq 1.
   */
  private async prepare(chain: AuditChain, st: ChainState): Promise<void> {
    st.waiting = true;
    try {
      st.head ??= (await this.redis.get(this.keys.auditHead(chain))) ?? '';
      if (st.head === '' && this.guardEpoch) await this.awaitEpoch(chain);
      st.epochSeen = true;
      this.learn(chain, st, st.head, true);
    } catch (err) {
      st.head = undefined;
      this.logger.error({ err }, 'audit append failed');
      for (const p of st.queue.splice(0)) p.reject(err);
      return;
    } finally {
      st.waiting = false;
    }
    this.pump(chain, st);
  }

  private send(chain: AuditChain, st: ChainState, taken: Pending[]): void {
    const expected = st.head ?? '';
    let seq = seqOf(expected);
    let prev = expected ? expected.slice(expected.indexOf(':') + 1) : GENESIS;
    const batch: Pending[] = [];
    const records: AuditRecord[] = [];
    const args: string[] = [];
    for (const p of taken) {
      let record: AuditRecord;
      let json: string;
      try {
        const base = { ...p.event, seq: seq + 1, time: p.time, prev };
        record = { ...base, hash: hashRecord(base) };
        json = JSON.stringify(record);
      } catch (err) {
        // A record that cannot be serialised fails alone; the others are chained without it.
        p.reject(err);
        continue;
      }
      seq += 1;
      batch.push(p);
      records.push(record);
      args.push(json, record.taskId ?? '', p.outbox);
      prev = record.hash;
    }
    if (batch.length === 0) return;
    const flight: Flight = { next: `${seq}:${prev}`, batch };
    st.head = flight.next;
    st.flying.push(flight);
    appendScript
      .run(
        this.redis,
        [this.keys.auditHead(chain), this.keys.auditStream(chain)],
        [expected, flight.next, this.keys.auditBase(chain), this.taskIndexMs, ONCE_KEEP_MS, ...args],
      )
      .then(
        (answer) => this.answered(chain, st, flight, batch, records, answer as string | [string, ...number[]] | null),
        (err: unknown) => this.failed(st, batch, err),
      )
      .finally(() => {
        st.flying.splice(st.flying.indexOf(flight), 1);
        if (flight.doomed) st.doomed -= 1;
        this.settle(chain, st);
      });
  }

  private answered(
    chain: AuditChain,
    st: ChainState,
    flight: Flight,
    batch: Pending[],
    records: AuditRecord[],
    answer: string | [string, ...number[]] | null,
  ): void {
    const real = answer === null ? flight.next : typeof answer === 'string' ? answer : String(answer[0]);
    // A refusal naming the head this batch, or one sent after it, leaves was written after all: the
    // client sent it again after a connection dropped its answer (ioredis resends unanswered commands).
    const written = answer === null || st.flying.slice(st.flying.indexOf(flight)).some((f) => f.next === real);
    this.learn(chain, st, written ? flight.next : real, !written);
    if (st.resend) st.reported = real;
    if (written) {
      if (this.logger.isLevelEnabled('debug')) for (const r of records) this.logger.debug({ audit: r }, 'audit');
      for (const r of records) if (ENDING_ACTIONS.has(r.action)) this.recent.push({ chain, record: r });
      if (this.recent.length > 2 * MAX_ENDINGS) this.recent = this.recent.slice(-MAX_ENDINGS);
      for (const p of batch) p.resolve(true);
      return;
    }
    // Refused: another instance moved the head, records' outbox members are absent, or a batch
    // before this one was refused. Those records are not sent again: resolved false (see Pending).
    const absent = new Set(Array.isArray(answer) ? answer.slice(1).map(Number) : []);
    st.reported = real;
    st.resend ??= [];
    batch.forEach((p, i) => {
      if (absent.has(i + 1)) p.resolve(false);
      else if (++p.attempts >= MAX_ATTEMPTS) p.reject(new Error(`audit chain contention: gave up after ${MAX_ATTEMPTS} attempts`));
      else st.resend!.push(p);
    });
  }

  /**
   * Moves the confirmed head forward (never back) to one Redis reported. A head Redis reported (`reported`:
   * a refusal's, or one read) other than the confirmed one may be on another history (Redis went back in
   * time): the confirmed head is kept for the rollback watch (see `takeReplaced`). One this process wrote
   * descends from the head it was hashed on: either the confirmed one, or a reported one (kept then).
   */
  private learn(chain: AuditChain, st: ChainState, head: string, reported: boolean): void {
    if (reported && head && st.confirmed && isBehind(head, st.confirmed) && !this.wentBack.has(chain))
      this.wentBack.set(chain, { redis: head, known: st.confirmed });
    if (reported && head && st.confirmed && head !== st.confirmed && st.replaced.at(-1) !== st.confirmed) {
      if (st.replaced.length < MAX_REPLACED) st.replaced.push(st.confirmed);
      else st.overflow = true;
    }
    if (head && seqOf(head) > seqOf(st.confirmed ?? '')) st.confirmed = head;
  }

  private failed(st: ChainState, batch: Pending[], err: unknown): void {
    this.logger.error({ err }, 'audit append failed');
    for (const p of batch) p.reject(err);
    // Whether it was written is unknown: later batches hashed on it are sent again on the head read anew.
    st.reported = undefined;
    st.resend ??= [];
  }

  private settle(chain: AuditChain, st: ChainState): void {
    if (st.resend && st.flying.length === 0) {
      st.queue = st.resend.concat(st.queue);
      st.resend = undefined;
      st.head = st.reported;
      st.reported = undefined;
      st.epochSeen = false;
    }
    this.pump(chain, st);
  }

  /**
   * The 15 s is a wait in this process, on the monotonic clock: with Date.now(), a wall clock stepped forward
   * an hour failed the appends waiting here at once, and one stepped back held them for that hour more
   * (test/audit/epoch-wait-clock-step.test.ts).
   */
  private async awaitEpoch(chain: AuditChain): Promise<void> {
    const deadline = performance.now() + 15_000;
    // A bucket's chain waits for its bucket's marker: on a Cluster its master can come back empty while the epoch
    // marker (on another master) holds, and a record written before the chain is continued forked it at seq 1.
    const marker = chain === 'ops' ? this.keys.epoch() : this.keys.bucketMarker(chain);
    const ok = chain === 'ops' ? (v: string | null) => v !== null : isPresent;
    while (!ok(await this.redis.get(marker))) {
      if (performance.now() > deadline) throw new Error('audit: Redis lost its data and the chains were not continued from the export yet');
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
