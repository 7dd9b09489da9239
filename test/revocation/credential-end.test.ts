import { expect, test } from '@jest/globals';
import { credentialEndsBy } from '../../src/leases/credential-end.ts';

/**
 * Until when a failing revocation is retried (src/leases/credential-end.ts). A Vault secret handle without
 * `endsBy` is the previous release's (this one names it for every secret): it may have been renewed by the
 * agent up to its reader token's end, which is before its recorded end plus the granted TTL
 * (test/ops/upgrade-upstream.test.ts runs that release against this one).
 */
const base = { expiresAt: 1_000_000, ttlSeconds: 600 };

test('a handle naming its end: the later of it and the lease expiry', () => {
  expect(credentialEndsBy({ ...base, provider: 'vault', handle: { kind: 'secret', endsBy: 1_500_000 } })).toBe(1_500_000);
  expect(credentialEndsBy({ ...base, provider: 'vault', handle: { kind: 'secret', endsBy: 900_000 } })).toBe(1_000_000);
});

test('a Vault secret of the previous release (no endsBy): retried until its recorded end plus the granted TTL', () => {
  expect(credentialEndsBy({ ...base, provider: 'vault', handle: { kind: 'secret', leaseId: 'database/creds/x/1' } })).toBe(1_600_000);
});

test('anything else without endsBy: the lease expiry', () => {
  expect(credentialEndsBy({ ...base, provider: 'vault', handle: { kind: 'token', accessor: 'a' } })).toBe(1_000_000);
  expect(credentialEndsBy({ ...base, provider: 'vault', handle: {} })).toBe(1_000_000);
  expect(credentialEndsBy({ ...base, provider: 'aws', handle: { kind: 'secret' } })).toBe(1_000_000);
});
