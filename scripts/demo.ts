/**
 * `npm run demo`: plays orchestrator, agent and resource server against the
 * running broker (`npm start` in another terminal) through
 * `jit-broker/client`, with identities of the local dev.local trust domain
 * generated in dev/ (never committed).
 */
import { randomUUID } from 'node:crypto';
import { createRemoteJWKSet, jwtVerify } from 'jose';
import { findDevSigner, signDevIdentity } from '../src/cli/dev-identity.ts';
import { BrokerClient, BrokerUnreachableError, type JwtCredentials } from '../src/client/index.ts';

const url = process.env.JIT_BROKER_URL ?? process.env.BROKER_URL ?? 'http://127.0.0.1:8080';
const signerFile = findDevSigner(process.env, process.cwd());
/** A client acting as `path` in spiffe://dev.local, with a fresh identity token on every request. */
const as = (path: string) =>
  new BrokerClient({ url, token: async () => (await signDevIdentity({ sub: path, signerFile, ttlSeconds: 300 })).token });
const orchestrator = as('/orchestrator/demo');
const agent = as('/agent/support');
const resourceServer = as('/resource/tickets');

const step = (n: number, who: string, what: string) => console.log(`\n${n}. [${who}] ${what}`);

try {
  await orchestrator.health();
} catch (err) {
  if (!(err instanceof BrokerUnreachableError)) throw err;
  console.error(`No broker answers at ${url}. Start it first with \`npm start\` (or set JIT_BROKER_URL).`);
  process.exit(1);
}
const meta = (await orchestrator.metadata()) as { issuer: string };
const taskId = `demo-${randomUUID().slice(0, 8)}`;

step(1, 'orchestrator', `opens task ${taskId} for spiffe://dev.local/agent/support`);
const task = await orchestrator.openTask({
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
const cred = await agent.getCredential<JwtCredentials>({ taskId, role: 'tickets-api', scopes: ['tickets:read'], ttlSeconds: 120 });
console.log(
  `   lease=${cred.leaseId} expiresAt=${cred.expiresAt} scope="${cred.credentials.scope}" token=${cred.credentials.access_token.slice(0, 24)}…`,
);

step(3, 'resource server', 'verifies the token offline against the JWKS and checks it by introspection');
const { payload } = await jwtVerify(cred.credentials.access_token, createRemoteJWKSet(new URL(`${url}/.well-known/jwks.json`)), {
  issuer: meta.issuer,
  audience: 'https://tickets.internal',
  typ: 'at+jwt',
});
const before = await resourceServer.introspect(cred.credentials.access_token);
console.log(`   signature OK: sub=${payload.sub} task_id=${payload.task_id}; introspection active=${before.active} → request ACCEPTED`);

step(4, 'orchestrator', 'completes the task');
const done = await orchestrator.completeTask(taskId);
console.log(`   status=${done.status} leases=${done.leases}`);

step(5, 'resource server', 'checks the same token again');
const after = await resourceServer.introspect(cred.credentials.access_token);
console.log(`   introspection active=${after.active} → request ${after.active ? 'ACCEPTED (unexpected!)' : 'REJECTED'}`);
let lease = await orchestrator.getLease(cred.leaseId);
for (let i = 0; i < 50 && lease.status !== 'revoked'; i++) {
  await new Promise((r) => setTimeout(r, 100));
  lease = await orchestrator.getLease(cred.leaseId);
}
console.log(`   lease ${cred.leaseId}: status=${lease.status} reason=${lease.reason} revokedAt=${lease.revokedAt}`);
process.exit(after.active === false && lease.status === 'revoked' ? 0 : 1);
