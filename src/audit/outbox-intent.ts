import type { AuditChain } from '../redis/keys.ts';
import { OUTBOX_GRACE_MS, type OutboxDeps } from './outbox.ts';
import { outboxMember } from './outbox-member.ts';
import { memberTag, swapOutbox } from './outbox-swap.ts';
import type { OutboxEvent } from './record.ts';

/*
 * Intents: the `interrupted` record of a decision made in many steps (the kill switch, a rotation, a policy
 * reload), kept in an audit outbox while it is made and replaced by its outcome when done. What recovery does
 * with what is left in an outbox is in outbox.ts.
 */

/**
 * The wait before a failed swap (OutboxIntent.finish) is tried again, doubled after each failed try up to
 * SWAP_RETRY_MAX_MS. It is tried for as long as the process lives: given up, its outcome would be lost, and
 * recovery would later append `interrupted` for an operation that completed.
 */
export const SWAP_RETRY_FIRST_MS = OUTBOX_GRACE_MS / 4;
/** The longest wait between two tries of a failed swap: Redis back, the outcome lands within this. */
export const SWAP_RETRY_MAX_MS = 60_000;

/** A decision made in many steps, with its `interrupted` record waiting in an outbox (outboxIntent). */
export interface OutboxIntent {
  /** The intent's outbox member. */
  readonly member: string;
  /**
   * Records the outcome: puts it in the outbox in the intent's place in one step (audit-outbox-swap.lua),
   * then appends it. Once the swap is made, the outcome is what lands in the chain, by this call or by
   * recovery: a failed append is logged, not thrown (AuditLog.settleOutbox). An intent recovery appended
   * already (the operation outlasted the grace period) is followed by the outcome. A swap Redis failed
   * is tried again in the background for as long as the process lives (the wait doubling from a quarter
   * grace period to SWAP_RETRY_MAX_MS; the intent kept fresh meanwhile), and once more at shutdown
   * (endSwapRetries), and the error thrown: the outcome is not recorded yet, and only a process that dies,
   * or shuts down, before a try succeeds leaves the `interrupted` record for the outcome.
   */
  finish(outcome: OutboxEvent): Promise<void>;
  /** Stops keeping the intent fresh without an outcome (the operation failed part-way): the intent stands. */
  stop(): void;
}

/**
 * Puts `event` in `chain`'s outbox before a decision made in many steps (the kill switch: one task-end
 * script per task), so that a process that dies part-way leaves a record of it for recovery; its score
 * is moved forward every quarter grace period until `finish` or `stop`, so recovery leaves it alone while
 * the decision is being made, however long that takes. `event` is what recovery appends if the process
 * never gets to `finish`.
 */
export async function outboxIntent(
  deps: Pick<OutboxDeps, 'redis' | 'keys' | 'clock' | 'audit' | 'logger'>,
  chain: AuditChain,
  event: OutboxEvent,
): Promise<OutboxIntent> {
  const key = deps.keys.auditOutbox(chain);
  const member = outboxMember(event);
  await deps.redis.zadd(key, 'NX', deps.clock.now(), member);
  const fresh = keepFresh(deps, chain, member);
  return {
    member,
    stop: fresh.stop,
    async finish(outcome) {
      // Stopped here, not after the swap: a failed swap keeps the intent fresh in its retry.
      fresh.stop();
      const next = outboxMember(outcome);
      const swap = () => swapOutbox(deps, chain, member, next, memberTag(member)!);
      let at: number | undefined;
      try {
        at = await swap();
      } catch (err) {
        retrySwap(deps, chain, member, { event: outcome, member: next }, swap);
        throw err;
      }
      // undefined: a swap sent before (its answer lost) was made and its outcome appended since.
      if (at !== undefined) await deps.audit.settleOutbox(chain, [next], at);
    },
  };
}

/** A failed swap being tried again (retrySwap). */
interface SwapRetry {
  /** One try now (or the one under way); resolves whether the swap is made. */
  attempt(): Promise<boolean>;
  /** Stops trying: the intent stands for the outcome. */
  giveUp(why: string): void;
}

