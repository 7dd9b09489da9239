import nodeVault from 'node-vault';
import type { VaultSettings } from './config.ts';
import { boundedRequest } from './transport.ts';

/** A node-vault client bound to one token (or none, for login and health). */
export type VaultClient = nodeVault.client;

/**
 * One client per identity. node-vault's `tokenSource` commands (tokenCreate,
 * approleLogin, ...) overwrite the client's token with the one they receive,
 * so the provider never calls them: it uses `read`/`write` on explicit paths
 * and gives every token its own client.
 */
export function makeClient(
  settings: Pick<VaultSettings, 'address' | 'namespace' | 'requestTimeoutMs'> & Partial<Pick<VaultSettings, 'maxAnswerBytes'>>,
  token: string,
): VaultClient {
  const client = nodeVault({
    endpoint: settings.address,
    apiVersion: 'v1',
    requestOptions: { timeout: settings.requestTimeoutMs },
    // Our HTTP layer, not axios's: a deadline for the whole answer, a cap on its size, no redirects (transport.ts).
    'request-promise': { defaults: (d: { strictSSL?: boolean }) => boundedRequest(d, settings.maxAnswerBytes) },
    ...(settings.namespace ? { namespace: settings.namespace } : {}),
  });
  // node-vault falls back to VAULT_TOKEN, VAULT_NAMESPACE and VAULT_PREFIX from
  // the environment; the broker's config must be the only source.
  const c = client as VaultClient & { namespace?: string; pathPrefix: string };
  c.token = token;
  c.namespace = settings.namespace;
  c.pathPrefix = '';
  return client;
}

/** A namespace as the broker records and compares it: without leading or trailing slashes; '' is the root namespace. */
export function namespaceOf(ns: string | undefined): string {
  return (ns ?? '').replace(/^\/+|\/+$/g, '');
}

/**
 * A Vault address as the broker records and compares it: scheme, host (lowercased, default port dropped)
 * and path without a trailing slash. Never user-info nor a query: what a lease's handle keeps is no secret.
 */
export function addressOf(address: string): string {
  const u = new URL(address);
  return `${u.protocol}//${u.host}${u.pathname.replace(/\/+$/, '')}`;
}
