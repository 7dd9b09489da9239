/**
 * `npm run rotate -- <target>`: rotates a secret through the running broker's
 * admin API (JIT_BROKER_URL, default http://127.0.0.1:8080, as for `jit`), so the
 * rotation is authorized (admins + policy `rotate`), audited and announced to
 * every instance. The admin identity token is read from JIT_ADMIN_TOKEN or the
 * file in JIT_ADMIN_TOKEN_FILE; with neither, in a dev checkout, one is minted
 * for spiffe://dev.local/ops/cli from dev/. Exit codes as `jit`'s: 0 rotated,
 * 1 refused (4xx), 2 bad usage, 3 the broker failed, could not be reached, or
 * answered something that is not its JSON (one line on stderr, no stack trace).
 */
import { existsSync, readFileSync } from 'node:fs';
import { createPrivateKey, sign } from 'node:crypto';

/** How long the broker has to answer (a rotation waits for its upstream). */
const TIMEOUT_MS = 60_000;

const target = process.argv[2];
if (!target) {
  console.error('usage: npm run rotate -- <signing-key|aws|vault>');
  process.exit(2);
}
// BROKER_URL, which this script read before, alone: refused rather than ignored, which sent the admin's token to
// the default address (whatever listens there) instead of the broker the operator named.
if (!process.env.JIT_BROKER_URL && process.env.BROKER_URL) {
  console.error("rotate: BROKER_URL is no longer read; set JIT_BROKER_URL to the broker's address");
  process.exit(2);
}
const broker = (process.env.JIT_BROKER_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');

function devToken(): string {
  const jwk = JSON.parse(readFileSync('dev/dev-signer.private.jwk', 'utf8'));
  const now = Math.floor(Date.now() / 1000);
  const enc = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const input = `${enc({ alg: 'ES256', kid: jwk.kid, typ: 'JWT' })}.${enc({ sub: 'spiffe://dev.local/ops/cli', aud: ['jit-broker'], iat: now, exp: now + 60 })}`;
  return `${input}.${sign('sha256', Buffer.from(input), { key: createPrivateKey({ key: jwk, format: 'jwk' }), dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
}

/** What made a fetch (or a read) fail: the socket's code (ECONNREFUSED, ENOTFOUND, ...), `timeout`, or fetch's reason. */
function errorCode(err: unknown): string {
  const e = err as {
    name?: string;
    code?: string;
    message?: string;
    cause?: { code?: string; message?: string; errors?: { code?: string }[] };
  };
  if (e.name === 'TimeoutError') return 'timeout';
  return e.cause?.code ?? e.cause?.errors?.[0]?.code ?? e.code ?? e.cause?.message ?? e.message ?? 'error';
}

function fail(message: string, code: number): never {
  console.error(`rotate: ${message}`);
  process.exit(code);
}

let token: string | undefined;
try {
  token =
    process.env.JIT_ADMIN_TOKEN ??
    (process.env.JIT_ADMIN_TOKEN_FILE ? readFileSync(process.env.JIT_ADMIN_TOKEN_FILE, 'utf8').trim() : undefined) ??
    (existsSync('dev/dev-signer.private.jwk') ? devToken() : undefined);
} catch (err) {
  fail(`cannot read the admin token: ${errorCode(err)}`, 2);
}
if (!token) fail('set JIT_ADMIN_TOKEN or JIT_ADMIN_TOKEN_FILE to an admin workload identity token', 2);

let res: Response;
try {
  res = await fetch(`${broker}/v1/admin/rotate`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ target }),
    signal: AbortSignal.timeout(TIMEOUT_MS),
  });
} catch (err) {
  fail(`cannot reach ${broker}: ${errorCode(err)}`, 3);
}
let body: unknown;
try {
  body = await res.json();
} catch {
  fail(`${broker} answered ${res.status} with ${res.headers.get('content-type') || 'no content type'}, not the broker's JSON`, 3);
}
console.log(JSON.stringify(body, null, 2));
process.exit(res.status === 202 ? 0 : res.status >= 400 && res.status < 500 ? 1 : 3);
