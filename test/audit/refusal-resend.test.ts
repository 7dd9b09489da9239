import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { Redis } from 'ioredis';
import { AuditLog } from '../../src/audit/audit-log.ts';
import { outboxMember } from '../../src/audit/outbox-member.ts';
import type { OutboxEvent } from '../../src/audit/record.ts';
import { verifyAuditChain } from '../../src/audit/verify.ts';
import { silentLogger } from '../../src/logger.ts';
import { Keys } from '../../src/redis/keys.ts';
import { type RedisClient, script } from '../../src/redis/scripts.ts';
import { dropPrefix, REDIS_URL, uniquePrefix } from '../helpers/broker.ts';

/**
 * A refused issuance: the lease script refuses, so the issue record sent right behind it (its outbox member
 * never added) is refused by audit-append.lua, and with it every record hashed on it: other callers' records
 * in the same batch and in the batch sent behind it, which were re-hashed and sent again. The caller learns
 * of the refusal from the script's answer, before the record's: it withdraws the record (AuditLog.withdraw),
 * which then never leaves if it is still queued, and nothing more is hashed on it if it has left.
 */
let redis: Redis;
beforeAll(() => {
  redis = new Redis(REDIS_URL);
});
afterAll(async () => {
  redis.disconnect();
});

const event = (i: number): OutboxEvent => ({
  action: 'credential.issue',
  actor: 'spiffe://dev.local/agent/a',
  decision: 'allow',
  leaseId: `l${i}`,
});

const APPEND_SHA = script('audit-append').sha;

/** An audit log on a client that counts the audit-append batches it sends, its chain's head already known. */
async function setup(name: string) {
  const prefix = uniquePrefix(name);
  const keys = new Keys(prefix);
  let n = 0;
  const client = new Proxy(redis, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (prop !== 'evalsha') return typeof v === 'function' ? v.bind(target) : v;
      return (...args: unknown[]) => {
        if (args[0] === APPEND_SHA) n += 1;
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  }) as unknown as RedisClient;
  const log = new AuditLog({ redis: client, keys, logger: silentLogger, taskIndexMs: 60_000 });
  await log.append(event(0));
  n = 0;
  return { prefix, keys, log, batches: () => n };
}

const leases = async (keys: Keys) => (await redis.xrange(keys.auditStream('ops'), '-', '+')).map(([, f]) => JSON.parse(f[1]!).leaseId);
const withdraw = (log: AuditLog, member: string) =>
  (log as unknown as { withdraw?: (c: 'ops', m: string) => void }).withdraw?.('ops', member);

test('a refused record still queued is never sent: the batch of other callers it would have joined is written once', async () => {
  const { prefix, keys, log, batches } = await setup('refusal-queued');
  const refused = outboxMember(event(3));
  const present = outboxMember(event(4));
  await redis.zadd(keys.auditOutbox('ops'), Date.now(), present);
  // Two batches in flight; the refused issuance's record and two others queue behind them.
  const flying = [log.append(event(1)), log.append(event(2))];
  const r = log.appendMember(event(3), refused);
  const others = [log.appendMember(event(4), present), log.append(event(5))];
  // The lease script's refusal reaches the caller (its answer comes before the record's).
  withdraw(log, refused);
  expect(await r).toBe(false);
  await Promise.all([...flying, ...others]);
  // Before: the queued batch [3, 4, 5] was refused for 3's absent member and [4, 5] sent again: 4 batches.
  expect(batches()).toBe(3);
  expect(await leases(keys)).toEqual(['l0', 'l1', 'l2', 'l4', 'l5']);
  expect(await verifyAuditChain(redis, keys, 'ops')).toMatchObject({ ok: true, records: 5 });
  await dropPrefix(prefix);
});

test('nothing is hashed on a refused record already in flight: the record appended behind it is sent once', async () => {
  const { prefix, keys, log, batches } = await setup('refusal-flying');
  const refused = outboxMember(event(1));
  const r = log.appendMember(event(1), refused); // sent at once, alone
  withdraw(log, refused);
  const behind = log.append(event(2));
  expect(await r).toBe(false);
  await behind;
  // Before: [2] went out hashed on [1], was refused with it and sent again: 3 batches.
  expect(batches()).toBe(2);
  expect(await leases(keys)).toEqual(['l0', 'l2']);
  expect(await verifyAuditChain(redis, keys, 'ops')).toMatchObject({ ok: true, records: 2 });
  await dropPrefix(prefix);
});

test('an agent still asking after its task ended reaches the lease script once: later requests are refused before it', async () => {
  const { startTestBroker, openAgentTask, call, AGENT, ORCH } = await import('../helpers/broker.ts');
  const t = await startTestBroker('refusal-closed');
  try {
    await openAgentTask(t, 't-closed', [{ role: 'demo-api' }]);
    expect((await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-closed', role: 'demo-api' })).status).toBe(201);
    expect((await call(t.url, 'POST', '/v1/tasks/t-closed/complete', t.as(ORCH), {})).status).toBeLessThan(300);
    const leases = t.broker.deps.leases;
    const create = leases.create.bind(leases);
    let scripts = 0;
    leases.create = (...args) => {
      scripts += 1;
      return create(...args);
    };
    for (let i = 0; i < 5; i++) {
      const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-closed', role: 'demo-api' });
      expect([r.status, r.body.code]).toEqual([409, 'task_not_open']);
    }
    // Before: five lease scripts, each with an issue record behind it refused (and what was hashed on it sent again).
    expect(scripts).toBe(1);
  } finally {
    await t.close();
  }
});
