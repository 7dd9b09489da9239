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
export function credentialEndsBy(lease: Pick<LeaseRecord, 'expiresAt' | 'handle' | 'provider' | 'ttlSeconds'>): number {
  const endsBy = lease.handle.endsBy;
  if (typeof endsBy === 'number' && Number.isFinite(endsBy)) return Math.max(lease.expiresAt, endsBy);
  // A Vault secret the previous release recorded (this release names `endsBy` for every secret): it wrote
  // `lease_duration` as the end, renewable or not. Its reader token was made before the secret was read, so
  // before `expiresAt`, and lives at most the granted TTL: the secret ends by `expiresAt` plus that TTL.
  // Without this, a revocation failing past `expiresAt` was given up while an agent-renewed secret worked on.
  if (lease.provider === 'vault' && lease.handle.kind === 'secret') return lease.expiresAt + lease.ttlSeconds * 1000;
  return lease.expiresAt;
}
