import { createHash } from 'node:crypto';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import type { RedisClock } from '../redis/clock.ts';
import type { AuditChain, Keys } from '../redis/keys.ts';
import { acquireLock, keepLock, reportTakeover } from '../redis/lock.ts';
import { type RedisClient, script } from '../redis/scripts.ts';
import type { AuditLog } from './audit-log.ts';
import { outboxMember, parseOutboxMember } from './outbox-member.ts';
import { memberTag, swapOutbox } from './outbox-swap.ts';
import type { OutboxEvent } from './record.ts';

const parkScript = script('audit-outbox-park');

/**
 * How long a record may sit in a chain's audit outbox before recovery appends it itself. A normal append
 * (the script's caller sends the records right after the script answers) lands within milliseconds, a
 * burst of 10,000 within a second or so (docs/benchmarks.md); one delayed by a Redis stall gives up after
 * the command timeout (2 s by default) and the record stays in the outbox. Ten seconds is far beyond
 * either, so recovery only takes what a dead or failed process left. Were it to take a record whose
 * caller is merely slow, nothing is written twice (the outbox member decides, audit-append.lua): the
 * record only lands a little out of order. Shorter would append crash-lost records sooner but race slow
 * appends more; longer leaves them out of the chain longer (they land within this plus
 * `revocation.reconcileIntervalMs`).
 */
export const OUTBOX_GRACE_MS = 10_000;

/** Records recovery reads (and appends) per round trip. */
const PAGE = 500;

/** Parked members (poison) a chain keeps for inspection; the oldest leave first. Each has its audit record. */
export const PARKED_MAX = 1000;

/**
 * The TTL a chain's recovery lock is set for (other processes skip the chain while one holds it). It is extended
 * every third of it while the pass runs (a quarantine's endings can take far longer), so it lapses within this of
 * its process dying: the records (and a quarantine's endings) that process was appending wait this long, not
 * RECOVERY_LOCK_TTL_MS, before another instance's next pass takes them over. As long as OUTBOX_GRACE_MS: a dead
 * process's records already wait that long; shorter would not append them much sooner, and would give up the lock
 * under a shorter Redis stall (no extension confirmed for 9 of these 10 s).
 */
export const RECOVERY_LOCK_MS = 10_000;
/**
 * The longest any release sets the lock for (the previous release sets 30 s): a key with a longer TTL, or none,
 * is taken over; one of 30 s is a broker's, skipped during a rolling upgrade. Lower it to RECOVERY_LOCK_MS once
 * no such release runs.
 */
const RECOVERY_LOCK_TTL_MS = 30_000;

export interface OutboxDeps {
  redis: RedisClient;
  keys: Keys;
  audit: AuditLog;
  logger: Logger;
  clock: Pick<RedisClock, 'now'>;
  metrics?: Metrics;
  /**
   * Work a record's decision still owes, which recovery does before it appends a record a process left (and
   * leaves the record in the outbox, for the next pass, if that fails): a quarantine's endings
   * (AdminService.recoveredQuarantine), which the process that put it in force does before appending its
   * record. Must be idempotent: the process may have done it all, or a part. `signal` is aborted when the
   * recovery lock is lost (another instance may be doing the same work): stop, and throw.
   */
  before?: (chain: AuditChain, event: OutboxEvent, signal?: AbortSignal) => Promise<void>;
  /**
   * For an intent (`detail.interrupted: true`) a process left: the outcome Redis's state shows its decision
   * had (AdminService.recoveredOutcome: a kill switch with no matching task left open), with
   * `detail.recovered: true`, which recovery records in the intent's place; undefined where state cannot
   * tell (the intent is appended: `interrupted`).
   */
  settle?: (chain: AuditChain, event: OutboxEvent, signal?: AbortSignal) => Promise<OutboxEvent | undefined>;
}

/**
 * Appends the records in `chain`'s outbox that were put there before `before` (Redis ms), oldest first,
 * through the usual append path: each lands exactly once whichever process appends it. Returns how many
 * records this pass wrote itself (a member whose own process appended it meanwhile is not counted: nothing
 * was recovered), and counts them in `jit_audit_outbox_recovered_total` as it goes. A member that is not a
 * record of this chain (poison: parseOutboxMember; only the broker's scripts are expected to write here, but
 * anyone who can write Redis can) is parked: moved to the chain's parked set with, in the same step, an
 * `audit.outbox_poison` record put in the outbox (appended here), and logged. A record whose decision may
 * still owe work (OutboxDeps.before: a quarantine's endings) has it done first. Each member is handled on its
 * own: one that fails does not keep the pass from the others of its page.
 */
