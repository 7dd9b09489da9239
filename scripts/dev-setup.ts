/**
 * Local set-up for `npm start` and `npm run demo`, idempotent:
 * - a Redis on 127.0.0.1 (started if nothing answers),
 * - dev/kek: the key-encryption key for secrets kept in Redis,
 * - dev/dev-trust.jwks.json + dev/dev-signer.private.jwk: a local SPIFFE
 *   trust domain `dev.local` whose JWT authority the demo signs SVIDs with.
 * dev/ is git-ignored: these are generated per machine and never committed.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
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
