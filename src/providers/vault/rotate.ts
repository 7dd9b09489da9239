import { badRequest } from '../../errors.ts';
import type { Logger } from '../../logger.ts';
import { noJournal, type RotationJournal, RotationLockLost, type RotationResult, stillHeld } from '../types.ts';
import { VAULT_MAX_REQUEST_DURATION_SECONDS } from './config.ts';
import { classify, isAlreadyGone, issueError, safeCause } from './errors.ts';
import { type LateCreates, retireLeftovers, settle } from './leftovers.ts';
import { firstLoginFailure } from './login-failure.ts';
import { createSecretId } from './secret-id.ts';
import type { VaultSession } from './session.ts';

const unsupported = (why: string) => badRequest('rotation_unsupported', why);

/** `auth/<mount>/role/<name>` of the broker's AppRole, or a 400 when rotation cannot work. */
function roleBase(session: VaultSession): string {
  const a = session.approle;
  if (!a) throw unsupported('The Vault provider uses token auth; only an AppRole secret-id can be rotated.');
  if (!a.roleName) throw unsupported('providers.vault.auth.approle.roleName is needed to rotate the AppRole secret-id.');
  return `auth/${a.mount}/role/${encodeURIComponent(a.roleName)}`;
}

/**
 * Rotates the broker's AppRole secret-id: create a new one (named in the intent before Vault is asked,
 * src/providers/vault/secret-id.ts), log in with it, switch, then destroy the old one and revoke the old
 * token once idle. Everything before the switch can fail without effect (the old secret-id and token
 * stay in use; a new secret-id that did not work is destroyed, or left to the next rotation by the intent).
 */
export async function rotateSecretId(
  session: VaultSession,
  logger: Logger,
  distribute: (secret: Record<string, string>) => Promise<void> = async () => {},
  journal: RotationJournal = noJournal,
  late: LateCreates = { now: Date.now, withinMs: VAULT_MAX_REQUEST_DURATION_SECONDS * 1000 },
): Promise<RotationResult> {
  const base = roleBase(session);
  const destroy = (accessor: string) =>
    session.call((c) => c.write(`${base}/secret-id-accessor/destroy`, { secret_id_accessor: accessor }));
  return session.exclusive(async () => {
    let oldAccessor: string | undefined;
    try {
      // 204 (empty) when the current secret-id is already gone: then there is nothing to destroy.
      const looked = await session.call((c) => c.write(`${base}/secret-id/lookup`, { secret_id: session.secretId }));
      oldAccessor = looked?.data?.secret_id_accessor;
    } catch (err) {
      throw issueError(err, 'looking up the current AppRole secret-id');
    }
    // What earlier rotations sent that may still land: every record of this one carries it.
    const kept = await retireLeftovers(session, base, logger, { accessor: oldAccessor, secretId: session.secretId }, journal, late);
    const old = oldAccessor ? { old: oldAccessor } : {};
    // Records the intent (the old secret-id, and the new one when the broker chooses it) before Vault is asked.
    const fresh = await createSecretId(session, base, logger, journal, old, kept, late);

    let token;
    try {
      // A generated one's accessor reaches the intent only now. A custom one is named already: the fence
      // stops a rotation whose lock lapsed during the call (the rotation holding it destroys the new one too).
      if (fresh.generated) await journal.record({ ...old, new: fresh.accessor });
      else await journal.fence();
      token = await session.login(fresh.secretId);
    } catch (err) {
      // Not handed out: this instance's alone, destroyed here whatever the lock (with the lock lost, the
      // rotation holding it may not know of it: a generated one's accessor may not have reached the intent).
      // No token from it is kept: the login failed, or was not reached. The intent stays recorded when the
      // destroy fails: the next rotation destroys the new secret-id.
      await destroy(fresh.accessor)
        .then(() => settle(journal, logger, kept))
        .catch((e: unknown) =>
          logger.warn({ secretIdAccessor: fresh.accessor, err: safeCause(e) }, 'vault: could not destroy an unused secret-id'),
        );
      throw err instanceof RotationLockLost ? err : issueError(err, 'logging in with the new AppRole secret-id');
    }
    const oldSecretId = session.secretId;
    await session.switchTo(token, { revokeOld: true, secretId: fresh.secretId });
    // Every instance learns the new secret-id before the old one is destroyed. If that fails the
    // old secret-id is kept (other instances may still need it to log in) and the failure is reported.
    try {
      // Once Redis names it the others may run with it: a later rotation that finds no distributed secret-id
      // in Redis (lost) must not destroy it as a leftover.
      if (fresh.pending) await journal.record({ ...old, pending: [...kept, { ...fresh.pending, handedOut: true }] });
      await distribute({ secretId: fresh.secretId });
    } catch (err) {
      if (err instanceof RotationLockLost) {
        // Its sealing is what the lock refused: nobody else has the new secret-id. Back to the old one
        // (its login revokes the new one's token; best effort: that rotation announces its own), and the
        // new secret-id destroyed here as well as by the rotation holding the lock (the intent names it).
        if (oldSecretId)
          await session
            .login(oldSecretId)
            .then((back) => session.switchTo(back, { revokeOld: true, secretId: oldSecretId }))
            .catch((e: unknown) => logger.warn({ err: safeCause(e) }, 'vault: could not log in again with the previous secret-id'));
        await destroy(fresh.accessor).catch(() => {});
        throw err;
      }
      logger.error({ err: safeCause(err) }, 'vault: could not distribute the new secret-id; the old one is kept');
      throw issueError(err, 'distributing the new AppRole secret-id');
    }

    // After the switch the rotation has happened; an old secret-id that cannot be destroyed now is reported, not
    // fatal. A lock lost by now leaves it to the rotation holding the lock (the intent names it).
    let oldDestroyed = oldAccessor === undefined;
    if (oldAccessor !== undefined && (await stillHeld(journal))) {
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
    if (oldDestroyed) await settle(journal, logger, kept);
    logger.info({ secretIdAccessor: fresh.accessor, oldSecretIdAccessor: oldAccessor, oldDestroyed }, 'vault: AppRole secret-id rotated');
    return {
      target: 'vault',
      rotated: ['approle-secret-id', 'vault-token'],
      detail: {
        secretIdAccessor: fresh.accessor,
        ...(oldAccessor ? { oldSecretIdAccessor: oldAccessor } : {}),
        oldSecretIdDestroyed: oldDestroyed,
      },
      secret: { secretId: fresh.secretId },
    };
  });
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
      // Vault unreachable (or sealed) and no token held yet, as at a startup during an outage: the background
      // login uses the rotated secret-id once Vault answers. Failing here stopped the whole broker.
      if (firstLoginFailure(err, session.address).retry && session.loginLaterWith(secretId)) return;
      throw issueError(err, 'logging in with the rotated AppRole secret-id');
    }
    await session.switchTo(token, { revokeOld: true, secretId });
  });
}
