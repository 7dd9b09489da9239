import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { setTimeout as sleep } from 'node:timers/promises';
import { OutboxRecovery } from '../../src/audit/outbox.ts';
import { outboxMember } from '../../src/audit/outbox-member.ts';
import type { OutboxEvent } from '../../src/audit/record.ts';
import type { AuditChain } from '../../src/redis/keys.ts';
import { ADMIN, auditRecords, call, ORCH, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';

/**
 * A chain's outbox recovery runs under a lock (one instance per chain). A `quarantine.add` record a dead process
 * left has recovery end the identity's tasks first (AdminService.recoveredQuarantine), which, with many tasks,
 * outlasts the lock's TTL. The lock was not extended: it lapsed, and a second instance's recovery ran the same
 * endings at the same time. Here the lock's TTL is short (600 ms) and the endings are held back for longer.
 */
const LOCK_MS = 600;
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('outbox-recovery-lock', { broker: { worker: false } });
});
afterAll(async () => {
  await t.close();
});

/** What a process that died right after putting a quarantine in force leaves: the quarantine, its record in the outbox (aged), a task open. */
async function deadQuarantine(agentPath: string, taskId: string): Promise<string> {
  const { deps } = t.broker;
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${agentPath}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  expect(open.status).toBe(201);
  const pattern = `spiffe://dev.local${agentPath}`;
  const at = new Date().toISOString();
  const member = outboxMember({
    action: 'quarantine.add',
    actor: `spiffe://dev.local${ADMIN}`,
    decision: 'ok',
    reason: 'r',
    detail: { pattern, at },
  });
  await deps.quarantine.add({ pattern, reason: 'r', by: `spiffe://dev.local${ADMIN}`, at }, member);
  await deps.redis.zadd(deps.keys.auditOutbox('ops'), 'XX', Date.now() - 60_000, member);
  return pattern;
}

type Before = (chain: AuditChain, e: OutboxEvent, signal?: AbortSignal) => Promise<void>;

function recovery(before: Before): OutboxRecovery {
  const { redis, keys, audit, logger, clock, metrics } = t.broker.deps;
  return new OutboxRecovery({ redis, keys, audit, logger, clock, metrics, before }, 60_000, { lockMs: LOCK_MS });
}

const real: Before = (chain, e, signal) => (chain === 'ops' ? t.broker.services.admin.recoveredQuarantine(e, signal) : Promise.resolve());

test("recovery keeps its lock while a quarantine's endings outlast its TTL: a second instance does not run them at the same time", async () => {
  const pattern = await deadQuarantine('/agent/lock-slow', 't-lock-slow');
  let calls = 0;
  let started!: () => void;
  const inside = new Promise<void>((r) => {
    started = r;
  });
  // The endings of many tasks, as slow as they are: held back for more than three TTLs.
  const slow: Before = async (chain, e, signal) => {
    if (e.action === 'quarantine.add') {
      calls += 1;
      started();
      await sleep(LOCK_MS * 4);
    }
    return real(chain, e, signal);
  };
  const a = recovery(slow);
  const b = recovery(slow);
  const first = a.pass();
  await inside;
  // Past the TTL: before, the lock had lapsed and the second instance took the chain and ran the endings too.
  await sleep(LOCK_MS * 2);
  expect(await b.pass()).toBe(0);
  expect(await first).toBe(1);
  expect(calls).toBe(1);
  const { redis, keys } = t.broker.deps;
  expect(await redis.hget(keys.task('t-lock-slow'), 'status')).toBe('completed');
  const added = (await auditRecords(redis, keys)).filter((r) => r.action === 'quarantine.add' && r.detail?.pattern === pattern);
  expect(added).toHaveLength(1);
  expect(await redis.zcard(keys.auditOutbox('ops'))).toBe(0);
}, 30_000);

test('recovery that loses its lock stops: it ends nothing and appends nothing, leaving both to whoever holds the chain', async () => {
  const pattern = await deadQuarantine('/agent/lock-lost', 't-lock-lost');
  const { redis, keys } = t.broker.deps;
  const lockKey = keys.lock('audit-outbox:ops');
  let aborted = false;
  // Another instance takes the lock (as after a lapse) while this one is about to end the tasks.
  const stolen: Before = async (chain, e, signal) => {
    if (e.action === 'quarantine.add') {
      await redis.set(lockKey, 'another-instance', 'PX', LOCK_MS);
      // Before: no signal, nothing noticed the lock was gone.
      await waitFor(async () => signal?.aborted === true, 5000, 50);
      aborted = true;
    }
    return real(chain, e, signal);
  };
  expect(await recovery(stolen).pass()).toBe(0);
  expect(aborted).toBe(true);
  expect(await redis.hget(keys.task('t-lock-lost'), 'status')).toBe('open');
  const added = async () => (await auditRecords(redis, keys)).filter((r) => r.action === 'quarantine.add' && r.detail?.pattern === pattern);
  expect(await added()).toHaveLength(0);
  expect(await redis.zcard(keys.auditOutbox('ops'))).toBe(1);
  // The holder's pass (here: the next one once the lock is free) does both, once.
  await redis.del(lockKey);
  expect(await recovery(real).pass()).toBe(1);
  expect(await redis.hget(keys.task('t-lock-lost'), 'status')).toBe('completed');
  expect(await added()).toHaveLength(1);
}, 30_000);
