export type LeaseStatus = 'issuing' | 'active' | 'revoking' | 'revoked' | 'expired' | 'revoke_failed' | 'failed';
export type RevokeReason = 'task_completed' | 'task_expired' | 'ttl_expired' | 'revoked_by_caller' | 'revoked_by_admin';

/**
 * The broker's record of one issued credential. It holds the handle that
 * revoke needs (a Vault accessor or lease id, an STS session name) and never
 * the secret itself.
 */
export interface LeaseRecord {
  leaseId: string;
  taskId: string;
  role: string;
  provider: string;
  agent: string;
  scopes: string[];
  status: LeaseStatus;
  issuedAt: number;
  expiresAt: number;
  revocable: boolean;
  /** Provider-specific revoke handle: identifiers only, never secrets. */
  handle: Record<string, string | number | boolean>;
  reason?: RevokeReason;
  revokedAt?: number;
  /** Why the last revoke attempt failed (client-safe code), while status is revoke_failed. */
  lastError?: string;
  attempts?: number;
}
