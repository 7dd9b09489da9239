import { afterAll, expect, test } from '@jest/globals';
import { Redis } from 'ioredis';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../src/config/load.ts';
import { script } from '../../src/redis/scripts.ts';
import {
  AGENT,
  auditRecords,
  call,
  dropPrefix,
  ORCH,
  REDIS_URL,
  startTestBroker,
  type TestBroker,
  testConfigFile,
  testRawConfig,
  uniquePrefix,
  waitFor,
} from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { jest } from '@jest/globals';
import { type BrokerProcess, START_TIMEOUT_MS, startBrokerProcess } from '../helpers/process.ts';
import { redisCutProxy } from '../helpers/redis-cut-proxy.ts';

/**
 * The sweeper ends a burst of JWT leases and their task in sweep.lua; their `lease.expire` and
 * `task.expire` records are appended afterwards. A worker SIGKILLed in between used to lose those
 * records for good (found by a red-team pass: 3,000 leases `expired`, 2,000 records). The script now
 * puts each record in the bucket's audit outbox in the same step, and another worker's recovery
 * appends what was left there: every ended lease has exactly one record.
 */
// The tests that kill broker processes start two, one after the other, each allowed START_TIMEOUT_MS.
jest.setTimeout(2 * START_TIMEOUT_MS + 60_000);
const issuer = new TestIssuer();
const prefix = uniquePrefix('outbox-kill');
let worker: BrokerProcess | undefined;
let worker2: BrokerProcess | undefined;
let api: TestBroker | undefined;
afterAll(async () => {
  await worker?.kill();
  await worker2?.kill();
  await api?.broker.close();
  await dropPrefix(prefix);
});

/**
 * The first test waits most of its time for its task's deadline, idle; the second runs meanwhile. It starts only
 * once the first has issued its leases, so its processes never slow that issuance (which must end before the
 * deadline); its assertions do not depend on when it runs.
 */
let leasesIssued!: () => void;
const issuance = new Promise<void>((res) => {
  leasesIssued = res;
});

test.concurrent('records of leases and a task the sweeper ended survive the worker being killed right after', async () => {
  try {
    await burst();
  } finally {
    leasesIssued(); // also when it failed early: the second test does not wait for nothing
  }
});

async function burst() {
  const N = 3000;
  const file = testConfigFile(issuer, prefix, {
    server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } },
    tasks: { maxLeases: 10_000 },
    revocation: {
      backoffMs: 50,
      maxBackoffMs: 500,
      reconcileIntervalMs: 2000,
      concurrency: 8,
      lockMs: 1000,
      stalledCheckMs: 500,
      sweepMs: 20,
    },
  });
  api = await startTestBroker('outbox-kill-api', { prefix, issuer, loaded: loadConfig({}, file), broker: { worker: false } });
  const taskId = 't-burst';
  const open = await call(api.url, 'POST', '/v1/tasks', api.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    // Long enough to issue every lease on a busy machine; the burst is at this deadline.
    ttlSeconds: 60,
    grants: [{ role: 'demo-api' }],
  });
  expect(open.status).toBe(201);
  const ids: string[] = [];
  for (let i = 0; i < N; i += 50) {
    const rs = await Promise.all(
      Array.from({ length: 50 }, () => call(api!.url, 'POST', '/v1/credentials', api!.as(AGENT), { taskId, role: 'demo-api' })),
    );
    for (const r of rs) {
      expect(r.status).toBe(201);
      ids.push(r.body.leaseId);
    }
  }
  leasesIssued();
  // Every lease is clamped to the task's deadline: one burst at the deadline, ended by one worker.
  worker = await startBrokerProcess(file, { args: ['--worker'] });
  const r = new Redis(REDIS_URL);
  const k = api.broker.deps.keys;
  const [first, last] = [k.lease(ids[0]!), k.lease(ids[N - 1]!)];
  try {
    for (;;) {
      const [a, b] = await Promise.all([r.hget(first, 'status'), r.hget(last, 'status')]);
      if (a === 'expired' || b === 'expired') break;
      await new Promise((res) => setTimeout(res, 2));
    }
    await worker.kill('SIGKILL');
    // Another worker takes over: its recovery appends what the dead one left in the outbox.
    worker2 = await startBrokerProcess(file, { args: ['--worker'] });
    const expireRecords = async () => (await auditRecords(api!.broker.deps.redis, k)).filter((x) => x.action === 'lease.expire');
    await waitFor(async () => (await expireRecords()).length >= N, 45_000, 500).catch(() => undefined);
    const statuses = await api.broker.deps.leases.getMany(ids);
    expect(statuses.filter((l) => l.status === 'expired').length).toBe(N);
    const recs = await auditRecords(api.broker.deps.redis, k);
    const expires = recs.filter((x) => x.action === 'lease.expire');
    // Exactly once: no record lost, none written twice (by the dead worker's last batch and by recovery).
    expect(new Set(expires.map((x) => x.leaseId)).size).toBe(N);
    expect(expires.length).toBe(N);
    expect(recs.filter((x) => x.action === 'task.expire' && x.taskId === taskId).length).toBe(1);
    expect(await r.zcard(k.auditOutbox(k.bucketOfTask(taskId)))).toBe(0);
    const ev = (await call(api.url, 'GET', `/v1/tasks/${taskId}/evidence?limit=1`, api.as(ORCH))).body;
    expect(ev.chain).toBe('intact');
  } finally {
    await r.quit();
  }
}

