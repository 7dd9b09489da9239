import { forbidden, upstreamFailed } from '../../errors.ts';
import type { IssueRequest, IssueResult } from '../types.ts';
import type { VaultRoleConfig } from './config.ts';
import { issueError } from './errors.ts';
import type { VaultSession } from './session.ts';

/** Vault display names: the broker's prefix, the role and the lease, within Vault's character set. */
export function displayName(prefix: string, req: IssueRequest<VaultRoleConfig>): string {
  return `${prefix}-${req.roleName}-${req.leaseId}`.replace(/[^A-Za-z0-9-]+/g, '-').slice(0, 96);
}

/** Metadata Vault stores on the token: who it was for, so an operator can trace it back. */
export const tokenMeta = (req: IssueRequest<VaultRoleConfig>): Record<string, string> => ({
  task_id: req.task.taskId,
  agent: req.agent,
  lease_id: req.leaseId,
  role: req.roleName,
});

/**
 * A token role: an orphan token with the role's policies, narrowed to the
 * request's scopes. Orphan, so it does not die with the broker's own token
 * (which is renewed, replaced and rotated independently). TTL and explicit
 * max TTL are both the effective TTL and it is not renewable: Vault itself
 * ends it on time even if the broker never calls back. The lease keeps only
 * the accessor.
 */
export async function issueTokenRole(session: VaultSession, req: IssueRequest<VaultRoleConfig>): Promise<IssueResult> {
  const spec = req.role.token!;
  const policies = req.scopes.length ? [...new Set(req.scopes)] : spec.policies;
  const outside = policies.filter((p) => !spec.policies.includes(p));
  if (outside.length) {
    throw forbidden('scope_not_allowed', `Scopes that are not policies of role ${req.roleName}: ${outside.join(', ')}.`);
  }
  const body = {
    policies,
    ttl: `${req.ttlSeconds}s`,
    explicit_max_ttl: `${req.ttlSeconds}s`,
    renewable: false,
    no_default_policy: spec.noDefaultPolicy,
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
  const ttl = auth.lease_duration ?? req.ttlSeconds;
  return {
    credentials: { token: auth.client_token, accessor: auth.accessor, policies: auth.policies ?? policies, expires_in: ttl },
    handle: { kind: 'token', accessor: auth.accessor },
    expiresAt: Date.now() + ttl * 1000,
  };
}
