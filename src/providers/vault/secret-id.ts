import { randomUUID } from 'node:crypto';
import type { Logger } from '../../logger.ts';
import type { RotationIds, RotationJournal } from '../types.ts';
import { classify, isAlreadyGone, issueError, safeCause } from './errors.ts';
import type { VaultSession } from './session.ts';

/** A secret-id a rotation created. `generated`: Vault chose it (the fallback), so no intent could name it before its answer. */
export interface NewSecretId {
  secretId: string;
  accessor: string;
  generated: boolean;
}

const METADATA = JSON.stringify({ created_by: 'jit-broker', reason: 'rotation' });

/** Sessions already warned that their policy lacks custom-secret-id (once per process is enough). */
const warned = new WeakSet<VaultSession>();

/** The secret-id destroyed by value: Vault answers 204 whether or not it exists. */
const destroyByValue = (session: VaultSession, base: string, secretId: string) =>
  session.call((c) => c.write(`${base}/secret-id/destroy`, { secret_id: secretId }));

/**
 * Creates the rotation's new secret-id. The broker makes it (random, UUID-shaped like Vault's own) and
 * records it in the intent (sealed by the core) before asking Vault to register it, so a lost answer or
 * a process dying after the call leaves it named: the next rotation destroys it by value. A Vault policy
 * without `custom-secret-id` falls back to a secret-id Vault generates, as before (see `generate`).
 */
export async function createSecretId(
  session: VaultSession,
  base: string,
  logger: Logger,
  journal: RotationJournal,
  old: RotationIds,
): Promise<NewSecretId> {
  const pending = randomUUID();
  await journal.record({ ...old, pending });
  let answered = false;
  try {
    const made = await session.call((c) => c.write(`${base}/custom-secret-id`, { secret_id: pending, metadata: METADATA }));
    answered = true;
    const accessor = made?.data?.secret_id_accessor;
    if (made?.data?.secret_id !== pending || typeof accessor !== 'string' || !accessor)
      throw new Error('Vault answered the custom secret-id without it');
    return { secretId: pending, accessor, generated: false };
  } catch (err) {
    // A 403 here is the ACL (session.call already logged in again if the token was lost): nothing was made.
    if (!answered && classify(err).kind === 'denied') return generate(session, base, logger, journal, old);
    // Vault may have registered it (no answer understood, a 5xx, an odd 200): destroyed at once. The intent
    // stays unless Vault plainly refused and the destroy worked: a timed-out call can still land after the
    // destroy, and the next rotation destroys it again by value (204 when it is gone).
    const refused = !answered && isRefusal(err);
    const destroyed = await destroyByValue(session, base, pending).then(
      () => true,
      (e: unknown) => {
        logger.warn(
          { err: safeCause(e) },
          'vault: could not destroy the secret-id a failed rotation may have created; the intent keeps it',
        );
        return false;
      },
    );
    if (refused && destroyed) await journal.clear();
    throw issueError(err, 'creating the new AppRole secret-id');
  }
}

/** Vault answered and did nothing: a 4xx, or sealed. A 5xx or no answer at all may follow a write carried out. */
function isRefusal(err: unknown): boolean {
  const f = classify(err);
  return f.kind === 'sealed' || (f.status !== undefined && f.status >= 400 && f.status < 500);
}

/**
 * The fallback, for a policy without `update` on custom-secret-id: Vault generates the secret-id, and its
 * accessor reaches the intent only with Vault's answer. An answer lost after Vault made it, or a process
 * dying before the caller records the accessor, leaves a valid secret-id nobody names (warned once).
 */
async function generate(
  session: VaultSession,
  base: string,
  logger: Logger,
  journal: RotationJournal,
  old: RotationIds,
): Promise<NewSecretId> {
  if (!warned.has(session)) {
    warned.add(session);
    logger.warn(
      { missingCapability: `update on ${base}/custom-secret-id` },
      'vault: the broker may not create custom secret-ids; rotating with generated ones, which a lost answer or a crash mid-rotation can leave valid and unrecorded (grant the capability to close that gap)',
    );
  }
  // The refused secret-id was never made: the intent names only the one in use now.
  await journal.record(old);
  try {
    const made = await session.call((c) => c.write(`${base}/secret-id`, { metadata: METADATA }));
    const fresh = made?.data as { secret_id?: string; secret_id_accessor?: string } | undefined;
    if (!fresh?.secret_id || !fresh.secret_id_accessor) throw new Error('Vault answered secret-id generation without a secret-id');
    return { secretId: fresh.secret_id, accessor: fresh.secret_id_accessor, generated: true };
  } catch (err) {
    // Nothing to keep: the intent could only name the secret-id in use (the gap this fallback leaves open).
    await journal.clear();
    throw issueError(err, 'generating a new AppRole secret-id');
  }
}

/**
 * Secret-ids an interrupted rotation recorded (the one it was retiring, the one it created) other than
 * the one in use: the core switched this instance to the secret-id Redis names, the one every instance
 * uses. Left alone they stay valid for good. Accessors are destroyed by accessor, a pending secret-id by
 * value; a pending one that cannot be destroyed stops the rotation before its intent is overwritten (it
 * is named nowhere else).
 */
export async function retireLeftovers(
  session: VaultSession,
  base: string,
  logger: Logger,
  current: { accessor: string | undefined; secretId: string | undefined },
  journal: RotationJournal,
): Promise<void> {
  const destroy = (accessor: string) =>
    session.call((c) => c.write(`${base}/secret-id-accessor/destroy`, { secret_id_accessor: accessor }));
  for (const accessor of new Set([journal.leftover?.old, journal.leftover?.new])) {
    if (!accessor || accessor === current.accessor) continue;
    await journal.fence();
    try {
      await destroy(accessor);
      logger.warn({ secretIdAccessor: accessor }, 'vault: destroyed a secret-id an interrupted rotation left valid');
    } catch (err) {
      if (!isAlreadyGone(err))
        logger.error({ secretIdAccessor: accessor, err: safeCause(err) }, 'vault: could not destroy a leftover secret-id');
    }
  }
  const pending = journal.leftover?.pending;
  if (!pending || pending === current.secretId) return;
  await journal.fence();
  try {
    await destroyByValue(session, base, pending);
  } catch (err) {
    throw issueError(err, 'destroying the secret-id an interrupted rotation was creating');
  }
  logger.warn('vault: destroyed (if Vault had it) the secret-id an interrupted rotation was creating');
}
