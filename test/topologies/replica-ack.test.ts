import type { Redis } from 'ioredis';
import type { LoadedConfig } from '../../src/config/load.ts';
import { Keys } from '../../src/redis/keys.ts';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { AGENT, ORCH, call, startTestBroker, uniquePrefix, waitFor, type TestBroker } from '../helpers/broker.ts';
import { type RedisStandalone, startStandalone } from '../helpers/redis-topology.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';

/**
 * A failover right after an answer must not take back what the answer
 * promised. The primary is killed just after a Vault credential is handed
 * out (or a task is completed) and its replica is promoted, as Sentinel or a
 * managed Redis would. Before, the replica was still without those writes:
 * the promoted one had no lease for the extended Vault token, so completing
 * the task revoked nothing and the token lived to its TTL; and a completed
 * task came back open with its credential live. Now those answers wait until
 * a replica has the writes (redis.replicaAck).
 *
 * The replica misses them deterministically: it is frozen (SIGSTOP) and its
 * link closed by the primary just before the request, so the primary cannot
 * even leave the writes in the replica's socket buffer. It resumes after
 * FREEZE_MS and reconnects within a second or two (partial resync).
 */
const FREEZE_MS = 800;
const agentId = `spiffe://dev.local${AGENT}`;

let emu: VaultEmulator;
let vaultToken: string;
const started: { stop?(): Promise<void>; close?(): Promise<void> }[] = [];

beforeAll(async () => {
  emu = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
  vaultToken = emu.createToken({ policies: ['jit-broker', 'ops-read'] }).token;
}, 30_000);
afterAll(async () => {
  for (const s of started.reverse()) await (s.close ?? s.stop)?.call(s).catch(() => {});
  await emu?.stop();
});

/** A primary with one replica in sync, and a broker on the primary. */
async function primaryWithReplica(name: string): Promise<{ primary: RedisStandalone; replica: RedisStandalone; t: TestBroker }> {
  const primary = await startStandalone();
  const replica = await startStandalone();
  started.push(primary, replica);
  await admin(replica, (r) => r.replicaof('127.0.0.1', primary.port));
  await waitFor(async () => ((await admin(primary, (r) => r.call('ROLE'))) as unknown[][])[2]!.length === 1, 10_000, 50);
  const prefix = uniquePrefix(name);
  const t = await startTestBroker(name, {
    prefix,
    config: {
      redis: { url: primary.url, prefix, replicaAck: { timeoutMs: 5000 } },
      providers: { vault: { address: emu.url, auth: { token: vaultToken }, requestTimeoutMs: 2000 } },
      roles: {
        'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] } },
        'demo-api': { provider: 'jwt', audience: 'https://demo.internal', maxTtlSeconds: 300 },
      },
      revocation: { backoffMs: 50, maxBackoffMs: 500, sweepMs: 50 },
    },
  });
  started.push(t);
  return { primary, replica, t };
}

async function admin<T>(server: RedisStandalone, f: (r: Redis) => Promise<T>): Promise<T> {
  const r = server.client();
  try {
    return await f(r);
  } finally {
    r.disconnect();
  }
}

/** Freezes the replica and has the primary drop its link: nothing written from now reaches it until it resumes. */
async function cutReplica(primary: RedisStandalone, replica: RedisStandalone): Promise<void> {
  void replica.pause(FREEZE_MS);
  await admin(primary, (r) => r.call('CLIENT', 'KILL', 'TYPE', 'replica'));
}

/** Kills the primary at once and promotes the replica; a broker on the promoted node, with the same config and data. */
async function failover(primary: RedisStandalone, replica: RedisStandalone, t: TestBroker): Promise<TestBroker> {
  await primary.kill();
  await new Promise((r) => setTimeout(r, FREEZE_MS + 200));
  await admin(replica, (r) => r.replicaof('NO', 'ONE'));
  // The old broker shuts down against an empty server on the old port (as a dead primary's DNS name would give).
  await primary.restart();
  await waitFor(async () => (await call(t.url, 'GET', '/readyz', {})).status === 200, 20_000, 100);
  await t.broker.close();
  const config = { ...t.config, redis: { ...t.config.redis, url: replica.url } } as LoadedConfig;
  const next = await startTestBroker('promoted', { prefix: t.prefix, loaded: config, issuer: t.issuer });
  started.push(next);
  return next;
}

async function openTask(t: TestBroker, taskId: string, role: string): Promise<void> {
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role }],
  });
  expect(r.status).toBe(201);
}

test('a Vault token handed out just before a failover is still revoked when its task completes on the promoted replica', async () => {
  const { primary, replica, t } = await primaryWithReplica('ack-vault');
  await openTask(t, 't-ack-vault', 'vault-ops');
  await cutReplica(primary, replica);
  const issued = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-ack-vault', role: 'vault-ops' });
  expect(issued.status).toBe(201);
  const token = issued.body.credentials.token as string;
  expect(emu.isTokenValid(token)).toBe(true);

  const next = await failover(primary, replica, t);
  const lease = await admin(replica, (r) => r.hgetall(new Keys(t.prefix).lease(issued.body.leaseId)));
  expect(lease.status).toBe('active');
  expect(JSON.parse(lease.handle!).accessor).toBe(issued.body.credentials.accessor);

  expect((await call(next.url, 'POST', '/v1/tasks/t-ack-vault/complete', next.as(ORCH))).status).toBe(202);
  await waitFor(async () => !emu.isTokenValid(token), 10_000, 50);
}, 60_000);

test('a task completed just before a failover stays completed on the promoted replica, its credential inactive', async () => {
  const { primary, replica, t } = await primaryWithReplica('ack-task');
  await openTask(t, 't-ack-task', 'demo-api');
  const issued = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-ack-task', role: 'demo-api' });
  expect(issued.status).toBe(201);
  // The lease itself reaches the replica before the cut (a JWT lease does not wait: losing it only makes the token inactive).
  await waitFor(async () => (await admin(replica, (r) => r.exists(new Keys(t.prefix).lease(issued.body.leaseId)))) === 1, 10_000, 50);
  await cutReplica(primary, replica);
  expect((await call(t.url, 'POST', '/v1/tasks/t-ack-task/complete', t.as(ORCH))).status).toBe(202);

  const next = await failover(primary, replica, t);
  const task = await call(next.url, 'GET', '/v1/tasks/t-ack-task', next.as(ORCH));
  expect(task.body.status).toBe('completed');
  const token = issued.body.credentials.token as string;
  const introspected = await fetch(`${next.url}/v1/introspect`, {
    method: 'POST',
    headers: { ...next.as('/resource/demo'), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token }),
  });
  expect(((await introspected.json()) as { active: boolean }).active).toBe(false);
}, 60_000);
