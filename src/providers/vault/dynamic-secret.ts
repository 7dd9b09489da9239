import { upstreamFailed } from '../../errors.ts';
import type { Logger } from '../../logger.ts';
import type { IssueRequest, IssueResult } from '../types.ts';
import type { VaultRoleConfig } from './config.ts';
import { issueError, safeCause } from './errors.ts';
import { revokeAccessor } from './revoke.ts';
import type { VaultSession } from './session.ts';
import { displayName, issuedAt, shortLived, tokenMeta } from './token-role.ts';

interface SecretResponse {
  lease_id?: string;
  lease_duration?: number;
  renewable?: boolean;
  data?: Record<string, unknown> | null;
}

/**
 * Whether a secret's data are AWS STS credentials (Vault's AWS engine, `aws/sts/<role>` or `aws/creds/<role>`
 * of an `assumed_role`, `federation_token` or `session_token` role): they carry a session token (Vault before
 * 1.16 named it `security_token`), where an `iam_user` credential has null. STS cannot revoke a session, so
 * revoking its Vault lease ends nothing on AWS, and the session lives the engine role's `default_sts_ttl`
 * whatever TTL the broker granted: like a secret without a lease, it could never be cut off.
 */
function stsCredentials(data: Record<string, unknown> | null | undefined): boolean {
  const token = data?.session_token ?? data?.security_token;
  return typeof token === 'string' && token.length > 0;
}

/**
 * A dynamic secret (database/creds/<role>, aws/creds/<role>, ...), read with
 * a per-lease orphan "reader" token whose TTL is the effective TTL.
 *
 * Vault revokes every lease a token created when that token is revoked or
 * expires. Reading with the broker's own token would tie every issued
 * database user to the broker's login: a rotation or re-login would cut them
 * all off. The reader token ties the secret to this lease instead, and makes
 * Vault end it at the effective TTL even if the broker never calls back.
 * The lease keeps the Vault lease_id and the reader's accessor, never a token.
 */
export async function issueDynamicSecret(
  session: VaultSession,
  req: IssueRequest<VaultRoleConfig>,
  logger: Logger,
  issueTtl: number,
  now: () => number,
): Promise<IssueResult> {
  const path = req.role.path!;
  let reader: { client_token: string; accessor: string };
  try {
    const res = await session.call((c) =>
      c.write('auth/token/create-orphan', {
        // Short-lived until the lease is recorded: an orphaned reader (and the secret it read) dies within issueTtl.
        ...shortLived(req, issueTtl),
        display_name: displayName('jit-reader', req),
        meta: tokenMeta(req),
      }),
    );
    reader = res?.auth;
    if (!reader?.client_token || !reader.accessor)
      throw upstreamFailed('upstream_error', 'Vault answered the token request without a token.');
  } catch (err) {
    throw issueError(err, 'creating a reader token');
  }

  let secret: SecretResponse;
  try {
    secret = await session.clientFor(reader.client_token).read(path);
    if (!secret?.lease_id)
      throw upstreamFailed('upstream_not_leased', `Vault path ${path} is not a dynamic secret (no lease_id): it cannot be revoked.`);
    if (stsCredentials(secret.data))
      throw upstreamFailed(
        'upstream_not_leased',
        `Vault path ${path} answered with AWS STS credentials: revoking their Vault lease does not end them, and they live the engine's TTL, not the granted one. Use an aws role.`,
      );
  } catch (err) {
    // The reader token must not outlive a failed issue.
    await session
      .call((c) => revokeAccessor(c, reader.accessor))
      .catch((e: unknown) =>
        logger.warn(
          { accessor: reader.accessor, err: safeCause(e) },
          'vault: could not revoke the reader token of a failed issue; it expires with its TTL',
        ),
      );
    throw issueError(err, `reading ${path}`);
  }

  // The reader token's expiry revokes the lease, so the credential lives min(Vault's lease, our TTL).
  const seconds = Math.min(secret.lease_duration ?? req.ttlSeconds, req.ttlSeconds);
  const at = now();
  // Unless renewed: Vault's default policy lets any token renew any lease by id (`sys/leases/renew`), so an
  // agent holding a Vault token of its own can keep a renewable secret alive past `lease_duration`, up to
  // the reader token's end (at most the granted TTL from its creation, before `at`). A failing revocation
  // is retried until then, not given up at `lease_duration` (src/leases/credential-end.ts). Recorded for
  // every secret, the lease's own end when it cannot be renewed: a handle without it is the previous
  // release's, which credentialEndsBy takes as possibly renewed.
  const renewable = secret.renewable !== false && seconds < req.ttlSeconds;
  const expiresAt = at + seconds * 1000;
  return {
    credentials: { ...(secret.data ?? {}), lease_id: secret.lease_id, lease_duration: seconds },
    handle: {
      kind: 'secret',
      leaseId: secret.lease_id,
      accessor: reader.accessor,
      path,
      endsBy: renewable ? at + req.ttlSeconds * 1000 : expiresAt,
      ...issuedAt(session),
    },
    expiresAt,
  };
}
