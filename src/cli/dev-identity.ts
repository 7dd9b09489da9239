import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { UsageError } from './args.ts';
import { packageRoot } from './package.ts';

/** The trust domain `npm start` generates (scripts/dev-setup.ts). */
export const DEV_TRUST_DOMAIN = 'dev.local';
const SIGNER_FILE = 'dev-signer.private.jwk';
const SEGMENT = /^[A-Za-z0-9._-]+$/;

/**
 * A SPIFFE ID in the dev trust domain, given as one or as just its path
 * (`/agent/support` and `agent/support` both mean spiffe://dev.local/agent/support).
 */
export function devSpiffeId(sub: string): string {
  let path = sub;
  if (/^spiffe:\/\//i.test(sub)) {
    const m = /^spiffe:\/\/([^/]+)(\/.*)?$/.exec(sub);
    if (!m || m[1] !== DEV_TRUST_DOMAIN)
      throw new UsageError(`--sub ${sub}: the dev signer only signs for spiffe://${DEV_TRUST_DOMAIN}/...`);
    path = m[2] ?? '';
  }
  if (!path.startsWith('/')) path = `/${path}`;
  const segments = path.slice(1).split('/');
  if (path === '/' || segments.some((s) => !SEGMENT.test(s) || s === '.' || s === '..'))
    throw new UsageError(`--sub ${sub}: the path must be non-empty segments of [A-Za-z0-9._-] (e.g. /agent/support)`);
  return `spiffe://${DEV_TRUST_DOMAIN}${path}`;
}

/** The dev signing key's file: in JIT_DEV_DIR, else ./dev, else the checkout's dev/. */
export function findDevSigner(env: NodeJS.ProcessEnv, cwd: string): string {
  const root = packageRoot();
  const dirs = env.JIT_DEV_DIR ? [resolve(cwd, env.JIT_DEV_DIR)] : [resolve(cwd, 'dev'), ...(root ? [join(root, 'dev')] : [])];
  const looked = [...new Set(dirs)].map((d) => join(d, SIGNER_FILE));
  const file = looked.find((f) => existsSync(f));
  if (!file)
    throw new UsageError(
      `no dev trust domain here (looked for ${looked.join(', ')}). \`jit dev token\` only works with the dev trust domain ` +
        'that `npm start` generates in a checkout: run `npm start` there once, or set JIT_DEV_DIR to its dev/ directory.',
    );
  return file;
}

/**
 * A JWT-SVID for `sub` in the dev trust domain, signed with the key in
 * `signerFile` (a private JWK with `kid`, as scripts/dev-setup.ts writes it).
 * No `jti`: nothing needs one (only a `singleUse` trust entry would, and the dev one is not).
 */
export async function signDevIdentity(opts: { sub: string; signerFile: string; ttlSeconds?: number; audience?: string }): Promise<{
  token: string;
  sub: string;
  aud: string;
  expiresAt: string;
}> {
  const sub = devSpiffeId(opts.sub);
  const ttl = opts.ttlSeconds ?? 3600;
  const aud = opts.audience ?? 'jit-broker';
  let jwk: { kid?: string; alg?: string; d?: string };
  try {
    jwk = JSON.parse(readFileSync(opts.signerFile, 'utf8'));
  } catch (err) {
    throw new UsageError(`cannot read ${opts.signerFile}: ${(err as Error).message}`);
  }
  if (!jwk.d || !jwk.kid) throw new UsageError(`${opts.signerFile} is not a private JWK with a kid`);
  const alg = jwk.alg ?? 'ES256';
  // Loaded here, not at start-up: every other command (credential_process among them) starts faster without it.
  const { importJWK, SignJWT } = await import('jose');
  const key = await importJWK(jwk, alg);
  const now = Math.floor(Date.now() / 1000);
  const token = await new SignJWT({})
    .setProtectedHeader({ alg, kid: jwk.kid, typ: 'JWT' })
    .setSubject(sub)
    .setAudience([aud])
    .setIssuedAt(now)
    .setExpirationTime(now + ttl)
    .sign(key);
  return { token, sub, aud, expiresAt: new Date((now + ttl) * 1000).toISOString() };
}
