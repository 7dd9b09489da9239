import type { AuditChain, Keys } from '../redis/keys.ts';
import { type RedisClient, script } from '../redis/scripts.ts';

/*
 * The swap of an intent (outbox-intent.ts) for the record that takes its place in a chain's outbox, in one step
 * (audit-outbox-swap.lua): by its process (the outcome) or by recovery (an outcome state shows, outbox.ts).
 */

/**
 * How long Redis remembers a swap (audit-outbox-swap.lua): far longer than the wait between two tries of a
 * failed one (SWAP_RETRY_MAX_MS), so a try whose answer was lost (made all the same) is still remembered at the next.
 */
const SWAP_MEMORY_MS = 24 * 60 * 60_000;

const swapScript = script('audit-outbox-swap');

/** An outbox member's tag (outbox-member.ts): up to its first space; undefined for a member without one. */
export function memberTag(member: string): string | undefined {
  return member.startsWith('{') ? undefined : member.slice(0, member.indexOf(' '));
}

/**
 * Puts `next` in `chain`'s outbox in `intent`'s place, remembered by `tag` (the same tag sent again adds
 * nothing). Returns `next`'s score (its time), or undefined when this swap was made before and `next`
 * appended since. `onlyPresent` (recovery): nothing is added once the intent has left the outbox (its process
 * swapped its own outcome meanwhile, or it was appended), and undefined is returned.
 */
export async function swapOutbox(
  deps: { redis: RedisClient; keys: Keys },
  chain: AuditChain,
  intent: string,
  next: string,
  tag: string,
  onlyPresent = false,
): Promise<number | undefined> {
  const at = await swapScript.run(
    deps.redis,
    [deps.keys.auditOutbox(chain), deps.keys.auditOutboxSwapped(chain)],
    [intent, next, tag, SWAP_MEMORY_MS, ...(onlyPresent ? ['1'] : [])],
  );
  return at === null ? undefined : Number(at);
}
