import type { LeaseRecord } from './types.ts';

/**
 * The latest the lease's credential can still work upstream (epoch ms, Redis's clock): what a failing
 * revocation is retried until (contract section 5: nothing is given up before the credential's own expiry).
 *
 * Usually the lease's `expiresAt`. A handle may name a later end in `endsBy`, when the upstream lets the
 * credential be extended past what the lease records without the broker: a renewable Vault secret lease,
 * which any token holding Vault's `default` policy may renew (`sys/leases/renew`) up to the end of the
 * reader token that created it (src/providers/vault/dynamic-secret.ts).
 */
export function credentialEndsBy(lease: Pick<LeaseRecord, 'expiresAt' | 'handle'>): number {
  const endsBy = lease.handle.endsBy;
  return typeof endsBy === 'number' && Number.isFinite(endsBy) ? Math.max(lease.expiresAt, endsBy) : lease.expiresAt;
}
