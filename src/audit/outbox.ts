import type { Logger } from '../logger.ts';
import type { AuditChain, Keys } from '../redis/keys.ts';
import type { RedisClient } from '../redis/scripts.ts';
import type { AuditLog } from './audit-log.ts';

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

/**
 * Appends the records in `chain`'s outbox that were put there before `before` (Redis ms), oldest first,
 * through the usual append path: each lands exactly once whichever process appends it. Returns how many
 * this pass took. A member that is not a record (none is expected: only the broker's scripts write
 * here) is left where it is and logged, never deleted.
 */
export async function recoverOutbox(
  deps: { redis: RedisClient; keys: Keys; audit: AuditLog; logger: Logger },
  chain: AuditChain,
  before: number,
): Promise<number> {
  const key = deps.keys.auditOutbox(chain);
  let taken = 0;
  let skip = 0;
  for (;;) {
    const flat = await deps.redis.zrangebyscore(key, '-inf', `(${before}`, 'WITHSCORES', 'LIMIT', skip, PAGE);
    if (flat.length === 0) return taken;
    const appends: Promise<void>[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      const member = flat[i]!;
      let ok = false;
      try {
        ok = typeof (JSON.parse(member) as { action?: unknown }).action === 'string';
      } catch {
        ok = false;
      }
      if (!ok) {
        skip += 1;
        deps.logger.error({ chain, member: member.slice(0, 200) }, 'audit outbox: a member that is not a record is left in place');
        continue;
      }
      appends.push(deps.audit.appendOutbox(chain, [member], Number(flat[i + 1])));
    }
    // A failure (Redis unavailable) ends the pass: what is left is taken by the next one.
    await Promise.all(appends);
    taken += appends.length;
    if (flat.length < PAGE * 2) return taken;
  }
}
