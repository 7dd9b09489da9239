import type { Logger } from '../logger.ts';
import { type RotationIds, type RotationJournal, RotationLockLost } from '../providers/types.ts';
import type { HeldLock } from '../redis/lock.ts';
import type { RedisClient } from '../redis/scripts.ts';
import type { SealedSecrets } from './sealed-secrets.ts';

/** The intent as Redis holds it: identifiers as they are, a pending secret only sealed. */
type StoredIntent = { old?: string; new?: string; pendingSealed?: string };

/**
 * The rotation intent of `target` in Redis (`key`), as the provider's journal. Every write, and the
 * fence, check that the rotation lock is still this instance's. A pending secret (`RotationIds.pending`)
 * is sealed under the KEK on the way in and opened on the way out: Redis never holds it in plaintext,
 * and it is never logged.
 */
export async function openJournal(
  redis: RedisClient,
  key: string,
  target: string,
  lock: HeldLock,
  sealed: SealedSecrets,
  logger: Logger,
): Promise<RotationJournal> {
  const raw = await redis.get(key);
  const leftover = raw ? open(target, JSON.parse(raw) as StoredIntent, sealed) : undefined;
  if (leftover)
    logger.warn(
      { target, leftover: { old: leftover.old, new: leftover.new, pending: leftover.pending !== undefined } },
      'an earlier rotation was interrupted: retiring what it left',
    );
  return {
    leftover,
    record: async ({ pending, ...ids }) => {
      const stored: StoredIntent = pending === undefined ? ids : { ...ids, pendingSealed: sealed.sealPending(target, pending) };
      if (!(await lock.write(key, JSON.stringify(stored)))) throw new RotationLockLost();
    },
    clear: async () => {
      // Not clearing only makes the next rotation retire what is already gone; a lapsed lock leaves the
      // intent to the rotation that holds it now.
      await lock.write(key).catch((err) => logger.warn({ target, err: (err as Error).message }, 'rotation intent not cleared'));
    },
    fence: async () => {
      if (!(await lock.held())) throw new RotationLockLost();
    },
  };
}

function open(target: string, stored: StoredIntent, sealed: SealedSecrets): RotationIds {
  const { pendingSealed, ...ids } = stored;
  if (pendingSealed === undefined) return ids;
  try {
    return { ...ids, pending: sealed.openPending(target, pendingSealed) };
  } catch {
    // Going on would overwrite the intent, and with it the only record of a secret that may be valid upstream.
    throw new Error(`cannot decrypt the ${target} rotation intent in Redis: wrong secrets.kek? Not rotating over it.`);
  }
}
