/**
 * `npm run rotate -- <target>`: rotates a secret through the running broker's
 * admin API, so the rotation is authorized (admins + policy `rotate`), audited
 * and announced to every instance. The admin identity token is read from
 * JIT_ADMIN_TOKEN or the file in JIT_ADMIN_TOKEN_FILE; with neither, in a dev
 * checkout, one is minted for spiffe://dev.local/ops/cli from dev/.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createPrivateKey, sign } from 'node:crypto';

const target = process.argv[2];
if (!target) {
  console.error('usage: npm run rotate -- <signing-key|aws|vault>');
  process.exit(2);
}
const broker = process.env.BROKER_URL ?? 'http://127.0.0.1:8080';

function devToken(): string {
  const jwk = JSON.parse(readFileSync('dev/dev-signer.private.jwk', 'utf8'));
  const now = Math.floor(Date.now() / 1000);
  const enc = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const input = `${enc({ alg: 'ES256', kid: jwk.kid, typ: 'JWT' })}.${enc({ sub: 'spiffe://dev.local/ops/cli', aud: ['jit-broker'], iat: now, exp: now + 60 })}`;
  return `${input}.${sign('sha256', Buffer.from(input), { key: createPrivateKey({ key: jwk, format: 'jwk' }), dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
}

const token =
  process.env.JIT_ADMIN_TOKEN ??
  (process.env.JIT_ADMIN_TOKEN_FILE ? readFileSync(process.env.JIT_ADMIN_TOKEN_FILE, 'utf8').trim() : undefined) ??
  (existsSync('dev/dev-signer.private.jwk') ? devToken() : undefined);
if (!token) {
  console.error('rotate: set JIT_ADMIN_TOKEN or JIT_ADMIN_TOKEN_FILE to an admin workload identity token');
  process.exit(2);
}
const res = await fetch(`${broker}/v1/admin/rotate`, {
  method: 'POST',
  headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
  body: JSON.stringify({ target }),
});
const body = await res.json();
console.log(JSON.stringify(body, null, 2));
process.exit(res.status === 202 ? 0 : 1);
