import { badRequest } from '../../errors.ts';
import type { Logger } from '../../logger.ts';
import { type LeftoverOutcome, noJournal, type RotationIds, type RotationJournal, type RotationResult } from '../types.ts';
import { classify, isAlreadyGone, issueError, safeCause } from './errors.ts';
import type { VaultSession } from './session.ts';

const unsupported = (why: string) => badRequest('rotation_unsupported', why);

/** What the broker's rotation writes on each secret-id it generates: how one whose accessor was never recorded is recognised. */
const ROTATION_METADATA = { created_by: 'jit-broker', reason: 'rotation' };
/** How far Vault's clock (creation_time) may be from the broker's (Redis's) when matching such a secret-id. */
const CLOCK_SKEW_MS = 5 * 60_000;
/** Secret-ids looked up (one request each) when searching for an unrecorded one; the broker's role has few. */
const MAX_LOOKUPS = 200;

/** `auth/<mount>/role/<name>` of the broker's AppRole, or a 400 when rotation cannot work. */
function roleBase(session: VaultSession): string {
  const a = session.approle;
  if (!a) throw unsupported('The Vault provider uses token auth; only an AppRole secret-id can be rotated.');
  if (!a.roleName) throw unsupported('providers.vault.auth.approle.roleName is needed to rotate the AppRole secret-id.');
  return `auth/${a.mount}/role/${encodeURIComponent(a.roleName)}`;
}

/**
 * Rotates the broker's AppRole secret-id: generate a new one, log in with it,
 * switch, then destroy the old one and revoke the old token once idle.
 * Everything before the switch can fail without effect (the old secret-id
 * and token stay in use; a new secret-id that did not work is destroyed).
 */
export async function rotateSecretId(
  session: VaultSession,
  logger: Logger,
  distribute: (secret: Record<string, string>) => Promise<void> = async () => {},
  journal: RotationJournal = noJournal,
  clock: () => number = Date.now,
): Promise<RotationResult> {
  const base = roleBase(session);
  const destroy = destroyer(session, base);
  return session.exclusive(async () => {
    let fresh: { secret_id: string; secret_id_accessor: string };
    const oldAccessor = await currentAccessor(session, base);
    await retireLeftovers(session, base, logger, oldAccessor, journal);
    // Recorded before anything is created: a process dying from here on leaves the next rotation enough to clean up,
    // even when it dies before the generation's answer (the only copy of the new accessor) was recorded.
    await journal.record({ ...(oldAccessor ? { old: oldAccessor } : {}), creating: clock() });
    try {
      const made = await session.call((c) => c.write(`${base}/secret-id`, { metadata: JSON.stringify(ROTATION_METADATA) }));
      fresh = made?.data;
      if (!fresh?.secret_id || !fresh.secret_id_accessor) throw new Error('Vault answered secret-id generation without a secret-id');
    } catch (err) {
      // The intent (with `creating`) stays: a generation whose answer was lost may have made a secret-id
      // nobody knows. The next rotation or start looks for it (retireLeftovers).
      throw issueError(err, 'generating a new AppRole secret-id');
    }

    let token;
    try {
      await journal.record({ ...(oldAccessor ? { old: oldAccessor } : {}), new: fresh.secret_id_accessor });
      token = await session.login(fresh.secret_id);
    } catch (err) {
      // The intent stays recorded when the destroy fails: the next rotation destroys the new secret-id.
      await destroy(fresh.secret_id_accessor)
        .then(() => journal.clear())
        .catch((e: unknown) =>
          logger.warn({ secretIdAccessor: fresh.secret_id_accessor, err: safeCause(e) }, 'vault: could not destroy an unused secret-id'),
        );
      throw issueError(err, 'logging in with the new AppRole secret-id');
    }
    await session.switchTo(token, { revokeOld: true, secretId: fresh.secret_id });
    // Every instance learns the new secret-id before the old one is destroyed. If that fails the
    // old secret-id is kept (other instances may still need it to log in) and the failure is reported.
    try {
      await distribute({ secretId: fresh.secret_id });
    } catch (err) {
      logger.error({ err: safeCause(err) }, 'vault: could not distribute the new secret-id; the old one is kept');
      throw issueError(err, 'distributing the new AppRole secret-id');
    }

    // After the switch the rotation has happened; an old secret-id that cannot be destroyed now is reported, not fatal.
    let oldDestroyed = oldAccessor === undefined;
    if (oldAccessor !== undefined) {
      try {
        await destroy(oldAccessor);
        oldDestroyed = true;
      } catch (err) {
        oldDestroyed = isAlreadyGone(err);
        if (!oldDestroyed)
          logger.error(
            { secretIdAccessor: oldAccessor, err: safeCause(err), kind: classify(err).kind },
            'vault: the old AppRole secret-id could not be destroyed',
          );
      }
    }
    // An old secret-id that could not be destroyed stays recorded: the next rotation destroys it.
    if (oldDestroyed) await journal.clear();
    logger.info(
      { secretIdAccessor: fresh.secret_id_accessor, oldSecretIdAccessor: oldAccessor, oldDestroyed },
      'vault: AppRole secret-id rotated',
    );
    return {
      target: 'vault',
      rotated: ['approle-secret-id', 'vault-token'],
      detail: {
        secretIdAccessor: fresh.secret_id_accessor,
        ...(oldAccessor ? { oldSecretIdAccessor: oldAccessor } : {}),
        oldSecretIdDestroyed: oldDestroyed,
      },
      secret: { secretId: fresh.secret_id },
    };
  });
}

