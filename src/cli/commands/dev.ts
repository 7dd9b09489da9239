import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { UsageError } from '../args.ts';
import type { Command } from '../command.ts';
import { packageRoot } from '../package.ts';

/** The trust domain `npm start` generates (scripts/dev-setup.ts). */
export const DEV_TRUST_DOMAIN = 'dev.local';
const SIGNER_FILE = 'dev-signer.private.jwk';
const SEGMENT = /^[A-Za-z0-9._-]+$/;

/**
 * `--sub`: a SPIFFE ID in the dev trust domain, or just its path
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

/** Where the dev signing key is: JIT_DEV_DIR, else ./dev, else the checkout's dev/. */
function findSignerFile(env: NodeJS.ProcessEnv, cwd: string): { file: string | undefined; looked: string[] } {
  const dirs = env.JIT_DEV_DIR
    ? [resolve(cwd, env.JIT_DEV_DIR)]
    : [resolve(cwd, 'dev'), ...(packageRoot() ? [join(packageRoot()!, 'dev')] : [])];
  const looked = [...new Set(dirs)].map((d) => join(d, SIGNER_FILE));
  return { file: looked.find((f) => existsSync(f)), looked };
}

export const devToken: Command = {
  path: ['dev', 'token'],
  usage: 'jit dev token --sub <identity> [--ttl 1h] [--aud jit-broker]',
  summary: 'a workload identity (JWT-SVID) for the dev trust domain that `npm start` generates (dev only)',
  options: { sub: { type: 'string' }, ttl: { type: 'string' }, aud: { type: 'string' } },
  async run({ flags, io, out, json }) {
    const sub = devSpiffeId(flags.required('sub'));
    const ttl = flags.seconds('ttl') ?? 3600;
    const aud = flags.str('aud') ?? 'jit-broker';
    const { file, looked } = findSignerFile(io.env, io.cwd);
    if (!file)
      throw new UsageError(
        `no dev trust domain here (looked for ${looked.join(', ')}). \`jit dev token\` only works with the dev trust domain ` +
          'that `npm start` generates in a checkout: run `npm start` there once, or set JIT_DEV_DIR to its dev/ directory.',
      );
    let jwk: { kid?: string; alg?: string; d?: string };
    try {
      jwk = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      throw new UsageError(`cannot read ${file}: ${(err as Error).message}`);
    }
    if (!jwk.d || !jwk.kid) throw new UsageError(`${file} is not a private JWK with a kid`);
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
    if (json) out.json({ token, sub, aud, expiresAt: new Date((now + ttl) * 1000).toISOString() });
    else out.line(token);
    return 0;
  },
};
