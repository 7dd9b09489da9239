/**
 * `issuing`: written before the upstream call (intent), `active`, `revoking`,
 * `revoke_failed` (still being retried; also a given-up issuance whose revoke
 * failed), then one of the ended statuses:
 * `revoked`, `expired` (TTL ran out, or the credential expired before the
 * upstream confirmed a revocation), `failed` (issuance failed; nothing was
 * handed out and whatever the upstream made is revoked or died by itself).
 */
export type LeaseStatus = 'issuing' | 'active' | 'revoking' | 'revoked' | 'expired' | 'revoke_failed' | 'failed';
/**
 * The contract's five. A lease issued under an approval whose approver an admin quarantined since ends
 * `revoked_by_admin` (the quarantine is the admin's act; its task stays open, as after an admin's DELETE).
 */
export type RevokeReason = 'task_completed' | 'task_expired' | 'ttl_expired' | 'revoked_by_caller' | 'revoked_by_admin';

/** The part of a lease that never changes. */
export interface LeaseFixed {
  leaseId: string;
  taskId: string;
  role: string;
  provider: string;
  agent: string;
  scopes: string[];
  revocable: boolean;
  /** TTL granted (s). */
  ttlSeconds: number;
  /** Issued under this approval (a role with `approval: required`). */
  approvalId?: string;
  /** Who approved it: quarantining that identity revokes the lease (AdminService.endApproved). */
  approvedBy?: string;
}

/**
 * The broker's record of one issued credential. It holds the handle that
 * revoke needs (a Vault accessor or lease id, an STS session name) and never
 * the secret itself.
 */
export interface LeaseRecord extends LeaseFixed {
  status: LeaseStatus;
  /** Epoch ms on Redis's clock. */
  issuedAt: number;
  expiresAt: number;
  /** Provider-specific revoke handle: identifiers only, never secrets. */
  handle: Record<string, string | number | boolean>;
  reason?: RevokeReason;
  revokedAt?: number;
  /** Why the last revoke attempt failed, or why issuance failed (client-safe code). */
  lastError?: string;
  attempts?: number;
  /** While `issuing`: when the issuance counts as interrupted (Redis's clock). */
  orphanAt?: number;
  /** An end was asked for while the lease was still `issuing`. */
  endRequested?: RevokeReason;
  /**
   * When the issuance was given up (Redis's clock): no activation is accepted from then on, and the
   * worker revokes what it may have made, showing `revoke_failed` while that fails, then ends it `failed`.
   */
  givenUp?: number;
}
