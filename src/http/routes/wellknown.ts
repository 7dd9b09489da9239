import { Router } from 'express';
import type { Deps } from '../../deps.ts';

/** JWKS and RFC 8414 metadata. */
export function wellKnownRoutes(deps: Deps): Router {
  const r = Router();
  const base = deps.config.server.publicUrl;
  r.get('/.well-known/jwks.json', (_req, res) => {
    // Short cache: during a rotation the next key appears here before it signs (publishLeadSeconds).
    res.setHeader('Cache-Control', 'public, max-age=60');
    res.json(deps.signing.jwks());
  });
  r.get('/.well-known/oauth-authorization-server', (_req, res) => {
    res.json({
      issuer: base,
      token_endpoint: `${base}/v1/token`,
      introspection_endpoint: `${base}/v1/introspect`,
      jwks_uri: `${base}/.well-known/jwks.json`,
      grant_types_supported: ['urn:ietf:params:oauth:grant-type:token-exchange'],
      response_types_supported: [],
      // The subject token is the client's proof; no client assertion is taken, so no
      // token_endpoint_auth_signing_alg_values_supported (that is for private_key_jwt / client_secret_jwt).
      token_endpoint_auth_methods_supported: ['none'],
      introspection_endpoint_auth_methods_supported: ['bearer'],
      scopes_supported: [...new Set(Object.values(deps.config.roles).flatMap((r) => (r.provider === 'jwt' ? (r.scopes ?? []) : [])))],
    });
  });
  return r;
}
