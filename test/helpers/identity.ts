import { generateKeyPairSync, randomUUID, sign as cryptoSign, type KeyObject } from 'node:crypto';

/**
 * A tiny in-process SPIFFE/OIDC issuer that signs real tokens, so identity
 * tests exercise real signatures (fulcio-style), not mocks.
 */
export class TestIssuer {
  readonly kid = randomUUID();
  readonly privateKey: KeyObject;
  readonly publicJwk: Record<string, unknown>;
  readonly trustDomain: string;

  constructor(trustDomain = 'dev.local') {
    this.trustDomain = trustDomain;
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    this.privateKey = privateKey;
    this.publicJwk = { ...publicKey.export({ format: 'jwk' }), kid: this.kid, alg: 'ES256' };
  }

  /** A SPIFFE bundle: the JWT authority marked `use: jwt-svid`, plus an x509 entry that must be ignored. */
  bundle(): { keys: Record<string, unknown>[] } {
    return {
      keys: [
        { ...this.publicJwk, use: 'jwt-svid' },
        { kty: 'EC', crv: 'P-256', use: 'x509-svid', x: this.publicJwk.x, y: this.publicJwk.y },
      ],
    };
  }

  /** OIDC-style JWKS (`use: sig`). */
  jwks(): { keys: Record<string, unknown>[] } {
    return { keys: [{ ...this.publicJwk, use: 'sig' }] };
  }

  /** Signs a JWT with any header and claims (attacks included). */
  signRaw(header: Record<string, unknown>, claims: Record<string, unknown>, key: KeyObject = this.privateKey): string {
    const h = Buffer.from(JSON.stringify(header)).toString('base64url');
    const p = Buffer.from(JSON.stringify(claims)).toString('base64url');
    const sig = cryptoSign('sha256', Buffer.from(`${h}.${p}`), { key, dsaEncoding: 'ieee-p1363' });
    return `${h}.${p}.${sig.toString('base64url')}`;
  }

  /** A valid JWT-SVID for `path` (e.g. "/agent/support"), overridable. */
  svid(
    path: string,
    opts: { claims?: Record<string, unknown>; header?: Record<string, unknown>; ttl?: number; jti?: boolean; aud?: unknown } = {},
  ): string {
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      sub: `spiffe://${this.trustDomain}${path}`,
      aud: opts.aud ?? ['jit-broker'],
      exp: now + (opts.ttl ?? 300),
      iat: now,
      ...(opts.jti ? { jti: randomUUID() } : {}),
      ...opts.claims,
    };
    return this.signRaw({ alg: 'ES256', kid: this.kid, typ: 'JWT', ...opts.header }, claims);
  }
}
