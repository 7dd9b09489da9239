import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ConsoleOidcClient } from '../../src/console/oidc.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { CLIENT_ID } from './stack.ts';

/**
 * The console's code exchange judges the ID token's times (openid-client's
 * `exp` and `nbf` checks) on the broker's clock, Redis's, like every other
 * time check: an instance whose own clock is two minutes slow still signs
 * people in. The provider here is just enough of one for discovery and the
 * token endpoint; the ID token it hands out is valid from the provider's now.
 */
const SLOW_MS = 120_000;
const issuer = new TestIssuer();
let server: Server;
let IDP: string;
let nonce = '';

beforeAll(async () => {
  server = createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    if (req.url === '/.well-known/openid-configuration') {
      res.end(
        JSON.stringify({
          issuer: IDP,
          authorization_endpoint: `${IDP}/auth`,
          token_endpoint: `${IDP}/token`,
          jwks_uri: `${IDP}/jwks`,
          response_types_supported: ['code'],
          subject_types_supported: ['public'],
          id_token_signing_alg_values_supported: ['ES256'],
          code_challenge_methods_supported: ['S256'],
        }),
      );
    } else if (req.url === '/token' && req.method === 'POST') {
      req.resume();
      // The provider's clock is right; this process is the one that is slow.
      const now = Math.floor((Date.now() + SLOW_MS) / 1000);
      const idToken = issuer.signRaw(
        { alg: 'ES256', kid: issuer.kid, typ: 'JWT' },
        { iss: IDP, sub: 'alice', aud: CLIENT_ID, iat: now, nbf: now, exp: now + 600, nonce },
      );
      req.on('end', () => res.end(JSON.stringify({ access_token: 'at', token_type: 'Bearer', expires_in: 600, id_token: idToken })));
    } else {
      res.statusCode = 404;
      res.end('{}');
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  IDP = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise((r) => server.close(r)));

async function signIn(now?: () => number): Promise<string> {
  const cfg = { issuer: IDP, clientId: CLIENT_ID, scopes: ['openid'], sessionMaxAgeSeconds: 3600, loginTimeoutSeconds: 600 };
  const oidc = new ConsoleOidcClient(cfg, 'http://127.0.0.1:8080', now ? { now } : {});
  const start = await oidc.start();
  nonce = start.nonce;
  const callback = new URL(`http://127.0.0.1:8080/console/callback?code=c0de&state=${start.state}`);
  return oidc.finish(callback, start);
}

test("an instance two minutes slow signs people in when it judges time on the broker's clock", async () => {
  await expect(signIn(() => Date.now() + SLOW_MS)).resolves.toMatch(/^ey/);
});

test('on its own clock the same ID token is refused (not valid yet): what the broker clock fixes', async () => {
  await expect(signIn()).rejects.toMatchObject({ code: 'OAUTH_JWT_TIMESTAMP_CHECK_FAILED' });
});
