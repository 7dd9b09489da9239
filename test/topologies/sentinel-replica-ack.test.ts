import { Keys } from '../../src/redis/keys.ts';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { AGENT, ORCH, call, startTestBroker, uniquePrefix, waitFor, type TestBroker } from '../helpers/broker.ts';
import { type RedisSentinel, startSentinel } from '../helpers/redis-topology.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';

/**
 * The failover of test/topologies/replica-ack.test.ts done by Sentinel itself, with the broker following
 * it (no restart, no hand-made promotion): a Vault token handed out just before the master dies must still
 * be revoked when its task completes on the master Sentinel promotes. The replica is frozen (SIGSTOP)
 * and its link closed just before the request, so it can only have the issuance's writes if the answer
 * waited for it (redis.replicaAck).
 */
const FREEZE_MS = 1500;
let sentinel: RedisSentinel;
let emu: VaultEmulator;
let t: TestBroker;

beforeAll(async () => {
  emu = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
  const { token } = emu.createToken({ policies: ['jit-broker', 'ops-read'] });
  sentinel = await startSentinel({ downAfterMs: 1000, replicas: 1 });
  const prefix = uniquePrefix('sentinel-ack');
  t = await startTestBroker('sentinel-ack', {
    prefix,
    config: {
      redis: {
        sentinel: { name: sentinel.name, sentinels: sentinel.sentinelUrls },
        prefix,
        commandTimeoutMs: 2000,
        replicaAck: { timeoutMs: 8000 },
      },
      providers: { vault: { address: emu.url, auth: { token }, requestTimeoutMs: 2000 } },
      roles: { 'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] } } },
      revocation: { backoffMs: 50, maxBackoffMs: 500, sweepMs: 50 },
    },
  });
}, 60_000);
afterAll(async () => {
  await t?.broker.close();
  await sentinel?.stop();
  await emu?.stop();
});

test('a Vault token handed out just before Sentinel fails the master over is revoked when its task completes on the new master', async () => {
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-sen-ack',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'vault-ops' }],
  });
  expect(open.status).toBe(201);
  const replicaPort = await sentinel.waitForReplica();
  // The broker counts the replica (ROLE, every second): waited for as a wait of its own that the replica
  // acknowledges, not slept on (a loaded machine runs the count seconds late, and then the answer below did
  // not wait for the replica at all).
  const acked = async () => (await t.broker.deps.metrics.replicaAcks.get()).values.find((v) => v.labels.result === 'acked')?.value ?? 0;
  await waitFor(
    async () => {
      const before = await acked();
      await t.broker.deps.replicas.after([new Keys(t.prefix).replicaFence(0)]);
      return (await acked()) > before;
    },
    15_000,
    100,
  );

  // Freeze the replica and close its link: the master cannot even leave the writes in its socket buffer.
  const replica = sentinel.client(replicaPort);
  const pid = Number(/process_id:(\d+)/.exec(await replica.info('server'))![1]);
  replica.disconnect();
  process.kill(pid, 'SIGSTOP');
  const thaw = setTimeout(() => process.kill(pid, 'SIGCONT'), FREEZE_MS);
  try {
    const master = sentinel.client(await sentinel.masterPort());
    await master.call('CLIENT', 'KILL', 'TYPE', 'replica');
    master.disconnect();
    const issued = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-sen-ack', role: 'vault-ops' });
    expect(issued.status).toBe(201);
    const token = issued.body.credentials.token as string;
    expect(emu.isTokenValid(token)).toBe(true);

    // The master dies right after the answer; Sentinel promotes the replica; the broker follows.
    const old = await sentinel.killMaster();
    const promoted = await sentinel.waitForFailover({ from: old, timeoutMs: 30_000 });
    const onNew = sentinel.client(promoted);
    const lease = await onNew.hgetall(new Keys(t.prefix).lease(issued.body.leaseId));
    onNew.disconnect();
    // With replicas: 0 the promoted master had no record of the lease at all: nothing would ever revoke the token.
    expect(lease.status).toBe('active');
    expect(JSON.parse(lease.handle!).accessor).toBe(issued.body.credentials.accessor);

    const done = await waitFor(
      async () => {
        const r = await call(t.url, 'POST', '/v1/tasks/t-sen-ack/complete', t.as(ORCH));
        return r.status === 202 && r;
      },
      20_000,
      200,
    );
    expect(done.body.status).toBe('completed');
    await waitFor(async () => !emu.isTokenValid(token), 15_000, 50);
  } finally {
    clearTimeout(thaw);
    try {
      process.kill(pid, 'SIGCONT');
    } catch {
      // already gone
    }
  }
}, 90_000);
