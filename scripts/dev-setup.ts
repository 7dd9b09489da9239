/**
 * Local set-up for `npm start` and `npm run demo`, idempotent:
 * - a Redis on 127.0.0.1 (started if nothing answers),
 * - dev/kek: the key-encryption key for secrets kept in Redis,
 * - dev/dev-trust.jwks.json + dev/dev-signer.private.jwk: a local SPIFFE
 *   trust domain `dev.local` whose JWT authority the demo signs SVIDs with,
 * - dev/console-idp.jwks.json + dev/console-idp.private.jwks.json: the keys of
 *   the development sign-in provider for the console (scripts/dev-idp.ts),
 * - console/dist: the built console, when missing or older than its sources.
 * dev/ is git-ignored: these are generated per machine and never committed.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';

execFileSync(process.execPath, ['scripts/ensure-redis.ts'], { stdio: 'inherit' });
mkdirSync('dev', { recursive: true, mode: 0o700 });
if (!existsSync('dev/kek')) {
  writeFileSync('dev/kek', `${randomBytes(32).toString('base64')}\n`, { mode: 0o600 });
  console.error('dev-setup: generated dev/kek');
}
if (!existsSync('dev/dev-signer.private.jwk')) {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const kid = randomUUID();
  const pub = { ...publicKey.export({ format: 'jwk' }), kid, use: 'jwt-svid', alg: 'ES256' };
  writeFileSync('dev/dev-trust.jwks.json', `${JSON.stringify({ keys: [pub], spiffe_sequence: 1 }, null, 2)}\n`);
  writeFileSync('dev/dev-signer.private.jwk', `${JSON.stringify({ ...privateKey.export({ format: 'jwk' }), kid, alg: 'ES256' })}\n`, {
    mode: 0o600,
  });
  console.error('dev-setup: generated the dev.local trust domain key pair in dev/');
}
if (!existsSync('dev/console-idp.private.jwks.json')) {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const meta = { kid: randomUUID(), alg: 'RS256', use: 'sig' };
  writeFileSync(
    'dev/console-idp.jwks.json',
    `${JSON.stringify({ keys: [{ ...publicKey.export({ format: 'jwk' }), ...meta }] }, null, 2)}\n`,
  );
  writeFileSync(
    'dev/console-idp.private.jwks.json',
    `${JSON.stringify({ keys: [{ ...privateKey.export({ format: 'jwk' }), ...meta }] })}\n`,
    {
      mode: 0o600,
    },
  );
  console.error('dev-setup: generated the development sign-in provider key pair in dev/');
}

/** Newest modification time below `dir` (ms). */
function newest(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}
const built = 'console/dist/index.html';
if (!existsSync(built) || newest('console/src') > statSync(built).mtimeMs) {
  console.error('dev-setup: building the console (npm run build:console)');
  execFileSync('npm', ['run', '--silent', 'build:console'], { stdio: 'inherit' });
}
