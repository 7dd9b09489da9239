import { Redis } from 'ioredis';
import { Keys } from '../../src/redis/keys.ts';
import {
  ADMIN,
  AGENT,
  ORCH,
  REDIS_URL,
  auditRecords,
  call,
  openAgentTask,
  startTestBroker,
  type TestBroker,
  waitFor,
} from '../helpers/broker.ts';

/**
 * Red team: "every denial is a record, whatever the route: 403s, 409s on an ended task" (docs/audit.md,
 * contract section 7). A credential asked for on an ended task is (credential.deny), but three other 409s
 * on an ended task answered without a record:
 * - an agent opening a sub-task under its ended task (task_not_open);
 * - an approver deciding an approval whose task has ended (approval_expired);
 * - an orchestrator completing a task that expired (task_expired).
 */
let t: TestBroker;
let redis: Redis;
let keys: Keys;

beforeAll(async () => {
  t = await startTestBroker('rt-ended-denials', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } } },
  });
  redis = new Redis(REDIS_URL);
  keys = new Keys(t.prefix);
}, 60_000);
afterAll(async () => {
  redis.disconnect();
  await t.close();
});

/** The records written while `fn` ran. */
async function recordsOf(fn: () => Promise<void>): Promise<Record<string, any>[]> {
  const before = new Set((await auditRecords(redis, keys)).map((r) => r.hash));
  await fn();
  return (await auditRecords(redis, keys)).filter((r) => !before.has(r.hash));
}

test('a sub-task opened under an ended task is an audited denial', async () => {
  await openAgentTask(t, 'ed-1', [{ role: 'tickets-api' }]);
  expect((await call(t.url, 'POST', '/v1/tasks/ed-1/complete', t.as(ORCH))).status).toBe(202);
  const records = await recordsOf(async () => {
    const r = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
      parentTaskId: 'ed-1',
      taskId: 'late',
      agent: 'spiffe://dev.local/agent/helper',
      ttlSeconds: 60,
      grants: [{ role: 'tickets-api' }],
    });
    expect([r.status, r.body.code]).toEqual([409, 'task_not_open']);
  });
  expect(records).toEqual([
    expect.objectContaining({
      action: 'access.deny',
      actor: `spiffe://dev.local${AGENT}`,
      decision: 'deny',
      reason: 'task_not_open',
      taskId: 'ed-1',
      detail: { subtask: 'ed-1~late' },
    }),
  ]);
});

test('deciding an approval whose task has ended is an audited denial', async () => {
  await openAgentTask(t, 'ed-2', [{ role: 'prod-deploy' }]);
  const pending = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'ed-2', role: 'prod-deploy' });
  expect(pending.status).toBe(202);
  expect((await call(t.url, 'POST', '/v1/tasks/ed-2/complete', t.as(ORCH))).status).toBe(202);
  const records = await recordsOf(async () => {
    const r = await call(t.url, 'POST', `/v1/approvals/${pending.body.approvalId}`, t.as(ADMIN), { decision: 'approve' });
    expect([r.status, r.body.code]).toEqual([409, 'approval_expired']);
  });
  expect(records).toEqual([
    expect.objectContaining({
      action: 'approval.decide',
      actor: 'spiffe://dev.local/ops/alice',
      decision: 'deny',
      reason: 'approval_expired',
      taskId: 'ed-2',
      detail: { approvalId: pending.body.approvalId },
    }),
  ]);
});

test('completing a task that expired is an audited denial', async () => {
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'ed-3',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'expires at once',
    ttlSeconds: 1,
    grants: [{ role: 'tickets-api' }],
  });
  expect(open.status).toBe(201);
  await waitFor(async () => (await call(t.url, 'GET', '/v1/tasks/ed-3', t.as(ORCH))).body.status === 'expired', 15_000, 200);
  const records = await recordsOf(async () => {
    const r = await call(t.url, 'POST', '/v1/tasks/ed-3/complete', t.as(ORCH));
    expect([r.status, r.body.code]).toEqual([409, 'task_expired']);
  });
  expect(records).toEqual([
    expect.objectContaining({
      action: 'access.deny',
      actor: 'spiffe://dev.local/orchestrator/main',
      decision: 'deny',
      reason: 'task_expired',
      taskId: 'ed-3',
    }),
  ]);
}, 30_000);