/**
 * The swaps each broker (its AuditLog) is still trying, so that its shutdown can try each a last time and stop
 * them (endSwapRetries): a retry left running would fire on closed connections for good.
 */
const retrying = new WeakMap<object, Set<SwapRetry>>();

/**
 * Tries a failed swap (OutboxIntent.finish) again until it is made, then appends the outcome: first after a
 * quarter grace period, the wait doubling after each failed try up to SWAP_RETRY_MAX_MS, for as long as the
 * process lives (stopped only at shutdown, endSwapRetries). The intent is kept fresh meanwhile: while this
 * process may still record the outcome, recovery must not append `interrupted` for an operation that finished
 * (it would once Redis is back, were the intent's score left to age).
 */
function retrySwap(
  deps: Pick<OutboxDeps, 'redis' | 'keys' | 'clock' | 'audit' | 'logger'>,
  chain: AuditChain,
  intent: string,
  outcome: { event: OutboxEvent; member: string },
  swap: () => Promise<number | undefined>,
): void {
  const fresh = keepFresh(deps, chain, intent);
  const all = retrying.get(deps.audit) ?? new Set<SwapRetry>();
  retrying.set(deps.audit, all);
  let current: Promise<boolean> | undefined;
  let timer: NodeJS.Timeout | undefined;
  let ended = false;
  let wait = SWAP_RETRY_FIRST_MS;
  const end = () => {
    ended = true;
    clearTimeout(timer);
    fresh.stop();
    all.delete(retry);
  };
  const retry: SwapRetry = {
    attempt() {
      current ??= swap().then(
        async (at) => {
          end();
          deps.logger.warn(
            { chain, action: outcome.event.action },
            'audit outbox: recorded an outcome after Redis failed at its first try',
          );
          // undefined: an earlier try was made after all (its answer lost) and its outcome appended since.
          if (at !== undefined) await deps.audit.settleOutbox(chain, [outcome.member], at);
          return true;
        },
        () => {
          current = undefined;
          return false;
        },
      );
      return current;
    },
    giveUp(why) {
      end();
      deps.logger.error(
        { chain, action: outcome.event.action, why },
        'audit outbox: gave up recording an outcome; its `interrupted` record stands for it',
      );
    },
  };
  all.add(retry);
  const next = () => {
    timer = setTimeout(async () => {
      if (ended || (await retry.attempt()) || ended) return;
      if (wait < SWAP_RETRY_MAX_MS && wait * 2 >= SWAP_RETRY_MAX_MS)
        deps.logger.error(
          { chain, action: outcome.event.action, everyMs: SWAP_RETRY_MAX_MS },
          'audit outbox: an outcome still cannot be recorded; trying again for as long as this process runs',
        );
      wait = Math.min(wait * 2, SWAP_RETRY_MAX_MS);
      next();
    }, wait);
    timer.unref();
  };
  next();
}

/**
 * At shutdown, before the broker's connections close: tries each swap it is still retrying (retrySwap) once
 * more, and gives up those that fail (their intents stand for their outcomes, for another process's
 * recovery). Each try is bounded by the command timeout.
 */
export async function endSwapRetries(audit: object): Promise<void> {
  const all = [...(retrying.get(audit) ?? [])];
  await Promise.all(
    all.map(async (r) => {
      if (!(await r.attempt())) r.giveUp('shutdown');
    }),
  );
}

/**
 * Moves `member`'s score in `chain`'s outbox forward every quarter grace period until `stop()` (ZADD XX: a
 * member that has left stays out), so recovery leaves a record alone while the process that put it there
 * still works on its decision.
 */
export function keepFresh(deps: Pick<OutboxDeps, 'redis' | 'keys' | 'clock'>, chain: AuditChain, member: string): { stop(): void } {
  const key = deps.keys.auditOutbox(chain);
  const timer = setInterval(() => void deps.redis.zadd(key, 'XX', deps.clock.now(), member).catch(() => {}), OUTBOX_GRACE_MS / 4);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