const destroyer = (session: VaultSession, base: string) => (accessor: string) =>
  session.call((c) => c.write(`${base}/secret-id-accessor/destroy`, { secret_id_accessor: accessor }));

/** Accessor of the secret-id this instance runs with; undefined when Vault says it is already gone (204). */
async function currentAccessor(session: VaultSession, base: string): Promise<string | undefined> {
  try {
    const looked = await session.call((c) => c.write(`${base}/secret-id/lookup`, { secret_id: session.secretId }));
    return looked?.data?.secret_id_accessor;
  } catch (err) {
    throw issueError(err, 'looking up the current AppRole secret-id');
  }
}

/** Without rotating (the core's startup pass): destroys the secret-ids an interrupted rotation recorded, other than the one in use. */
export async function retireSecretIdLeftovers(session: VaultSession, logger: Logger, journal: RotationJournal): Promise<LeftoverOutcome> {
  // Token auth, or no role name: this broker never rotated a secret-id, so it recorded none.
  if (!session.approle?.roleName) return { retired: [], failed: [] };
  const base = roleBase(session);
  return session.exclusive(async () => retireLeftovers(session, base, logger, await currentAccessor(session, base), journal));
}

/**
 * Secret-ids an interrupted rotation recorded (the one it was retiring, the
 * one it generated) other than the one in use: the core switched this
 * instance to the secret-id Redis names, the one every instance uses. Left
 * alone they stay valid for good (the accessor was only in the dead process's
 * memory before). When the rotation died around the generation (`creating`
 * recorded, `new` not), the secret-id it made is looked for (`unrecorded`).
 */
async function retireLeftovers(
  session: VaultSession,
  base: string,
  logger: Logger,
  current: string | undefined,
  journal: RotationJournal,
): Promise<LeftoverOutcome> {
  const destroy = destroyer(session, base);
  const out: LeftoverOutcome = { retired: [], failed: [] };
  const left = journal.leftover;
  const accessors = new Set([left?.old, left?.new]);
  if (left?.creating !== undefined && !left.new) {
    try {
      for (const a of await unrecorded(session, base, logger, current, left)) accessors.add(a);
    } catch (err) {
      logger.error({ err: safeCause(err) }, 'vault: could not look for the secret-id an interrupted rotation generated');
      out.failed.push('secret-id list');
    }
  }
  for (const accessor of accessors) {
    if (!accessor || accessor === current) continue;
    try {
      await destroy(accessor);
      out.retired.push(accessor);
      logger.warn({ secretIdAccessor: accessor }, 'vault: destroyed a secret-id an interrupted rotation left valid');
    } catch (err) {
      if (!isAlreadyGone(err)) {
        out.failed.push(accessor);
        logger.error({ secretIdAccessor: accessor, err: safeCause(err) }, 'vault: could not destroy a leftover secret-id');
      }
    }
  }
  return out;
}

/**
 * The role's secret-ids an unfinished generation may have made: carrying the
 * rotation's metadata, created (by Vault's clock) within CLOCK_SKEW_MS of the
 * recorded start, and neither the one in use nor the one being retired. A
 * secret-id an operator generated (other metadata) is never touched. Needs
 * `list` on `secret-id` and `update` on `secret-id-accessor/lookup`.
 */
async function unrecorded(
  session: VaultSession,
  base: string,
  logger: Logger,
  current: string | undefined,
  left: RotationIds,
): Promise<string[]> {
  let keys: string[];
  try {
    keys = (await session.call((c) => c.list(`${base}/secret-id`)))?.data?.keys ?? [];
  } catch (err) {
    if (isAlreadyGone(err)) return []; // Vault answers 404 when the role has no secret-id at all
    throw err;
  }
  const candidates = keys.filter((a) => a !== current && a !== left.old);
  if (candidates.length > MAX_LOOKUPS)
    logger.warn({ secretIds: candidates.length, looked: MAX_LOOKUPS }, 'vault: too many secret-ids to look up all');
  const at = left.creating!;
  const found: string[] = [];
  for (const accessor of candidates.slice(0, MAX_LOOKUPS)) {
    let data: { creation_time?: string; metadata?: Record<string, string> } | undefined;
    try {
      data = (await session.call((c) => c.write(`${base}/secret-id-accessor/lookup`, { secret_id_accessor: accessor })))?.data;
    } catch (err) {
      if (isAlreadyGone(err)) continue;
      throw err;
    }
    const made = Date.parse(data?.creation_time ?? '');
    const ours = data?.metadata?.created_by === ROTATION_METADATA.created_by && data.metadata.reason === ROTATION_METADATA.reason;
    if (ours && Math.abs(made - at) <= CLOCK_SKEW_MS) found.push(accessor);
  }
  return found;
}

/** Switches to a secret-id rotated by another instance: log in with it first, switch only if that worked. */
export async function useSecretId(session: VaultSession, secret: Record<string, string>): Promise<void> {
  if (!session.approle) throw unsupported('The Vault provider uses token auth; there is no secret-id to switch to.');
  const secretId = secret.secretId;
  if (typeof secretId !== 'string' || !secretId) throw new Error('expected { secretId } from a Vault rotation');
  if (secretId === session.secretId) return;
  await session.exclusive(async () => {
    let token;
    try {
      token = await session.login(secretId);
    } catch (err) {
      throw issueError(err, 'logging in with the rotated AppRole secret-id');
    }
    await session.switchTo(token, { revokeOld: true, secretId });
  });
}
