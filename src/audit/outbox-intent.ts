import type { AuditChain } from '../redis/keys.ts';
import { script } from '../redis/scripts.ts';
import { OUTBOX_GRACE_MS, type OutboxDeps } from './outbox.ts';
import { outboxMember } from './outbox-member.ts';
import type { OutboxEvent } from './record.ts';

/*
 * Intents: the `interrupted` record of a decision made in many steps (the kill switch, a rotation, a policy
 * reload), kept in an audit outbox while it is made and replaced by its outcome when done. What recovery does
 * with what is left in an outbox is in outbox.ts.
 */

/**
 * How long a process keeps trying to put an operation's outcome in place of its intent (OutboxIntent.finish)
 * when Redis failed at that moment. Past it, the intent stands for the outcome (recovery appends it).
 */
export const SWAP_RETRY_MS = 60 * 60_000;
/** How long Redis remembers a swap (audit-outbox-swap.lua): longer than a process retries one. */
const SWAP_MEMORY_MS = 24 * 60 * 60_000;

const swapScript = script('audit-outbox-swap');

/** A decision made in many steps, with its `interrupted` record waiting in an outbox (outboxIntent). */
export interface OutboxIntent {
  /** The intent's outbox member. */
  readonly member: string;
  /**
   * Records the outcome: puts it in the outbox in the intent's place in one step (audit-outbox-swap.lua),
   * then appends it. Once the swap is made, the outcome is what lands in the chain, by this call or by
   * recovery: a failed append is logged, not thrown (AuditLog.settleOutbox). An intent recovery appended
   * already (the operation outlasted the grace period) is followed by the outcome. A swap Redis failed
   * is tried again every quarter grace period for SWAP_RETRY_MS in the background, and the error thrown:
   * the outcome is not recorded yet, and only a process that dies before a retry succeeds leaves the
   * `interrupted` record for the outcome.
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
      fresh.stop();
      const next = outboxMember(outcome);
      const swap = async (): Promise<number | undefined> => {
        const at = await swapScript.run(
          deps.redis,
          [key, deps.keys.auditOutboxSwapped(chain)],
          [member, next, member.slice(0, member.indexOf(' ')), SWAP_MEMORY_MS],
        );
        return at === null ? undefined : Number(at);
      };
      let at: number | undefined;
      try {
        at = await swap();
      } catch (err) {
        retrySwap(deps, chain, outcome, swap, next);
        throw err;
      }
      // undefined: a swap sent before (its answer lost) was made and its outcome appended since.
      if (at !== undefined) await deps.audit.settleOutbox(chain, [next], at);
    },
  };
}

/** Tries a failed swap (OutboxIntent.finish) again in the background until it is made, then appends the outcome. */
function retrySwap(
  deps: Pick<OutboxDeps, 'clock' | 'audit' | 'logger'>,
  chain: AuditChain,
  outcome: OutboxEvent,
  swap: () => Promise<number | undefined>,
  member: string,
): void {
  const since = deps.clock.now();
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    if (deps.clock.now() - since > SWAP_RETRY_MS) {
      clearInterval(timer);
      deps.logger.error(
        { chain, action: outcome.action },
        'audit outbox: gave up recording an outcome; its `interrupted` record stands for it',
      );
      return;
    }
    busy = true;
    swap().then(
      async (at) => {
        clearInterval(timer);
        deps.logger.warn({ chain, action: outcome.action }, 'audit outbox: recorded an outcome after Redis failed at its first try');
        if (at !== undefined) await deps.audit.settleOutbox(chain, [member], at);
      },
      () => {
        busy = false;
      },
    );
  }, OUTBOX_GRACE_MS / 4);
  timer.unref();
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
