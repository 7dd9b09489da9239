import { createHash } from 'node:crypto';
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { Pending } from '../../src/audit/chain-writer.ts';
import { outboxMember } from '../../src/audit/outbox-member.ts';
import type { WorkloadIdentity } from '../../src/identity/types.ts';
import type { AuditChain } from '../../src/redis/keys.ts';
import { ADMIN, AGENT, auditRecords, call, ORCH, openAgentTask, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';

/**
 * A process that makes a decision in a script (ends a task or its leases, opens an approval, decides one,
 * issues a credential, runs the kill switch) and dies before appending the audit records: here its appends
 * never reach Redis (each fails, as on a crash nothing would be sent). Those records used to be lost for
 * good while the decision stood. They are in the chain's audit outbox since the script's step, and
 * recovery (OutboxRecovery, in every process) appends them, each exactly once.
 */
let t: TestBroker;
beforeAll(async () => {
  // The outbox gauges reuse one reading for metricsRefreshSeconds (src/metrics.ts): the shortest, so they follow below.
  t = await startTestBroker('outbox-recovery', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', metricsRefreshSeconds: 1 } },
  });
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
async function ageOutbox(b: AuditChain): Promise<string> {
  const { keys, redis } = t.broker.deps;
  const outbox = `${keys.auditBase(b)}audit-outbox`;
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
  const { deps, services } = t.broker;
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
  // decision is made in Redis, then its process "dies" before the record is appended. The completion is
  // answered all the same: it happened, and its records are in the outbox (before: an error).
  await services.tasks.complete(who(ORCH), 't-done');
  await waitFor(async () => (await deps.leases.getMany(leases)).every((l) => l.status === 'revoked'), 10_000);
  // Its endings' records are settled like the completion's, and so is its own outcome: it took the place of
  // the `interrupted` intent in the ops outbox before the append (before: an error, and recovery appended
  // `interrupted` for a kill switch that had finished).
  expect(await services.admin.revoke(who(ADMIN), { taskId: 't-kill' })).toEqual({ tasks: 2, leases: 0 });
  expect((await deps.tasks.getMany(['t-done', 't-kill', 't-kill~sub'])).map((x) => x.status)).toEqual([
    'completed',
    'completed',
    'completed',
  ]);
  crash.revive();

  const buckets = [...new Set(['t-done', 't-kill'].map((id) => keys.bucketOfTask(id)))];
  for (const b of buckets) await ageOutbox(b);
  await ageOutbox('ops');
  await t.broker.outbox.pass();

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
  // The kill switch's own record: its outcome, which it put in the ops outbox in place of its intent once done
  // (before the outbox: none at all; before the swap: `interrupted`).
  const kill = recs.filter((r) => r.action === 'admin.revoke');
  expect(kill).toHaveLength(1);
  expect(kill[0]).toMatchObject({ actor: `spiffe://dev.local${ADMIN}`, chain: 'ops', detail: { taskId: 't-kill', tasks: 2, leases: 0 } });
  for (const b of buckets) expect(await redis.zcard(`${keys.base(b)}audit-outbox`)).toBe(0);
  expect(await redis.zcard(keys.auditOutbox('ops'))).toBe(0);

  // The dead process's append arriving after all (it was only slow): dropped, the record stays single.
  const member = JSON.stringify({ action: 'task.complete', actor: 'broker', decision: 'ok', taskId: 't-done', reason: 'late' });
  await redis.zadd(`${keys.base(keys.bucketOfTask('t-done'))}audit-outbox`, Date.now(), member);
  const b = keys.bucketOfTask('t-done');
  await Promise.all([deps.audit.appendOutbox(b, [member], Date.now()), deps.audit.appendOutbox(b, [member], Date.now())]);
  expect((await auditRecords(redis, keys)).filter((r) => r.reason === 'late')).toHaveLength(1);
});

test("the worker's record of an upstream revocation it finished is appended by recovery after a crash", async () => {
  const { deps } = t.broker;
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
    await t.broker.outbox.pass();
    const recs = (await auditRecords(redis, keys)).filter((x) => x.action === 'lease.revoke' && x.leaseId === leaseId);
    expect(recs).toHaveLength(1);
    expect(recs[0]).toMatchObject({ actor: 'broker', decision: 'ok', reason: 'revoked_by_caller', detail: { attempt: 1 } });
  } finally {
    deps.providers.set('jwt', real);
  }
});

