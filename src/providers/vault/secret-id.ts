import { randomUUID } from 'node:crypto';
import { upstreamFailed } from '../../errors.ts';
import type { Logger } from '../../logger.ts';
import type { PendingSecret, RotationIds, RotationJournal } from '../types.ts';
import { classify, issueError, safeCause } from './errors.ts';
import { destroyByValue, type LateCreates, settle } from './leftovers.ts';
import type { VaultSession } from './session.ts';

/**
 * A secret-id a rotation created. `generated`: Vault chose it (the fallback), so no intent could name it
 * before its answer. `pending`: otherwise, its entry in the intent's pending list.
 */
export interface NewSecretId {
  secretId: string;
  accessor: string;
  generated: boolean;
  pending?: PendingSecret;
}

/**
 * The most secret-ids of failed rotations the intent keeps at once. Each failed create adds one, and
 * one leaves only a bound after it was sent: a cap keeps a tight retry loop against a sick Vault from
 * growing the intent without end (the rotation refuses instead; nothing recorded is dropped).
 */
export const MAX_PENDING = 16;

const METADATA = JSON.stringify({ created_by: 'jit-broker', reason: 'rotation' });

/** Sessions already warned that their policy lacks custom-secret-id (once per process is enough). */
const warned = new WeakSet<VaultSession>();

/**
 * Creates the rotation's new secret-id. The broker makes it (random, UUID-shaped like Vault's own) and
 * appends it, with when it was sent, to the intent's pending list (sealed by the core) before asking Vault
 * to register it, so a lost or late answer or a process dying after the call leaves it named: later
 * rotations destroy it by value. `kept`: what earlier rotations sent that must stay recorded. A Vault
 * policy without `custom-secret-id` falls back to a secret-id Vault generates, as before (see `generate`).
 */
export async function createSecretId(
  session: VaultSession,
  base: string,
  logger: Logger,
  journal: RotationJournal,
  old: RotationIds,
  kept: PendingSecret[],
  late: LateCreates,
): Promise<NewSecretId> {
  if (kept.length >= MAX_PENDING)
    throw upstreamFailed(
      'rotation_failed',
      `${kept.length} secret-ids that failed rotations sent to Vault are still recorded, the most kept at once. ` +
        `Rotate again ${Math.ceil(late.withinMs / 1000)} s after the last failure: the next rotation destroys them and forgets them.`,
    );
  const pending = randomUUID();
  const entry: PendingSecret = { secret: pending, sentAt: late.now() };
  await journal.record({ ...old, pending: [...kept, entry] });
  let answered = false;
  try {
    const made = await session.call((c) => c.write(`${base}/custom-secret-id`, { secret_id: pending, metadata: METADATA }));
    answered = true;
    const accessor = made?.data?.secret_id_accessor;
    if (made?.data?.secret_id !== pending || typeof accessor !== 'string' || !accessor)
      throw new Error('Vault answered the custom secret-id without it');
    return { secretId: pending, accessor, generated: false, pending: entry };
  } catch (err) {
    // A 403 here is the ACL (session.call already logged in again if the token was lost): nothing was made.
    if (!answered && classify(err).kind === 'denied') return generate(session, base, logger, journal, old, kept);
    const refused = !answered && isRefusal(err);
    // The request may still be on its way (held by a proxy, or running in Vault): a create that reaches Vault
    // after the token that sent it is revoked fails with 403.
    if (!answered && !refused) await retireSender(session, logger);
    // Vault may have registered it: destroyed at once. It stays in the pending list unless Vault plainly
    // refused and the destroy worked: a create that lands after this destroy is destroyed again by a later
    // rotation, which forgets it only once it was sent longer ago than a request may take (`late.withinMs`).
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
    if (refused && destroyed) await settle(journal, logger, kept);
    throw issueError(err, 'creating the new AppRole secret-id');
  }
}

/**
 * Vault answered and did nothing: sealed, or a 4xx. Not a proxy's 408 (request timeout) or 499 (client
 * closed the request): like a 5xx or no answer at all, those may follow a create carried out, or still
 * on its way to Vault.
 */
function isRefusal(err: unknown): boolean {
  const f = classify(err);
  if (f.kind === 'sealed') return true;
  return f.status !== undefined && f.status >= 400 && f.status < 500 && f.status !== 408 && f.status !== 499;
}

/**
 * Logs in again and revokes the token that sent an unanswered create (once no call of this instance uses
 * it): a create held before Vault then fails with 403. Issued credentials never hang off the broker's
 * token, so revoking it costs nothing but a login. A create already running inside Vault is not stopped,
 * and with Vault unreachable neither step happens: the pending list covers both.
 */
async function retireSender(session: VaultSession, logger: Logger): Promise<void> {
  const secretId = session.secretId;
  if (secretId === undefined) return;
  try {
    await session.switchTo(await session.login(secretId), { revokeOld: true });
  } catch (err) {
    logger.warn(
      { err: safeCause(err) },
      'vault: could not replace the token that sent an unanswered create; the intent keeps the secret-id',
    );
  }
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
  kept: PendingSecret[],
): Promise<NewSecretId> {
  if (!warned.has(session)) {
    warned.add(session);
    logger.warn(
      { missingCapability: `update on ${base}/custom-secret-id` },
      'vault: the broker may not create custom secret-ids; rotating with generated ones, which a lost answer or a crash mid-rotation can leave valid and unrecorded (grant the capability to close that gap)',
    );
  }
  // The refused secret-id was never made: the pending list goes back to what earlier rotations left.
  await journal.record({ ...old, pending: kept });
  try {
    const made = await session.call((c) => c.write(`${base}/secret-id`, { metadata: METADATA }));
    const fresh = made?.data as { secret_id?: string; secret_id_accessor?: string } | undefined;
    if (!fresh?.secret_id || !fresh.secret_id_accessor) throw new Error('Vault answered secret-id generation without a secret-id');
    return { secretId: fresh.secret_id, accessor: fresh.secret_id_accessor, generated: true };
  } catch (err) {
    // Nothing to keep but what earlier rotations left: the intent could only name the secret-id in use (the
    // gap this fallback leaves open).
    await settle(journal, logger, kept);
    throw issueError(err, 'generating a new AppRole secret-id');
  }
}
