import { RetryableUpstreamError } from '../../errors.ts';
import type { LeaseRecord } from '../../leases/types.ts';
import { addressOf, type VaultClient } from './client.ts';
import { isRevokedAlready, revokeError } from './errors.ts';
import type { VaultSession } from './session.ts';

/**
 * Vault at another address than the one a credential was made at answered that it does not know it. That
 * is proof of nothing when the address now reaches another cluster: a failed attempt, retried until Vault
 * confirms or the credential expires.
 */
const unconfirmed = () =>
  new RetryableUpstreamError(
    'upstream_unconfirmed',
    'Vault at the configured address does not know this credential, which was issued at another address: not confirmed revoked',
  );

/**
 * `auth/token/revoke-accessor`; an unknown accessor (400 "invalid accessor") means already revoked, a 404 does not,
 * and neither does an unknown accessor when `unknownIsGone` is false (asked at another address than the issuing one).
 */
export async function revokeAccessor(client: VaultClient, accessor: string, unknownIsGone = true): Promise<void> {
  try {
    await client.write('auth/token/revoke-accessor', { accessor });
  } catch (err) {
    if (!isRevokedAlready(err)) throw err;
    if (!unknownIsGone) throw unconfirmed();
  }
}

/** `sys/leases/revoke`; an unknown lease is already revoked (Vault answers 204; older ones 400 "invalid lease"). */
async function revokeLease(client: VaultClient, leaseId: string, unknownIsGone: boolean): Promise<void> {
  try {
    await client.write('sys/leases/revoke', { lease_id: leaseId });
  } catch (err) {
    if (!isRevokedAlready(err)) throw err;
    if (!unknownIsGone) throw unconfirmed();
  }
}

/**
 * Ends a lease's credential in Vault. Idempotent: anything Vault says it no
 * longer knows counts as revoked. Throws RetryableUpstreamError while Vault is
 * sealed, throttling, failing or unreachable.
 *
 * In the namespace the credential was made in (recorded in the handle), whatever the configured one is now:
 * asked in another namespace, Vault answers "invalid accessor" for a token that is alive in its own. Vault
 * is always called at the configured address (operators move Vault behind a new DNS name or load balancer),
 * but when that is not the address the credential was made at, Vault saying it does not know the
 * credential confirms nothing (it may be another cluster): only a revocation Vault carries out does, so
 * such a lease stays `revoke_failed` until then or until its credential expires. A handle written before
 * the broker recorded these (no `namespace`, no `address`) is revoked in the configured namespace and
 * address, as then.
 */
export async function revokeHandle(session: VaultSession, lease: LeaseRecord): Promise<void> {
  const h = lease.handle;
  const where = typeof h.namespace === 'string' ? { namespace: h.namespace } : {};
  const moved = typeof h.address === 'string' && sameAddress(h.address, session.address) === false;
  try {
    if (h.kind === 'token' && typeof h.accessor === 'string') {
      await session.call((c) => revokeAccessor(c, h.accessor as string, !moved), where);
    } else if (h.kind === 'secret' && typeof h.leaseId === 'string') {
      // The lease first (what the contract promises), then its reader token (which would revoke it too).
      await session.call((c) => revokeLease(c, h.leaseId as string, !moved), where);
      // Vault answers 204 for a lease it does not know: at another address, only revoking the reader token
      // (which takes every lease it read with it) confirms anything.
      if (typeof h.accessor === 'string') await session.call((c) => revokeAccessor(c, h.accessor as string, !moved), where);
      else if (moved) throw unconfirmed();
    }
    // No handle: the issue never reached Vault, so there is nothing to end.
  } catch (err) {
    throw revokeError(err, 'revoking a lease');
  }
}

/** Whether two Vault addresses are the same (addressOf); a recorded one that does not parse is not. */
function sameAddress(recorded: string, configured: string): boolean {
  try {
    return addressOf(recorded) === configured;
  } catch {
    return false;
  }
}
