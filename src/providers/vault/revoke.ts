import type { LeaseRecord } from '../../leases/types.ts';
import type { VaultClient } from './client.ts';
import { isRevokedAlready, revokeError } from './errors.ts';
import type { VaultSession } from './session.ts';

/** `auth/token/revoke-accessor`; an unknown accessor (400 "invalid accessor") means already revoked, a 404 does not. */
export async function revokeAccessor(client: VaultClient, accessor: string): Promise<void> {
  try {
    await client.write('auth/token/revoke-accessor', { accessor });
  } catch (err) {
    if (!isRevokedAlready(err)) throw err;
  }
}

/** `sys/leases/revoke`; an unknown lease is already revoked (Vault answers 204; older ones 400 "invalid lease"). */
async function revokeLease(client: VaultClient, leaseId: string): Promise<void> {
  try {
    await client.write('sys/leases/revoke', { lease_id: leaseId });
  } catch (err) {
    if (!isRevokedAlready(err)) throw err;
  }
}

/**
 * Ends a lease's credential in Vault. Idempotent: anything Vault says it no
 * longer knows counts as revoked. Throws RetryableUpstreamError while Vault is
 * sealed, throttling, failing or unreachable.
 */
export async function revokeHandle(session: VaultSession, lease: LeaseRecord): Promise<void> {
  const h = lease.handle;
  try {
    if (h.kind === 'token' && typeof h.accessor === 'string') {
      await session.call((c) => revokeAccessor(c, h.accessor as string));
    } else if (h.kind === 'secret' && typeof h.leaseId === 'string') {
      // The lease first (what the contract promises), then its reader token (which would revoke it too).
      await session.call((c) => revokeLease(c, h.leaseId as string));
      if (typeof h.accessor === 'string') await session.call((c) => revokeAccessor(c, h.accessor as string));
    }
    // No handle: the issue never reached Vault, so there is nothing to end.
  } catch (err) {
    throw revokeError(err, 'revoking a lease');
  }
}
