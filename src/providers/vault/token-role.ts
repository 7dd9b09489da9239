import { upstreamFailed } from '../../errors.ts';
import type { IssueRequest, IssueResult } from '../types.ts';
import type { VaultRoleConfig } from './config.ts';
import { issueError } from './errors.ts';
import type { VaultSession } from './session.ts';

/** Vault display names: the broker's prefix, the role and the lease, within Vault's character set. */
export function displayName(prefix: string, req: IssueRequest<VaultRoleConfig>): string {
  return `${prefix}-${req.roleName}-${req.leaseId}`.replace(/[^A-Za-z0-9-]+/g, '-').slice(0, 96);
}

/**
 * Where a credential was made, for its handle: the namespace ('' = root) and the address. Revocation goes
 * to that namespace whatever the configured one is by then, and takes an "unknown accessor/lease" for
 * "already revoked" only from the address it was made at (src/providers/vault/revoke.ts).
 */
export const issuedAt = (session: VaultSession): { namespace: string; address: string } => ({
  namespace: session.namespace,
  address: session.address,
});

/** Metadata Vault stores on the token: who it was for, so an operator can trace it back. */
export const tokenMeta = (req: IssueRequest<VaultRoleConfig>): Record<string, string> => ({
  task_id: req.task.taskId,
  agent: req.agent,
  lease_id: req.leaseId,
  role: req.roleName,
});

/**
 * The TTL fields of a token created short-lived: it lives `issueTtl` unless
 * the broker extends it once the lease is recorded, and never past the
 * granted TTL (its explicit max, counted from creation).
 */
export function shortLived(req: IssueRequest<VaultRoleConfig>, issueTtl: number) {
  return { ttl: `${Math.min(issueTtl, req.ttlSeconds)}s`, explicit_max_ttl: `${req.ttlSeconds}s`, renewable: true };
}

/**
 * A token role: an orphan token with exactly the requested policies (scopes
 * are literal: the core has checked them against the grant and refused an
 * empty list), plus Vault's `default` policy only when the role sets
 * `token.defaultPolicy`. Orphan, so it does not die with the broker's own
 * token. Created short-lived (see `shortLived`); the lease keeps only the accessor.
 */
export async function issueTokenRole(
  session: VaultSession,
  req: IssueRequest<VaultRoleConfig>,
  issueTtl: number,
  now: () => number,
): Promise<IssueResult> {
  const spec = req.role.token!;
  const policies = [...new Set(req.scopes)];
  const body = {
    policies,
    ...shortLived(req, issueTtl),
    no_default_policy: !spec.defaultPolicy,
    display_name: displayName('jit', req),
    meta: tokenMeta(req),
    ...(spec.numUses ? { num_uses: spec.numUses } : {}),
  };
  let res: { auth?: { client_token?: string; accessor?: string; policies?: string[]; lease_duration?: number } };
  try {
    res = await session.call((c) => c.write('auth/token/create-orphan', body));
  } catch (err) {
    throw issueError(err, 'creating a token');
  }
  const auth = res?.auth;
  if (!auth?.client_token || !auth.accessor) throw upstreamFailed('upstream_error', 'Vault answered the token request without a token.');
  return {
    credentials: { token: auth.client_token, accessor: auth.accessor, policies: auth.policies ?? policies, expires_in: req.ttlSeconds },
    handle: { kind: 'token', accessor: auth.accessor, ...issuedAt(session) },
    expiresAt: now() + req.ttlSeconds * 1000,
  };
}