/**
 * An API process SIGKILLed between a decision's script and the append of its record: opening a task
 * (task-open.lua, then `task.open`) and issuing a broker-signed JWT (lease-create.lua, with the
 * `credential.issue` append sent right behind it in the same socket write). The proxy lets the script
 * through and cuts the process off at the append, which never reaches Redis; then it is killed. Those
 * records used to be lost for good (the task open, the lease active, no record). They are in the bucket's
 * outbox since the script's step; an API-only instance (no worker anywhere) appends each exactly once.
 */
test.concurrent('task.open and credential.issue survive an API process killed between the decision and its record; an API-only instance recovers them', async () => {
  await issuance;
  const kprefix = uniquePrefix('outbox-kill-api');
  const proxy = await redisCutProxy(REDIS_URL);
  // One config (one KEK) in two files: the processes to kill reach Redis through the proxy, the survivor directly.
  const raw = testRawConfig(issuer, kprefix, {
    server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } },
    revocation: {
      backoffMs: 50,
      maxBackoffMs: 500,
      reconcileIntervalMs: 1000,
      concurrency: 8,
      lockMs: 1000,
      stalledCheckMs: 500,
      sweepMs: 20,
    },
  });
  const dir = mkdtempSync(join(tmpdir(), 'jit-outbox-kill-'));
  const [viaProxy, direct] = [join(dir, 'proxy.yaml'), join(dir, 'direct.yaml')];
  writeFileSync(viaProxy, JSON.stringify({ ...raw, redis: { ...(raw.redis as object), url: proxy.url } }));
  writeFileSync(direct, JSON.stringify(raw));
  const appendSha = script('audit-append').sha;
  let victim: BrokerProcess | undefined;
  let survivor: TestBroker | undefined;
  const as = (path: string) => ({ authorization: `Bearer ${issuer.svid(path)}` });
  /** Starts an API process through the proxy, sends `request` with the proxy armed, and kills it once cut off. */
  const killMidway = async (request: (url: string) => Promise<unknown>, decided: () => Promise<boolean>) => {
    victim = await startBrokerProcess(viaProxy, { args: ['--api'] });
    const cut = proxy.arm(appendSha);
    const pending = request(victim.url).catch(() => undefined);
    await cut;
    await waitFor(decided, 5000);
    await victim.kill('SIGKILL');
    await pending;
  };
  try {
    survivor = await startTestBroker('outbox-kill-survivor', {
      prefix: kprefix,
      issuer,
      loaded: loadConfig({}, direct),
      broker: { worker: false },
    });
    const k = survivor.broker.deps.keys;
    const r = survivor.broker.deps.redis;
    await killMidway(
      (url) =>
        call(url, 'POST', '/v1/tasks', as(ORCH), {
          taskId: 't-killed',
          agent: `spiffe://dev.local${AGENT}`,
          tenant: 'acme',
          purpose: 'p',
          ttlSeconds: 600,
          grants: [{ role: 'demo-api' }],
        }),
      async () => (await r.hget(k.task('t-killed'), 'status')) === 'open',
    );
    await killMidway(
      (url) => call(url, 'POST', '/v1/credentials', as(AGENT), { taskId: 't-killed', role: 'demo-api' }),
      async () => (await r.zcard(k.taskLeases('t-killed'))) === 1,
    );
    const [leaseId] = await r.zrange(k.taskLeases('t-killed'), '0', '-1');
    expect(await r.hget(k.lease(leaseId!), 'status')).toBe('active');
    const of = async (action: string) => (await auditRecords(r, k)).filter((x) => x.action === action && x.taskId === 't-killed');
    // Recovery takes what is older than its 10-s grace period, at its next pass (every second here).
    await waitFor(async () => (await of('task.open')).length > 0 && (await of('credential.issue')).length > 0, 30_000, 250).catch(
      () => undefined,
    );
    const opened = await of('task.open');
    expect(opened).toHaveLength(1);
    expect(opened[0]).toMatchObject({ actor: `spiffe://dev.local${ORCH}`, decision: 'allow', detail: { roles: ['demo-api'] } });
    const issued = await of('credential.issue');
    expect(issued).toHaveLength(1);
    expect(issued[0]).toMatchObject({ actor: `spiffe://dev.local${AGENT}`, leaseId, role: 'demo-api', decision: 'allow' });
    expect(await r.zcard(k.auditOutbox(k.bucketOfTask('t-killed')))).toBe(0);
    const ev = (await call(survivor.url, 'GET', '/v1/tasks/t-killed/evidence?limit=1', survivor.as(ORCH))).body;
    expect(ev.chain).toBe('intact');
  } finally {
    await victim?.kill();
    await survivor?.broker.close();
    await proxy.close();
    await dropPrefix(kprefix);
  }
});
