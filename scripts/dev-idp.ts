/**
 * A development sign-in provider for the console: node-oidc-provider with its
 * built-in login form, where any login name with any password signs in as
 * that name (`<issuer>#<name>`). It is never part of the broker process: the
 * dev launcher (scripts/dev-start.ts) and the console tests start it, always
 * on 127.0.0.1, and it is a devDependency the broker never imports, so no
 * production config can switch it on; a config can only name an issuer URL.
 *
 * `node scripts/dev-idp.ts` runs it alone with the dev keys from dev/.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import Provider from 'oidc-provider';

export interface DevIdpOptions {
  /** 0 picks a free port. Always on 127.0.0.1. */
  port: number;
  /** The private signing keys (JWKs with `d`); the broker trusts their public halves. */
  privateJwks: { keys: Record<string, unknown>[] };
  clients: { clientId: string; redirectUris: string[]; clientSecret?: string }[];
  /** ID token lifetime (seconds); the console session ends with it. */
  idTokenTtlSeconds?: number;
}

export interface DevIdp {
  issuer: string;
  close(): Promise<void>;
}

/** Starts the provider on 127.0.0.1 and resolves once it listens. */
export async function startDevIdp(opts: DevIdpOptions): Promise<DevIdp> {
  const server: Server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, '127.0.0.1', () => resolve());
  });
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const provider = new Provider(issuer, {
    clients: opts.clients.map((c) => ({
      client_id: c.clientId,
      redirect_uris: c.redirectUris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      ...(c.clientSecret ? { client_secret: c.clientSecret } : { token_endpoint_auth_method: 'none' }),
    })),
    jwks: opts.privateJwks,
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    findAccount: (_ctx: unknown, id: string) => ({ accountId: id, claims: () => ({ sub: id }) }),
    features: { devInteractions: { enabled: true } },
    pkce: { required: () => true },
    ttl: { IdToken: opts.idTokenTtlSeconds ?? 3600, Session: 8 * 3600, Interaction: 600, Grant: 8 * 3600, AccessToken: 600 },
    // Every client here is the console itself: skip the consent screen, keep the login form.
    async loadExistingGrant(ctx: any) {
      const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope('openid');
      await grant.save();
      return grant;
    },
  });
  server.on('request', provider.callback());
  return {
    issuer,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** The dev files scripts/dev-setup.ts writes: the provider's private key set. */
export const DEV_IDP_KEYS = 'dev/console-idp.private.jwks.json';
export const DEV_IDP_PORT = 8081;
export const DEV_CONSOLE_CLIENT = 'jit-console';

if (import.meta.main) {
  // DEV_IDP_CONFIG names a JSON file of DevIdpOptions (the console tests start it so); else the npm start defaults.
  const opts: DevIdpOptions = process.env.DEV_IDP_CONFIG
    ? JSON.parse(readFileSync(process.env.DEV_IDP_CONFIG, 'utf8'))
    : {
        port: Number(process.env.DEV_IDP_PORT ?? DEV_IDP_PORT),
        privateJwks: JSON.parse(readFileSync(DEV_IDP_KEYS, 'utf8')),
        clients: [
          { clientId: DEV_CONSOLE_CLIENT, redirectUris: [`${process.env.BROKER_PUBLIC_URL ?? 'http://127.0.0.1:8080'}/console/callback`] },
        ],
      };
  const idp = await startDevIdp(opts);
  process.stdout.write(`${JSON.stringify({ issuer: idp.issuer })}\n`);
  console.error(`dev-idp: development sign-in provider on ${idp.issuer} (any login, any password; loopback only)`);
  const stop = () => void idp.close().then(() => process.exit(0));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}
