import { BrokerError, RetryableUpstreamError, upstreamFailed } from '../../errors.ts';

/** What kind of failure a Vault call ended in, from the HTTP status and message. */
export type VaultFailureKind = 'sealed' | 'unavailable' | 'denied' | 'not_found' | 'invalid' | 'unknown';

export interface VaultFailure {
  kind: VaultFailureKind;
  status: number | undefined;
  /** Vault's own error text (never contains a token; safe to log). */
  message: string;
}

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'ECONNABORTED',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ERR_NETWORK',
  'ERR_SOCKET_CONNECTION_TIMEOUT',
]);

/** Node's and OpenSSL's codes for a TLS connection that could not be made or trusted. */
const TLS_CODE = /^(ERR_TLS_|ERR_SSL_|EPROTO$|CERT_|UNABLE_TO_|DEPTH_ZERO_|SELF_SIGNED_|HOSTNAME_MISMATCH|ERR_OSSL_)/;

/** A connection to Vault that TLS refused: an untrusted or expired certificate, one for another name, a failed handshake. */
export function isTlsFailure(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && TLS_CODE.test(code);
}

/**
 * Classifies an error thrown by node-vault. Its `ApiResponseError` carries
 * `response.statusCode` and `response.body.errors`; connection failures are
 * axios errors with a `code` and no response.
 */
export function classify(err: unknown): VaultFailure {
  const e = err as { response?: { statusCode?: number; body?: { errors?: unknown } }; code?: string; message?: string } | undefined;
  const status = e?.response?.statusCode;
  const errors = Array.isArray(e?.response?.body?.errors) ? (e.response.body.errors as unknown[]).map(String) : [];
  const message = errors.join('; ') || e?.message || String(err);
  if (status === undefined) {
    return {
      // A TLS failure is Vault not reachable over a connection the broker can trust: like a refused connection it
      // may pass (Vault's certificate replaced, a load balancer's fixed) and is retried, never a refusal of the request.
      kind: (e?.code && NETWORK_CODES.has(e.code)) || isTlsFailure(err) ? 'unavailable' : 'unknown',
      status,
      message: e?.code ? `${e.code}: ${message}` : message,
    };
  }
  if (status === 503 && /sealed/i.test(message)) return { kind: 'sealed', status, message };
  if (status === 429 || status === 412 || status >= 500) return { kind: 'unavailable', status, message };
  if (status === 403) return { kind: 'denied', status, message };
  if (status === 404) return { kind: 'not_found', status, message };
  if (status === 400) return { kind: 'invalid', status, message };
  return { kind: 'unknown', status, message };
}

/** True for 403s: an ACL denial, or a token Vault no longer knows. */
export const isForbidden = (err: unknown): boolean => classify(err).kind === 'denied';

/**
 * A loggable stand-in for a node-vault error. Axios errors carry the request
 * config, headers included (X-Vault-Token), so the original never travels as
 * a `cause` that a logger might serialise.
 */
export function safeCause(err: unknown): Error {
  if (err instanceof BrokerError || err instanceof RetryableUpstreamError) return err;
  const f = classify(err);
  return new Error(`vault ${f.status ?? 'request'} failed: ${f.message}`);
}

/** Maps a failed Vault call during issuance to the broker's client-safe error. */
export function issueError(err: unknown, action: string): BrokerError {
  if (err instanceof BrokerError) return err;
  const f = classify(err);
  const cause = safeCause(err);
  switch (f.kind) {
    case 'sealed':
      return upstreamFailed('upstream_sealed', 'Vault is sealed; try again later.', { cause });
    case 'unavailable':
      return upstreamFailed('upstream_unavailable', `Vault is unavailable (${action}).`, { cause });
    case 'denied':
      return upstreamFailed('upstream_denied', `Vault denied the broker's request (${action}).`, { cause });
    default:
      return upstreamFailed('upstream_error', `Vault rejected the broker's request (${action}).`, { cause });
  }
}

/**
 * Maps a failed Vault call during revocation: failures that may pass
 * (sealed, throttled, 5xx, unreachable) are RetryableUpstreamError; the rest
 * keep their issue-time code. The worker retries both until the credential
 * expires (a 403 may be a policy about to be fixed).
 */
export function revokeError(err: unknown, action: string): Error {
  if (err instanceof BrokerError || err instanceof RetryableUpstreamError) return err;
  const f = classify(err);
  const cause = safeCause(err);
  if (f.kind === 'sealed') return new RetryableUpstreamError('upstream_sealed', `Vault is sealed (${action})`, { cause });
  if (f.kind === 'unavailable') return new RetryableUpstreamError('upstream_unavailable', `Vault is unavailable (${action})`, { cause });
  return issueError(err, action);
}

/**
 * Vault's answers that mean "already gone": an unknown accessor or lease
 * (400), or nothing at that path (404). Rotation treats them as success
 * (a secret-id, or an AppRole role, that no longer exists).
 */
export function isAlreadyGone(err: unknown): boolean {
  const f = classify(err);
  return f.kind === 'not_found' || (f.kind === 'invalid' && /invalid (accessor|lease)|lease not found|not found/i.test(f.message));
}

/**
 * Whether a failed revocation call (`auth/token/revoke-accessor`, `sys/leases/revoke`) is Vault saying
 * the credential no longer exists: a 400 naming the accessor or lease unknown. Never a 404: Vault
 * answers an unknown lease 204 and an unknown accessor 400, so a 404 there comes from whatever stands
 * between the broker and Vault (an ingress or load balancer without a route for a moment, a proxy's
 * path prefix gone) and confirms nothing; taken for "gone", it ended leases `revoked` while their
 * credentials went on working (test/blackbox/vault-revoke-404.test.ts).
 */
export function isRevokedAlready(err: unknown): boolean {
  const f = classify(err);
  // Only the words Vault uses for an unknown accessor or lease: a 400 from a secrets engine's backend that merely
  // mentions "not found" (a database plugin failing to drop a user) confirms nothing and is retried.
  return f.kind === 'invalid' && /invalid (accessor|lease)|lease not found/i.test(f.message);
}