test('records of a task opened, an approval asked for and decided, and an upstream credential issued are appended by recovery after a crash', async () => {
  const { deps, services } = t.broker;
  const { keys, redis } = deps;
  const real = deps.providers.get('jwt')!;
  // The broker's JWT provider posing as an upstream one: its issue record goes with lease-activate.lua.
  deps.providers.set('jwt', Object.assign(Object.create(Object.getPrototypeOf(real)), real, { upstream: true, revoke: async () => {} }));
  const crash = killAppends();
  let approvalId: string | undefined;
  try {
    // Each decision is made in Redis, then its append fails. The caller is answered as if it had not: the
    // decision stands and its record is in the outbox (before: errors, though the task was open, the
    // approval decided and the credential issued, counted against the task's leases, held by nobody).
    const opened = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
      taskId: 't-open',
      agent: `spiffe://dev.local${AGENT}`,
      tenant: 'acme',
      purpose: 'crash',
      ttlSeconds: 600,
      grants: [{ role: 'demo-api' }, { role: 'prod-deploy' }],
    });
    expect(opened.status).toBe(201);
    expect((await deps.tasks.get('t-open'))?.status).toBe('open');
    const asked = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-open', role: 'prod-deploy' });
    expect(asked.status).toBe(202);
    [approvalId] = await redis.zrange(keys.approvals(keys.bucketOfTask('t-open')), '0', '-1');
    await services.approvals.decide(who(ADMIN), approvalId!, 'approve');
    expect((await deps.approvals.get(approvalId!))?.status).toBe('approved');
    const issued = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-open', role: 'demo-api' });
    expect(issued.status).toBe(201);
    expect(issued.body.credentials).toBeDefined();
    const [leaseId] = await deps.tasks.leaseIds('t-open');
    expect(leaseId).toBe(issued.body.leaseId);
    expect((await deps.leases.get(leaseId!))?.status).toBe('active');
  } finally {
    crash.revive();
    deps.providers.set('jwt', real);
  }
  await ageOutbox(keys.bucketOfTask('t-open'));
  await t.broker.outbox.pass();
  const recs = (await auditRecords(redis, keys)).filter((r) => r.taskId === 't-open');
  const of = (action: string) => recs.filter((r) => r.action === action);
  expect(of('task.open')).toHaveLength(1);
  expect(of('task.open')[0]).toMatchObject({
    actor: `spiffe://dev.local${ORCH}`,
    decision: 'allow',
    detail: { agent: `spiffe://dev.local${AGENT}`, tenant: 'acme', roles: ['demo-api', 'prod-deploy'], depth: 0 },
  });
  expect(of('credential.pending')).toHaveLength(1);
  expect(of('credential.pending')[0]).toMatchObject({ actor: `spiffe://dev.local${AGENT}`, role: 'prod-deploy', detail: { approvalId } });
  expect(of('approval.decide')).toHaveLength(1);
  expect(of('approval.decide')[0]).toMatchObject({ actor: `spiffe://dev.local${ADMIN}`, decision: 'allow', detail: { approvalId } });
  const issue = of('credential.issue');
  expect(issue).toHaveLength(1);
  expect(issue[0]).toMatchObject({ actor: `spiffe://dev.local${AGENT}`, role: 'demo-api', decision: 'allow' });
  expect(await redis.zcard(keys.auditOutbox(keys.bucketOfTask('t-open')))).toBe(0);
  expect((await call(t.url, 'GET', '/v1/tasks/t-open/evidence?limit=1', t.as(ORCH))).body.chain).toBe('intact');
});

test('a JWT issued while the audit append fails is handed out; its record is appended by recovery, once', async () => {
  const { deps } = t.broker;
  const { keys, redis } = deps;
  await openAgentTask(t, 't-local', [{ role: 'demo-api' }]);
  const crash = killAppends();
  let issued: Awaited<ReturnType<typeof call>>;
  try {
    // The lease and its record are in Redis (lease-create.lua); only the append behind it fails. Before: 503,
    // and an active lease counted against the task that nobody held.
    issued = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-local', role: 'demo-api' });
  } finally {
    crash.revive();
  }
  expect(issued.status).toBe(201);
  expect(typeof issued.body.credentials.access_token).toBe('string');
  expect((await deps.leases.get(issued.body.leaseId))?.status).toBe('active');
  const b = keys.bucketOfTask('t-local');
  expect(await redis.zcard(keys.auditOutbox(b))).toBeGreaterThan(0);
  await ageOutbox(b);
  await t.broker.outbox.pass();
  const recs = (await auditRecords(redis, keys)).filter((r) => r.action === 'credential.issue' && r.leaseId === issued.body.leaseId);
  expect(recs).toHaveLength(1);
  expect(recs[0]).toMatchObject({ actor: `spiffe://dev.local${AGENT}`, decision: 'allow', role: 'demo-api', taskId: 't-local' });
  expect(await redis.zcard(keys.auditOutbox(b))).toBe(0);
});

