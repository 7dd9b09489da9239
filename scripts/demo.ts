/**
 * `npm run demo`: plays orchestrator, agent and resource server against the
 * running broker (`npm start` in another terminal), using the local dev.local
 * trust domain generated in dev/ (never committed).
 */
import { readFileSync } from 'node:fs';
import { createPrivateKey, randomUUID, sign } from 'node:crypto';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const broker = process.env.BROKER_URL ?? 'http://127.0.0.1:8080';
const jwk = JSON.parse(readFileSync('dev/dev-signer.private.jwk', 'utf8'));
const key = createPrivateKey({ key: jwk, format: 'jwk' });

/** A JWT-SVID for spiffe://dev.local<path>, signed with the dev trust domain's key. */
function svid(path: string): string {
  const now = Math.floor(Date.now() / 1000);
  const enc = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const input = `${enc({ alg: 'ES256', kid: jwk.kid, typ: 'JWT' })}.${enc({ sub: `spiffe://dev.local${path}`, aud: ['jit-broker'], iat: now, exp: now + 300 })}`;
  return `${input}.${sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
}

async function api(method: string, path: string, who: string, body?: unknown) {
  const res = await fetch(`${broker}${path}`, {
    method,
    headers: { authorization: `Bearer ${svid(who)}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = (await res.json()) as Record<string, any>;
  if (res.status >= 400) throw new Error(`${method} ${path} → ${res.status} ${json.code ?? ''}: ${json.detail ?? JSON.stringify(json)}`);
  return json;
}

async function introspect(token: string): Promise<Record<string, unknown>> {
  const res = await fetch(`${broker}/v1/introspect`, {
    method: 'POST',
    headers: { authorization: `Bearer ${svid('/resource/tickets')}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token }),
  });
  return res.json() as Promise<Record<string, unknown>>;
}

const step = (n: number, who: string, what: string) => console.log(`\n${n}. [${who}] ${what}`);

try {
  await fetch(`${broker}/healthz`);
} catch {
  console.error(`No broker answers at ${broker}. Start it first with \`npm start\` (or set BROKER_URL).`);
  process.exit(1);
}
const meta = (await (await fetch(`${broker}/.well-known/oauth-authorization-server`)).json()) as { issuer: string };
const taskId = `demo-${randomUUID().slice(0, 8)}`;

step(1, 'orchestrator', `opens task ${taskId} for spiffe://dev.local/agent/support`);
const task = await api('POST', '/v1/tasks', '/orchestrator/demo', {
  taskId,
  agent: 'spiffe://dev.local/agent/support',
  tenant: 'acme',
  purpose: 'triage ticket 4711',
  ttlSeconds: 600,
  grants: [{ role: 'tickets-api', scopes: ['tickets:read'], maxTtlSeconds: 300 }],
  labels: { ticket: '4711' },
});
console.log(`   status=${task.status} expiresAt=${task.expiresAt} grants=${JSON.stringify(task.grants)}`);

step(2, 'agent', 'exchanges its SPIFFE identity for a task-scoped token');
const cred = await api('POST', '/v1/credentials', '/agent/support', {
  taskId,
  role: 'tickets-api',
  scopes: ['tickets:read'],
  ttlSeconds: 120,
});
console.log(
  `   lease=${cred.leaseId} expiresAt=${cred.expiresAt} scope="${cred.credentials.scope}" token=${String(cred.credentials.access_token).slice(0, 24)}…`,
);

step(3, 'resource server', 'verifies the token offline against the JWKS and checks it by introspection');
const { payload } = await jwtVerify(cred.credentials.access_token, createRemoteJWKSet(new URL(`${broker}/.well-known/jwks.json`)), {
  issuer: meta.issuer,
  audience: 'https://tickets.internal',
  typ: 'at+jwt',
});
const before = await introspect(cred.credentials.access_token);
console.log(`   signature OK: sub=${payload.sub} task_id=${payload.task_id}; introspection active=${before.active} → request ACCEPTED`);

step(4, 'orchestrator', 'completes the task');
const done = await api('POST', `/v1/tasks/${taskId}/complete`, '/orchestrator/demo');
console.log(`   status=${done.status} leases=${done.leases}`);

step(5, 'resource server', 'checks the same token again');
const after = await introspect(cred.credentials.access_token);
console.log(`   introspection active=${after.active} → request ${after.active ? 'ACCEPTED (unexpected!)' : 'REJECTED'}`);
let lease: Record<string, any> = {};
for (let i = 0; i < 50 && lease.status !== 'revoked'; i++) {
  lease = await api('GET', `/v1/leases/${cred.leaseId}`, '/orchestrator/demo');
  if (lease.status !== 'revoked') await new Promise((r) => setTimeout(r, 100));
}
console.log(`   lease ${cred.leaseId}: status=${lease.status} reason=${lease.reason} revokedAt=${lease.revokedAt}`);
process.exit(after.active === false && lease.status === 'revoked' ? 0 : 1);