export async function recoverOutbox(deps: OutboxDeps, chain: AuditChain, before: number, signal?: AbortSignal): Promise<number> {
  const key = deps.keys.auditOutbox(chain);
  let written = 0;
  let first: string | undefined;
  for (;;) {
    signal?.throwIfAborted();
    const flat = await deps.redis.zrangebyscore(key, '-inf', `(${before}`, 'WITHSCORES', 'LIMIT', 0, PAGE);
    // Empty, or the page before did not leave (none is expected to stay): the next pass goes on.
    if (flat.length === 0 || flat[0] === first) return written;
    first = flat[0];
    const work: Promise<number>[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      const member = flat[i]!;
      const event = parseOutboxMember(member);
      if (!event || !ofChain(deps, event, chain)) work.push(park(deps, chain, member).then(() => 0));
      else {
        const at = Number(flat[i + 1]);
        const owed = deps.before ? deps.before(chain, event, signal) : Promise.resolve();
        // The lock lost while the owed work ran: another instance may hold the chain now; this one stops.
        work.push(
          owed.then(async () => {
            signal?.throwIfAborted();
            const outcome = await settled(deps, chain, member, event, signal);
            signal?.throwIfAborted();
            if (!outcome) return deps.audit.appendOutboxCounted(chain, [member], at);
            // In the intent's place in one step, while it is there (its process, slow rather than dead, may have
            // swapped its own outcome meanwhile), remembered by a tag of recovery's own: a swap by that process
            // arriving later still adds its outcome, which follows this one.
            const next = outboxMember(outcome);
            const when = await swapOutbox(deps, chain, member, next, `recovered:${memberTag(member)}`, true);
            return when === undefined ? 0 : deps.audit.appendOutboxCounted(chain, [next], when);
          }),
        );
      }
    }
    const results = await Promise.allSettled(work);
    let page = 0;
    for (const r of results) if (r.status === 'fulfilled') page += r.value;
    written += page;
    if (page > 0) deps.metrics?.outboxRecovered.inc(page);
    // A failure (Redis unavailable) ends the pass once the page is done: what is left is taken by the next
    // one. Every other member of this page has left the outbox (appended or parked), so the next page
    // starts at the front again.
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw Object.assign(new Error(`audit outbox recovery: ${(failed.reason as Error)?.message}`), { written });
    if (flat.length < PAGE * 2) return written;
  }
}

/** The outcome state shows for an intent (OutboxDeps.settle); undefined for any other record, or where state cannot tell. */
async function settled(
  deps: OutboxDeps,
  chain: AuditChain,
  member: string,
  event: OutboxEvent,
  signal?: AbortSignal,
): Promise<OutboxEvent | undefined> {
  if (!deps.settle || event.detail?.interrupted !== true || memberTag(member) === undefined) return undefined;
  const outcome = await deps.settle(chain, event, signal);
  if (outcome === undefined) return undefined;
  if (outcome.detail?.recovered !== true) throw new Error('audit outbox: a recovered outcome must say `detail.recovered: true`');
  return outcome;
}

/**
 * Whether `event` belongs to `chain`: its task's bucket, or the ops chain for one without a task, except
 * the record of a parking (park below), which has no task and goes to the chain it was parked in, which
 * its `parkedIn` names: left in a bucket's outbox when its append failed, it is that bucket's record.
 */
function ofChain(deps: OutboxDeps, event: OutboxEvent, chain: AuditChain): boolean {
  if (event.action === 'audit.outbox_poison' && event.taskId === undefined)
    return event.detail?.parkedIn === deps.keys.auditOutboxParked(chain);
  return deps.audit.chainOf(event) === chain;
}

/** Parks a poison member (audit-outbox-park.lua) and appends the record of that. */
async function park(deps: OutboxDeps, chain: AuditChain, member: string): Promise<void> {
  const { keys, redis, logger, audit, metrics } = deps;
  const record: OutboxEvent = {
    action: 'audit.outbox_poison',
    actor: 'broker',
    decision: 'error',
    reason: 'not_a_record',
    detail: {
      // What identifies it, not what it says (it could hold anything): the member itself is in the parked set.
      sha256: createHash('sha256').update(member).digest('hex'),
      bytes: Buffer.byteLength(member),
      parkedIn: keys.auditOutboxParked(chain),
    },
  };
  const note = outboxMember(record);
  const at = await parkScript.run(redis, [keys.auditOutbox(chain), keys.auditOutboxParked(chain)], [member, note, PARKED_MAX]);
  if (at === null) return; // another process parked it first
  metrics?.outboxParked.inc();
  logger.error(
    { chain, sha256: record.detail!.sha256, bytes: record.detail!.bytes, parkedIn: keys.auditOutboxParked(chain) },
    'audit outbox: a member that is not a record of this chain was parked',
  );
  await audit.appendOutbox(chain, [note], Number(at));
}

