import { upstreamFailed } from '../errors.ts';
import type { Logger } from '../logger.ts';
import { type PendingSecret, type RotationIds, type RotationJournal, RotationLockLost } from '../providers/types.ts';
import type { Keys } from '../redis/keys.ts';
import type { HeldLock } from '../redis/lock.ts';
import type { RedisClient } from '../redis/scripts.ts';
import type { SealedSecrets } from './sealed-secrets.ts';

/**
 * The intent as Redis holds it: identifiers only. `pendingSealed` (one secret, sealed) was written there by
 * builds before the pending list had a key of its own (`keys.rotationPending`); it is still read.
 */
type StoredIntent = { old?: string; new?: string; pendingSealed?: string };

/**
 * The rotation intent of `target` in Redis, as the provider's journal. Identifiers go to
 * `keys.rotationIntent`; the secrets a rotation sent upstream to be created (`RotationIds.pending`) go to
 * `keys.rotationPending`, sealed under the KEK as one list: Redis never holds them in plaintext, they are
 * never logged, and an instance of an earlier version, which rewrites and clears the intent knowing nothing
 * of them, leaves them alone. Every write, and the fence, check that the rotation lock is still this
 * instance's.
 */
export async function openJournal(
  redis: RedisClient,
  keys: Keys,
  target: string,
  lock: HeldLock,
  sealed: SealedSecrets,
  logger: Logger,
  /** The lock keeper's signal (keepLock): aborted once no extension was confirmed for most of the hold. */
  held?: AbortSignal,
): Promise<RotationJournal> {
  const intentKey = keys.rotationIntent(target);
  const pendingKey = keys.rotationPending(target);
  const [rawIntent, rawPending, distributed] = await Promise.all([
    redis.get(intentKey),
    redis.get(pendingKey),
    redis.exists(keys.secrets(target)),
  ]);
  const leftover = rawIntent || rawPending ? open(target, rawIntent, rawPending, sealed, [intentKey, pendingKey]) : undefined;
  if (leftover)
    logger.warn(
      { target, leftover: { old: leftover.old, new: leftover.new, pending: leftover.pending?.length ?? 0 } },
      'an earlier rotation was interrupted: retiring what it left',
    );
  const write = async (key: string, value?: string) => {
    if (!(await lock.write(key, value))) throw new RotationLockLost();
  };
  return {
    leftover,
    distributed: distributed === 1,
    record: async ({ pending, ...ids }) => {
      // The pending list first: it must be in Redis before the call it names is sent.
      if (pending !== undefined) await write(pendingKey, pending.length ? sealed.sealPending(target, JSON.stringify(pending)) : undefined);
      await write(intentKey, ids.old !== undefined || ids.new !== undefined ? JSON.stringify(ids) : undefined);
    },
    clear: async () => {
      // Not clearing only makes the next rotation retire what is already gone; a lapsed lock leaves the
      // intent to the rotation that holds it now.
      await write(intentKey)
        .then(() => write(pendingKey))
        .catch((err) => logger.warn({ target, err: (err as Error).message }, 'rotation intent not cleared'));
    },
    fence: async () => {
      // Redis saying the lock is ours is not enough when the keeper has given it up: it may lapse any moment,
      // while the upstream call this guards is on the wire.
      if (held?.aborted || !(await lock.held())) throw new RotationLockLost();
    },
  };
}

function open(target: string, rawIntent: string | null, rawPending: string | null, sealed: SealedSecrets, names: string[]): RotationIds {
  const { pendingSealed, ...ids } = rawIntent ? (JSON.parse(rawIntent) as StoredIntent) : {};
  let pending: PendingSecret[] = [];
  try {
    if (rawPending) pending = JSON.parse(sealed.openPending(target, rawPending)) as PendingSecret[];
    // Written by a development build (never released) that kept one secret in the intent, with no time.
    if (pendingSealed !== undefined) pending.push({ secret: sealed.openPending(target, pendingSealed), sentAt: 0 });
  } catch {
    // Going on would overwrite the intent, and with it the only record of secrets that may be valid upstream.
    throw upstreamFailed(
      'rotation_failed',
      `Cannot decrypt the ${target} rotation intent in Redis (${names.join(', ')}) with this secrets.kek; not rotating over it. ` +
        'Start with the KEK that wrote it, or follow docs/operations.md ("A rotation that fails every time").',
    );
  }
  return { ...ids, ...(pending.length ? { pending } : {}) };
}
