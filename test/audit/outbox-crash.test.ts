import { afterAll, expect, test } from '@jest/globals';
import { Redis } from 'ioredis';
import { loadConfig } from '../../src/config/load.ts';
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
  uniquePrefix,
  waitFor,
} from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { type BrokerProcess, startBrokerProcess } from '../helpers/process.ts';

/**
 * The sweeper ends a burst of JWT leases and their task in sweep.lua; their `lease.expire` and
 * `task.expire` records are appended afterwards. A worker SIGKILLed in between used to lose those
 * records for good (found by a red-team pass: 3,000 leases `expired`, 2,000 records). The script now
 * puts each record in the bucket's audit outbox in the same step, and another worker's recovery
 * appends what was left there: every ended lease has exactly one record.
 */
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

test('records of leases and a task the sweeper ended survive the worker being killed right after', async () => {
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
}, 180_000);