test('two decisions whose records are identical are two outbox members: both records land', async () => {
  const { deps } = t.broker;
  const { keys, redis } = deps;
  await openAgentTask(t, 't-twice', [{ role: 'demo-api' }]);
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-twice', role: 'demo-api' });
  const leaseId: string = r.body.leaseId;
  // Two jobs of one lease (the sweeper handed it over again while the first retried) each record their first
  // failed revoke: the same record twice. As one outbox member, the second was dropped as already written.
  const record = {
    action: 'lease.revoke_failed' as const,
    actor: 'broker',
    decision: 'error' as const,
    taskId: 't-twice',
    role: 'demo-api',
    leaseId,
    reason: 'upstream_error',
    detail: { attempt: 1 },
  };
  const fields = { status: 'revoke_failed' as const, lastError: 'upstream_error', attempts: 1 };
  const [a, b] = [await deps.leases.mark(leaseId, fields, record), await deps.leases.mark(leaseId, fields, record)];
  const bucket = keys.bucketOfTask('t-twice');
  await Promise.all([a, b].map((x) => deps.audit.appendOutbox(bucket, [x.recorded!.member], x.recorded!.at)));
  const recs = (await auditRecords(redis, keys)).filter((x) => x.action === 'lease.revoke_failed' && x.leaseId === leaseId);
  expect(recs).toHaveLength(2);
  expect(await redis.zcard(keys.auditOutbox(bucket))).toBe(0);
});

/** The value of an unlabelled metric in Prometheus text. */
async function metric(name: string): Promise<number> {
  const text = await t.broker.deps.metrics.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return Number(line?.split(' ')[1]);
}

test('a member that is not a record of its chain is parked and audited without holding up the rest; the gauges show the outbox', async () => {
  const { deps } = t.broker;
  const { keys, redis } = deps;
  const b = keys.bucketOfTask('t-poison');
  const other = ['x1', 'x2', 'x3', 'x4', 'x5'].find((id) => keys.bucketOfTask(id) !== b)!;
  const good = outboxMember({ action: 'task.complete', actor: 'broker', decision: 'ok', taskId: 't-poison', reason: 'behind' });
  const elsewhere = outboxMember({ action: 'task.complete', actor: 'broker', decision: 'ok', taskId: other });
  const old = Date.now() - 120_000;
  await redis.zadd(keys.auditOutbox(b), old, 'not a record', old, '{"action":1}', old + 1, elsewhere, old + 2, good);
  await waitFor(async () => (await metric('jit_audit_outbox_records')) === 4, 5000);
  expect(await metric('jit_audit_outbox_oldest_seconds')).toBeGreaterThanOrEqual(119);
  await t.broker.outbox.pass();
  const recs = await auditRecords(redis, keys);
  expect(recs.filter((r) => r.reason === 'behind')).toHaveLength(1);
  const poison = recs.filter((r) => r.action === 'audit.outbox_poison');
  expect(poison).toHaveLength(3);
  expect(poison.every((r) => r.chain === b && r.decision === 'error' && r.actor === 'broker' && r.reason === 'not_a_record')).toBe(true);
  expect(poison.map((r) => r.detail.sha256).sort()).toEqual(
    ['not a record', '{"action":1}', elsewhere].map((m) => createHash('sha256').update(m).digest('hex')).sort(),
  );
  expect(await redis.zcard(keys.auditOutbox(b))).toBe(0);
  expect((await redis.zrange(keys.auditOutboxParked(b), '0', '-1')).sort()).toEqual(['not a record', '{"action":1}', elsewhere].sort());
  // The next reading (at most a refresh interval later) shows the outbox emptied and the parked members.
  await waitFor(async () => (await metric('jit_audit_outbox_records')) === 0, 5000);
  expect(await metric('jit_audit_outbox_oldest_seconds')).toBe(0);
  expect(await metric('jit_audit_outbox_parked')).toBe(3);
  expect(await metric('jit_audit_outbox_poison_total')).toBe(3);
});
