import { badRequest } from '../../errors.ts';
import type { Logger } from '../../logger.ts';
import type { RotationResult } from '../types.ts';
import { classify, isAlreadyGone, issueError, safeCause } from './errors.ts';
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
 * Rotates the broker's AppRole secret-id: generate a new one, log in with it,
 * switch, then destroy the old one and revoke the old token once idle.
 * Everything before the switch can fail without effect (the old secret-id
 * and token stay in use; a new secret-id that did not work is destroyed).
 */
export async function rotateSecretId(
  session: VaultSession,
  logger: Logger,
  distribute: (secret: Record<string, string>) => Promise<void> = async () => {},
): Promise<RotationResult> {
  const base = roleBase(session);
  return session.exclusive(async () => {
    let oldAccessor: string | undefined;
    let fresh: { secret_id: string; secret_id_accessor: string };
    try {
      // 204 (empty) when the current secret-id is already gone: then there is nothing to destroy.
      const looked = await session.call((c) => c.write(`${base}/secret-id/lookup`, { secret_id: session.secretId }));
      oldAccessor = looked?.data?.secret_id_accessor;
      const made = await session.call((c) =>
        c.write(`${base}/secret-id`, { metadata: JSON.stringify({ created_by: 'jit-broker', reason: 'rotation' }) }),
      );
      fresh = made?.data;
      if (!fresh?.secret_id || !fresh.secret_id_accessor) throw new Error('Vault answered secret-id generation without a secret-id');
    } catch (err) {
      throw issueError(err, 'generating a new AppRole secret-id');
    }

    let token;
    try {
      token = await session.login(fresh.secret_id);
    } catch (err) {
      await session
        .call((c) => c.write(`${base}/secret-id-accessor/destroy`, { secret_id_accessor: fresh.secret_id_accessor }))
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
        await session.call((c) => c.write(`${base}/secret-id-accessor/destroy`, { secret_id_accessor: oldAccessor }));
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
