import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { Pending } from '../../src/audit/chain-writer.ts';
import type { WorkloadIdentity } from '../../src/identity/types.ts';
import type { AuditChain } from '../../src/redis/keys.ts';
import { ADMIN, AGENT, auditRecords, call, ORCH, openAgentTask, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';

/**
 * A process that ends a task (task-end.lua) or its leases (leases-end.lua) and dies before appending
 * the audit records: here its appends never reach Redis (each fails, as on a crash nothing would be
 * sent). Those records used to be lost for good while the tasks and leases stayed ended. They are in
 * the bucket's audit outbox since the script's step, and recovery appends them, each exactly once.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('outbox-recovery');
});
afterAll(async () => {
  await t.close();
});

const who = (path: string): WorkloadIdentity => ({
  id: `spiffe://dev.local${path}`,
  trust: 'dev',
  kind: 'spiffe',
  claims: {},
  exp: Math.floor(Date.now() / 1000) + 600,
});

/**
 * Recovery takes records older than its grace period: ages those in bucket `b`'s outbox as the clock
 * would (same members, older scores). The key is spelt out as the scripts build it (`<base>audit-outbox`).
 */
async function ageOutbox(b: number): Promise<string> {
  const { keys, redis } = t.broker.deps;
  const outbox = `${keys.base(b)}audit-outbox`;
  const flat = await redis.zrange(outbox, '0', '-1', 'WITHSCORES');
  for (let i = 0; i < flat.length; i += 2) await redis.zadd(outbox, 'XX', Number(flat[i + 1]) - 60_000, flat[i]!);
  return outbox;
}

/** While `dead`, every record this broker appends fails before reaching Redis, as if its process had died. */
function killAppends(): { revive(): void } {
  const writer = (t.broker.deps.audit as unknown as { writer: { write(chain: AuditChain, p: Pending): void } }).writer;
  const real = writer.write.bind(writer);
  let dead = true;
  writer.write = (chain, p) => (dead ? p.reject(new Error('the process died before appending')) : real(chain, p));
  return {
    revive: () => {
      dead = false;
    },
  };
}

test("records of a completed task, its JWT leases and a kill switch's tasks are appended by recovery after a crash", async () => {
  const { deps, services, sweeper } = t.broker;
  const { keys, redis } = deps;
  await openAgentTask(t, 't-done', [{ role: 'demo-api' }]);
  const leases: string[] = [];
  for (let i = 0; i < 3; i++) {
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-done', role: 'demo-api' });
    expect(r.status).toBe(201);
    leases.push(r.body.leaseId);
  }
  await openAgentTask(t, 't-kill', [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
  const sub = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
    parentTaskId: 't-kill',
    taskId: 'sub',
    agent: 'spiffe://dev.local/agent/researcher',
    ttlSeconds: 300,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
  });
  expect(sub.status).toBe(201);

  const crash = killAppends();
  // The orchestrator completes a task; the worker revokes its leases; an admin ends a task tree. Each
  // decision is made in Redis, then its process "dies" before the record is appended.
  await expect(services.tasks.complete(who(ORCH), 't-done')).rejects.toThrow(/died/);
  await waitFor(async () => (await deps.leases.getMany(leases)).every((l) => l.status === 'revoked'), 10_000);
  await expect(services.admin.revoke(who(ADMIN), { taskId: 't-kill' })).rejects.toThrow(/died/);
  expect((await deps.tasks.getMany(['t-done', 't-kill', 't-kill~sub'])).map((x) => x.status)).toEqual([
    'completed',
    'completed',
    'completed',
  ]);
  crash.revive();

  const buckets = [...new Set(['t-done', 't-kill'].map((id) => keys.bucketOfTask(id)))];
  for (const b of buckets) await ageOutbox(b);
  await sweeper!.reconcile();

  const recs = await auditRecords(redis, keys);
  const of = (action: string, taskId: string) => recs.filter((r) => r.action === action && r.taskId === taskId);
  const complete = of('task.complete', 't-done');
  expect(complete).toHaveLength(1);
  expect(complete[0]).toMatchObject({ actor: `spiffe://dev.local${ORCH}`, decision: 'ok', detail: { tasks: 1, leases: 3 } });
  const revoked = of('lease.revoke', 't-done');
  expect(revoked.map((r) => r.leaseId).sort()).toEqual([...leases].sort());
  expect(revoked.every((r) => r.reason === 'task_completed' && r.actor === 'broker')).toBe(true);
  for (const id of ['t-kill', 't-kill~sub']) {
    expect(of('task.revoke', id)).toHaveLength(1);
    expect(of('task.revoke', id)[0]).toMatchObject({ actor: 'broker', reason: 'revoked_by_admin' });
  }
  for (const b of buckets) expect(await redis.zcard(`${keys.base(b)}audit-outbox`)).toBe(0);

  // The dead process's append arriving after all (it was only slow): dropped, the record stays single.
  const member = JSON.stringify({ action: 'task.complete', actor: 'broker', decision: 'ok', taskId: 't-done', reason: 'late' });
  await redis.zadd(`${keys.base(keys.bucketOfTask('t-done'))}audit-outbox`, Date.now(), member);
  const b = keys.bucketOfTask('t-done');
  await Promise.all([deps.audit.appendOutbox(b, [member], Date.now()), deps.audit.appendOutbox(b, [member], Date.now())]);
  expect((await auditRecords(redis, keys)).filter((r) => r.reason === 'late')).toHaveLength(1);
});

test("the worker's record of an upstream revocation it finished is appended by recovery after a crash", async () => {
  const { deps, sweeper } = t.broker;
  const { keys, redis } = deps;
  // The broker's JWT provider posing as an upstream one: its leases end through a lease-end job (worker.finish).
  const real = deps.providers.get('jwt')!;
  deps.providers.set('jwt', Object.assign(Object.create(Object.getPrototypeOf(real)), real, { upstream: true, revoke: async () => {} }));
  try {
    await openAgentTask(t, 't-up', [{ role: 'demo-api' }]);
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-up', role: 'demo-api' });
    expect(r.status).toBe(201);
    const leaseId: string = r.body.leaseId;
    const crash = killAppends();
    await deps.queue.endLeases([{ leaseId, reason: 'revoked_by_caller', requestedAt: deps.clock.now() }]);
    await waitFor(async () => (await deps.leases.get(leaseId))?.status === 'revoked', 10_000);
    crash.revive();
    await ageOutbox(keys.bucketOfId(leaseId)!);
    await sweeper!.reconcile();
    const recs = (await auditRecords(redis, keys)).filter((x) => x.action === 'lease.revoke' && x.leaseId === leaseId);
    expect(recs).toHaveLength(1);
    expect(recs[0]).toMatchObject({ actor: 'broker', decision: 'ok', reason: 'revoked_by_caller', detail: { attempt: 1 } });
  } finally {
    deps.providers.set('jwt', real);
  }
});
