import type { Logger } from '../../logger.ts';
import type { PendingSecret, RotationJournal } from '../types.ts';
import { isAlreadyGone, issueError, safeCause } from './errors.ts';
import type { VaultSession } from './session.ts';

/**
 * When a create was sent (`now`: Redis's clock, shared by every instance) and how long after that it may
 * still take effect in Vault (`withinMs`: `providers.vault.maxRequestDurationSeconds`, Vault's
 * `max_request_duration`, 90 s by default).
 */
export interface LateCreates {
  now: () => number;
  withinMs: number;
}

/** The secret-id destroyed by value: Vault answers 204 whether or not it exists. */
export const destroyByValue = (session: VaultSession, base: string, secretId: string) =>
  session.call((c) => c.write(`${base}/secret-id/destroy`, { secret_id: secretId }));

/**
 * Secret-ids an interrupted or failed rotation recorded, other than the one in use: the core switched this
 * instance to the secret-id Redis names, the one every instance uses. Left alone they stay valid for good.
 * Accessors (`old`, `new`) are destroyed by accessor; pending secret-ids by value, and a pending one that
 * cannot be destroyed stops the rotation before its intent is overwritten (it is named nowhere else).
 *
 * Returns the pending secret-ids that must stay recorded: those sent too recently for their create to be
 * over (one still on its way lands after this destroy: the next rotation destroys it again), and, not
 * destroyed, those that were handed out when Redis holds no distributed secret-id (the other instances may
 * run with one).
 */
export async function retireLeftovers(
  session: VaultSession,
  base: string,
  logger: Logger,
  current: { accessor: string | undefined; secretId: string | undefined },
  journal: RotationJournal,
  late: LateCreates,
): Promise<PendingSecret[]> {
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
  const pending = (journal.leftover?.pending ?? []).filter((p) => p.secret !== current.secretId);
  if (!pending.length) return [];
  const kept: PendingSecret[] = [];
  let destroyed = 0;
  for (const p of pending) {
    if (p.handedOut && journal.distributed === false) {
      // Redis lost the distributed secret-id (evicted, deleted) while the intent survived: this instance runs
      // with the configured one, or its own, and the others may run with this one. Kept: the first rotation
      // after one is distributed again destroys it.
      kept.push(p);
      continue;
    }
    await journal.fence();
    // Read before the destroy is sent: Vault carries the destroy out after this time.
    const at = late.now();
    try {
      await destroyByValue(session, base, p.secret);
    } catch (err) {
      throw issueError(err, 'destroying a secret-id an earlier rotation sent to Vault; see docs/operations.md');
    }
    destroyed++;
    // A create still on its way lands after this destroy: listed until a destroy comes late enough.
    if (at - p.sentAt <= late.withinMs) kept.push(p);
  }
  if (destroyed < pending.length)
    logger.error(
      { notDestroyed: pending.length - destroyed },
      'vault: Redis holds no distributed secret-id, so secret-ids earlier rotations handed out are not destroyed (the other instances may run with one); the intent keeps them',
    );
  if (destroyed)
    logger.warn(
      { destroyed, keptForLateCreates: kept.length - (pending.length - destroyed) },
      'vault: destroyed (if Vault had them) the secret-ids earlier rotations sent to Vault',
    );
  return kept;
}

/**
 * Ends the intent of a rotation that retired what it meant to: cleared, or, while secret-ids sent by
 * earlier rotations may still land, left naming only those. A lock lost by now leaves the intent to
 * the rotation holding it (every write of this one carried `kept`).
 */
export async function settle(journal: RotationJournal, logger: Logger, kept: PendingSecret[]): Promise<void> {
  if (!kept.length) return journal.clear();
  await journal
    .record({ pending: kept })
    .catch((err: unknown) => logger.warn({ err: safeCause(err) }, 'vault: rotation intent not narrowed to the secret-ids still pending'));
}
