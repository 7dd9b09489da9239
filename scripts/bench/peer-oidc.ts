/**
 * The peer for the issuance figures: node-oidc-provider (the reference
 * Node.js OAuth 2.0 / OIDC server, devDependency `oidc-provider`) issuing
 * ES256 JWT access tokens through `client_credentials`, with a resource
 * indicator naming the audience (RFC 8707), like the broker's JWT role.
 *
 * `startPeerOidc()` runs it as its own process (this file with `--serve`),
 * like the bench broker, so the load generator never shares its event loop.
 * The client authenticates with client_secret_basic (one static header);
 * the broker's caller presents a JWT-SVID whose verification the broker caches.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';
import { fileURLToPath } from 'node:url';

export const PEER_CLIENT = { id: 'bench-client', secret: 'bench-secret-0123456789abcdef' };
export const PEER_RESOURCE = 'https://tickets.internal';

/** The token request the load sends (same shape on every request, like the broker's). */
export function peerTokenRequest(): { path: string; headers: Record<string, string>; body: string } {
  const basic = Buffer.from(`${PEER_CLIENT.id}:${PEER_CLIENT.secret}`).toString('base64');
  return {
    path: '/token',
    headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'tickets:read', resource: PEER_RESOURCE }).toString(),
  };
}

/** Starts the peer in its own process and waits until it answers its discovery document. */
export async function startPeerOidc(port: number): Promise<{ child: ChildProcess; url: string; stop(): Promise<void> }> {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--serve', String(port)], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, NODE_ENV: 'production' },
  });
  // Its warning about the in-memory adapter is expected here (nothing it stores outlives the run).
  child.stderr!.on('data', (d: Buffer) => {
    const text = d.toString().replace(/^oidc-provider WARNING: a quick start development-only in-memory adapter.*\n?/m, '');
    if (text.trim()) process.stderr.write(text);
  });
  const stop = async () => {
    if (child.exitCode !== null) return;
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  };
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(`${url}/.well-known/openid-configuration`)).ok) break;
    } catch {
      /* starting */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  try {
    const { body, headers, path } = peerTokenRequest();
    const probe = await fetch(`${url}${path}`, { method: 'POST', headers, body });
    const json = (await probe.json()) as { access_token?: string };
    if (probe.status !== 200 || !json.access_token?.startsWith('ey'))
      throw new Error(`peer oidc-provider: token request answered ${probe.status} ${JSON.stringify(json)}`);
    const header = JSON.parse(Buffer.from(json.access_token.split('.')[0]!, 'base64url').toString()) as { alg?: string };
    if (header.alg !== 'ES256') throw new Error(`peer oidc-provider: expected an ES256 JWT, got ${header.alg}`);
  } catch (err) {
    await stop();
    throw err;
  }
  return { child, url, stop };
}

async function serve(port: number): Promise<void> {
  const { default: Provider } = await import('oidc-provider');
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'peer-es256', alg: 'ES256', use: 'sig' };
  const provider = new Provider(`http://127.0.0.1:${port}`, {
    clients: [
      {
        client_id: PEER_CLIENT.id,
        client_secret: PEER_CLIENT.secret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        id_token_signed_response_alg: 'ES256', // its only key is ES256
      },
    ],
    jwks: { keys: [jwk as never] },
    scopes: ['tickets:read'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => PEER_RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'tickets:read',
          audience: PEER_RESOURCE,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        }),
      },
    },
  });
  createServer(provider.callback()).listen(port, '127.0.0.1');
  process.on('SIGTERM', () => process.exit(0));
}

if (process.argv[2] === '--serve') await serve(Number(process.argv[3]));
