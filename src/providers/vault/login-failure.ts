import { classify, isTlsFailure } from './errors.ts';

/** Why the broker's first Vault login failed, in words an operator can act on, and whether to keep trying. */
export interface LoginFailure {
  reason: 'tls' | 'redirect' | 'unreachable' | 'timeout' | 'sealed' | 'unavailable' | 'refused' | 'not_found' | 'other';
  /** Retried in the background (an outage) rather than refusing to start (a configuration to fix). */
  retry: boolean;
  /** The config key the operator has to look at. */
  key: string;
  text: string;
}

/**
 * Classifies a failed first login. Every failure that was not an outage used to say "Vault refused the
 * broker's credentials", so a certificate the broker does not trust, or an address answering a redirect,
 * sent operators to rotate a secret-id that was fine. Only a 400/403 is a refusal of the credentials.
 * `address` is addressOf's (no user-info).
 *
 * A TLS failure is retried, not a startup error: it stopped the whole broker, JWT and AWS roles and every
 * revocation with it, for what is often Vault's side to fix (a certificate expired, replaced by one from
 * another CA, a load balancer's default one during a deploy), and then works without a restart. What the
 * broker's own config can never make work (a malformed address, an unreadable NODE_EXTRA_CA_CERTS) still
 * fails startup: config.ts and ca-file.ts.
 */
export function firstLoginFailure(err: unknown, address: string): LoginFailure {
  const f = classify(err);
  const code = (err as { code?: unknown } | undefined)?.code;
  const status = f.status;
  const at = `Vault at ${address}`;
  if (isTlsFailure(err))
    return {
      reason: 'tls',
      retry: true,
      key: 'providers.vault.address',
      text: `no trusted TLS connection to ${at} (${f.message}): is its certificate signed by a CA the broker trusts (the system's, or NODE_EXTRA_CA_CERTS) and valid for this host name?`,
    };
  if (status !== undefined && status >= 300 && status < 400)
    return {
      reason: 'redirect',
      retry: false,
      key: 'providers.vault.address',
      text: `${at} answered a redirect (${status}); the broker follows none: set providers.vault.address to the active node or a load balancer`,
    };
  if (f.kind === 'sealed') return { reason: 'sealed', retry: true, key: 'providers.vault.address', text: `${at} is sealed` };
  if (f.kind === 'unavailable') {
    const reason = status !== undefined ? 'unavailable' : code === 'ETIMEDOUT' ? 'timeout' : 'unreachable';
    const what = { unavailable: `answered ${status}`, timeout: 'did not answer within requestTimeoutMs', unreachable: 'is unreachable' }[
      reason
    ];
    return { reason, retry: true, key: 'providers.vault.address', text: `${at} ${what}: ${f.message}` };
  }
  if (f.kind === 'denied' || f.kind === 'invalid')
    return { reason: 'refused', retry: false, key: 'providers.vault.auth', text: `Vault refused the broker's credentials: ${f.message}` };
  if (f.kind === 'not_found')
    return {
      reason: 'not_found',
      retry: false,
      key: 'providers.vault.address',
      text: `${at} answered 404 at login: is the address (and any path prefix) Vault's, and the auth mount right? (${f.message})`,
    };
  return { reason: 'other', retry: false, key: 'providers.vault.auth', text: `the broker's first login to ${at} failed: ${f.message}` };
}