/** What the outbox gauges show (src/metrics.ts), over every chain. */
export interface OutboxStats {
  /** Records waiting in the outboxes. */
  records: number;
  /** Age of the oldest of them on Redis's clock, in seconds (0 when none). */
  oldestSeconds: number;
  /** Poison members parked (each also has its `audit.outbox_poison` record). */
  parked: number;
}

/** Reads the outboxes of every chain (three commands per chain, sent together). */
export async function outboxStats(deps: Pick<OutboxDeps, 'redis' | 'keys' | 'clock'>): Promise<OutboxStats> {
  const chains = deps.keys.auditChains();
  const rows = await Promise.all(
    chains.map((c) =>
      Promise.all([
        deps.redis.zcard(deps.keys.auditOutbox(c)),
        deps.redis.zrange(deps.keys.auditOutbox(c), '0', '0', 'WITHSCORES'),
        deps.redis.zcard(deps.keys.auditOutboxParked(c)),
      ]),
    ),
  );
  const now = deps.clock.now();
  let records = 0;
  let parked = 0;
  let oldest = now;
  for (const [n, first, p] of rows) {
    records += n;
    parked += p;
    if (first.length === 2) oldest = Math.min(oldest, Number(first[1]));
  }
  return { records, oldestSeconds: Math.max(0, now - oldest) / 1000, parked };
}

/**
 * Appends what dead or failed processes left in the audit outboxes, in every process that runs (API or
 * worker: an API-only instance makes outbox decisions too, and a deployment need not run a worker beside
 * each). A pass, at start and every `intervalMs`, looks at every chain (one read each when nothing is due);
 * a chain with records older than OUTBOX_GRACE_MS is recovered by one process at a time (a lock per chain,
 * so many instances do not all append the same records; were two to, each record is still written once).
 */
export class OutboxRecovery {
  private readonly deps: OutboxDeps;
  private readonly intervalMs: number;
  private readonly lockMs: number;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<number> | undefined;
  private stopped = false;

  /** `lockMs`: the TTL the recovery lock is set for and extended to (RECOVERY_LOCK_MS; shorter in tests). */
  constructor(deps: OutboxDeps, intervalMs: number, opts: { lockMs?: number } = {}) {
    this.deps = deps;
    this.intervalMs = intervalMs;
    this.lockMs = opts.lockMs ?? RECOVERY_LOCK_MS;
  }

  start(): void {
    this.stopped = false;
    this.timer = setInterval(() => void this.pass(), this.intervalMs);
    this.timer.unref();
    void this.pass();
  }

  /** Stops the timer; resolves once a pass under way has ended. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.running?.catch(() => 0);
  }

  /** One pass over every chain (waits for one under way first); returns how many records it appended. */
  async pass(): Promise<number> {
    while (this.running) await this.running.catch(() => 0);
    const run = this.run();
    this.running = run;
    try {
      return await run;
    } finally {
      this.running = undefined;
    }
  }

  private async run(): Promise<number> {
    const { redis, keys, logger, clock } = this.deps;
    let total = 0;
    for (const chain of keys.auditChains()) {
      if (this.stopped) break;
      try {
        const before = clock.now() - OUTBOX_GRACE_MS;
        const due = await redis.zrangebyscore(keys.auditOutbox(chain), '-inf', `(${before}`, 'LIMIT', 0, 1);
        if (due.length === 0) continue;
        const lock = await acquireLock(redis, keys.lock(`audit-outbox:${chain}`), {
          ttlMs: RECOVERY_LOCK_TTL_MS,
          holdMs: this.lockMs,
          onTakeover: reportTakeover(logger, (e) => this.deps.audit.append(e)),
        });
        if (!lock) continue; // another instance is on it
        // Extended while the pass runs (a quarantine's endings, OutboxDeps.before, can outlast the hold: lapsed,
        // another instance would take the chain and run the same endings at once); the pass stops if it is lost.
        const held = keepLock(lock, 'audit outbox recovery');
        try {
          // Counted in jit_audit_outbox_recovered_total by recoverOutbox, page by page, even if a later page fails.
          const n = await recoverOutbox(this.deps, chain, before, held.signal);
          total += n;
          if (n > 0) logger.warn({ chain, records: n }, 'audit outbox: appended records a process left unwritten');
        } finally {
          held.stop();
          await lock.release().catch(() => {});
        }
      } catch (err) {
        logger.warn({ err: (err as Error).message, chain }, 'audit outbox recovery failed; retrying at the next pass');
      }
    }
    return total;
  }
}
