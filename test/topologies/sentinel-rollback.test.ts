import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { AGENT, ORCH, auditRecords, call, startTestBroker, type TestBroker, uniquePrefix, waitFor } from '../helpers/broker.ts';
import { type RedisSentinel, startSentinel } from '../helpers/redis-topology.ts';
import { capturingLogger } from '../helpers/log-capture.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';

/**
 * A Sentinel failover is a rollback when the promoted replica had not received the master's last writes
 * (no redis.replicaAck here: nothing waits for a replica). The replica is frozen (SIGSTOP) and its link
 * closed, a lease is revoked and a task completed on the master (Vault is down, so the upstream revocation
 * is still queued, in Redis, when the master dies), then the master is killed and Sentinel promotes the
 * replica. The broker must notice once, and nothing those lost writes ended may come back alive: the lease
 * ends revoked, upstream too. A clean failover (the replica had every write) is no data loss.
 */
let sentinel: RedisSentinel;
let emu: VaultEmulator;
let t: TestBroker;
const log = capturingLogger('info');
const agentId = `spiffe://dev.local${AGENT}`;

beforeAll(async () => {
  emu = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
  const { token } = emu.createToken({ policies: ['jit-broker', 'ops-read'] });
  sentinel = await startSentinel({ downAfterMs: 1000, replicas: 1 });
  const prefix = uniquePrefix('sentinel-rollback');
  t = await startTestBroker('sentinel-rollback', {
    prefix,
    config: {
      redis: { sentinel: { name: sentinel.name, sentinels: sentinel.sentinelUrls }, prefix, commandTimeoutMs: 2000 },
      providers: { vault: { address: emu.url, auth: { token }, requestTimeoutMs: 1000 } },
      roles: { 'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] } } },
      revocation: { backoffMs: 50, maxBackoffMs: 500, sweepMs: 50 },
    },
    broker: { dataLossCheckMs: 200, logger: log.logger },
  });
}, 60_000);
afterEach(() => {
  if (process.env.JIT_DEBUG_LOG) for (const l of log.lines.splice(0)) console.log(JSON.stringify(l));
});
afterAll(async () => {
  await t?.broker.close();
  await sentinel?.stop();
  await emu?.stop();
});

const metric = async (kind: string) => {
  const text = await (await fetch(`${t.url}/metrics`)).text();
  return Number(new RegExp(`jit_redis_data_loss_total\\{kind="${kind}"\\} (\\d+)`).exec(text)?.[1] ?? 0);
};
const readyz = async () => (await fetch(`${t.url}/readyz`)).status;
const losses = async () => {
  await t.broker.deps.audit.flush();
  return (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter((r) => r.action === 'broker.data_loss');
};

async function openTask(taskId: string, role: string) {
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role }],
  });
  if (open.status !== 201) throw new Error(JSON.stringify(open.body));
  const issued = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role });
  expect(issued.status).toBe(201);
  return issued.body;
}

test('a clean failover (the replica had every write) is not a data loss', async () => {
  await openTask('t-clean', 'vault-ops');
  await waitFor(async () => (await readyz()) === 200, 10_000);
  await sentinel.waitForReplica();
  const old = await sentinel.failover();
  await sentinel.waitForFailover({ from: old, timeoutMs: 30_000 });
  // Several checks on the new master (the broker follows +switch-master), and a write through it.
  await waitFor(async () => (await call(t.url, 'POST', '/v1/tasks/t-clean/complete', t.as(ORCH))).status === 202, 20_000, 200);
  await new Promise((r) => setTimeout(r, 2000));
  expect(await readyz()).toBe(200);
  expect(await metric('rolled_back')).toBe(0);
  expect(await metric('lost')).toBe(0);
  expect(await losses()).toEqual([]);
}, 90_000);

test('a failover that loses unreplicated writes is noticed once, and what they ended stays ended (upstream too)', async () => {
  const [rolledBefore, lossesBefore] = [await metric('rolled_back'), (await losses()).length];
  const vault = await openTask('t-lost-lease', 'vault-ops');
  const ended = await openTask('t-lost-task', 'vault-ops');
  const vaultToken = vault.credentials.token as string;
  expect(emu.isTokenValid(vaultToken)).toBe(true);
  const replicaPort = await sentinel.waitForReplica();
  await new Promise((r) => setTimeout(r, 500)); // a few generation bumps that reach the replica

  // Freeze the replica and close its link: nothing written from now on reaches it.
  const replica = sentinel.client(replicaPort);
  const pid = Number(/process_id:(\d+)/.exec(await replica.info('server'))![1]);
  replica.disconnect();
  process.kill(pid, 'SIGSTOP');
  try {
    const master = sentinel.client(await sentinel.masterPort());
    await master.call('CLIENT', 'KILL', 'TYPE', 'replica');
    master.disconnect();
    // Vault down: the lease's upstream revocation stays queued (in Redis) when the master dies.
    await emu.setDown(true);
    expect((await call(t.url, 'DELETE', `/v1/leases/${vault.leaseId}`, t.as(AGENT))).status).toBe(202);
    expect((await call(t.url, 'POST', '/v1/tasks/t-lost-task/complete', t.as(ORCH))).status).toBe(202);
    await new Promise((r) => setTimeout(r, 1000)); // generation bumps and audit exports on the master alone

    const old = await sentinel.killMaster();
    process.kill(pid, 'SIGCONT');
    await sentinel.waitForFailover({ from: old, timeoutMs: 30_000 });
  } finally {
    try {
      process.kill(pid, 'SIGCONT');
    } catch {
      // already gone
    }
  }
  await emu.setDown(false);

  // Noticed and recovered: ready again, both endings hold, the Vault token is revoked upstream.
  await waitFor(async () => (await metric('rolled_back')) === rolledBefore + 1, 20_000, 100);
  await waitFor(async () => (await readyz()) === 200, 30_000, 100);
  // Ended again by the recovery, revoked upstream by the worker (asynchronously: a loaded machine may be mid-way).
  const leaseStatus = async () => (await call(t.url, 'GET', `/v1/leases/${vault.leaseId}`, t.as(ORCH))).body.status;
  await waitFor(async () => (await leaseStatus()) === 'revoked', 15_000, 100);
  await waitFor(async () => !emu.isTokenValid(vaultToken), 15_000, 50);
  const task = await call(t.url, 'GET', '/v1/tasks/t-lost-task', t.as(ORCH));
  expect(task.body.status).toBe('completed');
  expect((await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-lost-task', role: 'vault-ops' })).status).toBe(409);
  await waitFor(async () => !emu.isTokenValid(ended.credentials.token), 15_000, 50);

  // Reported once: one metric increment, one data_loss record in ops, and later checks find nothing more.
  await new Promise((r) => setTimeout(r, 2000));
  expect(await metric('rolled_back')).toBe(rolledBefore + 1);
  expect(await metric('lost')).toBe(0);
  const ops = (await losses()).slice(lossesBefore).filter((r) => r.chain === 'ops');
  expect(ops).toHaveLength(1);
  expect(ops[0]).toMatchObject({ reason: 'redis_rolled_back' });
}, 120_000);
