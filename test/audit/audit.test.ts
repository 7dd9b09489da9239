import { Redis } from 'ioredis';
import { AuditLog } from '../../src/audit/audit-log.ts';
import { outboxMember } from '../../src/audit/outbox-member.ts';
import type { AuditEvent, OutboxEvent } from '../../src/audit/record.ts';
import { verifyAuditChain } from '../../src/audit/verify.ts';
import { silentLogger } from '../../src/logger.ts';
import { coalesceWrites } from '../../src/redis/coalesce.ts';
import { Keys } from '../../src/redis/keys.ts';
import { auditRecords, dropPrefix, REDIS_URL, uniquePrefix } from '../helpers/broker.ts';
import { countWrites } from '../helpers/socket-writes.ts';

let redis: Redis;
beforeAll(() => {
  redis = new Redis(REDIS_URL);
});
afterAll(async () => {
  await redis.quit();
});

async function fresh(n: number) {
  const prefix = uniquePrefix('audit');
  const keys = new Keys(prefix);
  const conns = [new Redis(REDIS_URL), new Redis(REDIS_URL)];
  // Two "instances" appending concurrently to one chain.
  const logs = conns.map((c) => new AuditLog({ redis: c, keys, logger: silentLogger, taskIndexMs: 60_000 }));
  await Promise.all(
    Array.from({ length: n }, (_, i) =>
      logs[i % 2]!.append({ action: 'credential.issue', actor: `spiffe://dev.local/agent/${i}`, decision: 'allow', leaseId: `l${i}` }),
    ),
  );
  await Promise.all(conns.map((c) => c.quit()));
  return { prefix, keys };
}

test('concurrent appends from two instances form one valid chain', async () => {
  const { prefix, keys } = await fresh(300);
  expect(await verifyAuditChain(redis, keys, 'ops')).toMatchObject({ ok: true, records: 300 });
  await dropPrefix(prefix);
});

test.each([
  [
    'an edited record',
    async (ids: string[], k: Keys) => {
      // Someone with Redis access rebuilds the stream with one record changed (same ids).
      const all = await redis.xrange(k.auditStream('ops'), '-', '+');
      const m = redis.multi().del(k.auditStream('ops'));
      for (const [id, f] of all) {
        const r = JSON.parse(f[1]!);
        if (id === ids[5]) r.decision = 'deny';
        m.xadd(k.auditStream('ops'), id, 'r', JSON.stringify(r));
      }
      await m.exec();
    },
    6,
  ],
  [
    'a deleted record',
    async (ids: string[], k: Keys) => {
      await redis.xdel(k.auditStream('ops'), ids[7]!);
    },
    9,
  ],
  [
    'a deleted tail',
    async (ids: string[], k: Keys) => {
      await redis.xdel(k.auditStream('ops'), ids[ids.length - 1]!);
    },
    20,
  ],
])('verify names the first broken record after %s', async (_n, tamper, seq) => {
  const { prefix, keys } = await fresh(20);
  const ids = (await redis.xrange(keys.auditStream('ops'), '-', '+')).map(([id]) => id);
  await tamper(ids, keys);
  const res = await verifyAuditChain(redis, keys, 'ops');
  expect(res.ok).toBe(false);
  expect(res.brokenAt?.seq).toBe(seq);
  await dropPrefix(prefix);
});

test('records never contain the secrets they describe (issuance path)', async () => {
  // The audit event type has no field for a credential; this guards the JSON shape.
  const { prefix, keys } = await fresh(3);
  const all = await redis.xrange(keys.auditStream('ops'), '-', '+');
  for (const [, f] of all)
    expect(Object.keys(JSON.parse(f[1]!)).sort()).toEqual(['action', 'actor', 'decision', 'hash', 'leaseId', 'prev', 'seq', 'time']);
  await dropPrefix(prefix);
});

test('denials from more distinct callers in a minute than the fold table holds fold per code and action, not one record each', async () => {
  const prefix = uniquePrefix('audit-fold');
  const keys = new Keys(prefix);
  const log = new AuditLog({ redis, keys, logger: silentLogger, taskIndexMs: 60_000, foldMaxKeys: 5 });
  const deny = (i: number) =>
    log.denial({ action: 'access.deny', actor: `spiffe://dev.local/agent/${i}`, decision: 'deny', reason: 'rate_limited' });
  for (let i = 0; i < 45; i++) await deny(i);
  await log.flushFolds(true);
  const records = (await redis.xrange(keys.auditStream('ops'), '-', '+')).map(([, f]) => JSON.parse(f[1]!));
  // Five callers tracked one by one, then the 40 others as one record at once and one with the count of the rest.
  // Before: 45 records, one per caller past the table's size.
  expect(records).toHaveLength(7);
  expect(records.slice(5).map((r) => ({ count: r.count, overflow: r.detail?.overflow }))).toEqual([
    { count: undefined, overflow: true },
    { count: 39, overflow: true },
  ]);
  // The folded one counts 39 callers: it is none of theirs, and names the first 16 of them.
  expect(records[6]).toMatchObject({ actor: 'broker', detail: { actorsTruncated: true } });
  expect(records[6].detail.actors).toEqual(Array.from({ length: 16 }, (_, i) => `spiffe://dev.local/agent/${i + 6}`));
  await dropPrefix(prefix);
});

test("past the fold table, a flood of decoy denials on one task does not hide another caller's denial about another task", async () => {
  const prefix = uniquePrefix('audit-fold-task');
  const keys = new Keys(prefix);
  const log = new AuditLog({ redis, keys, logger: silentLogger, taskIndexMs: 60_000, foldMaxKeys: 3 });
  const deny = (who: string, taskId: string) =>
    log.denial({ action: 'credential.deny', actor: `spiffe://dev.local/agent/${who}`, decision: 'deny', reason: 'not_task_agent', taskId });
  for (let i = 0; i < 10; i++) await deny(`d${i}`, 'decoy');
  await deny('mallory', 'victim');
  await log.flushFolds(true);
  const victim = (await redis.lrange(keys.taskAudit('victim'), 0, -1)).length;
  // Before: mallory's denial folded into the decoys' overflow record, under the decoy task.
  expect(victim).toBe(1);
  await dropPrefix(prefix);
});

/** A client whose every command fails while `down.now` is set (Redis unreachable), and works again after. */
function flakyRedis(down: { now: boolean }): Redis {
  return new Proxy(redis, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        if (down.now) throw new Error('Connection is closed.');
        return v.apply(target, args);
      };
    },
  });
}

test("a denial whose record could not be written is counted in the minute's folded record, which says so", async () => {
  const prefix = uniquePrefix('audit-fold-lost');
  const keys = new Keys(prefix);
  const down = { now: true };
  const log = new AuditLog({ redis: flakyRedis(down), keys, logger: silentLogger, taskIndexMs: 60_000 });
  const deny = () => log.denial({ action: 'access.deny', actor: 'spiffe://dev.local/agent/x', decision: 'deny', reason: 'not_task_agent' });
  await expect(deny()).rejects.toThrow(); // Redis down: its caller gets an error
  down.now = false;
  await deny(); // folded, as the second denial of the minute (no wait on a failing Redis per denial)
  await log.flushFolds(true);
  const records = (await redis.xrange(keys.auditStream('ops'), '-', '+')).map(([, f]) => JSON.parse(f[1]!));
  // Before: count 1, as if the first had its own record; it had none.
  expect(records.map((r) => ({ reason: r.reason, count: r.count, detail: r.detail }))).toEqual([
    { reason: 'not_task_agent', count: 2, detail: { folded: true, firstUnwritten: true } },
  ]);
  await dropPrefix(prefix);
});

test('folded counts that could not be written are kept and written by the next flush', async () => {
  const prefix = uniquePrefix('audit-fold-retry');
  const keys = new Keys(prefix);
  const down = { now: false };
  const log = new AuditLog({ redis: flakyRedis(down), keys, logger: silentLogger, taskIndexMs: 60_000 });
  const deny = () => log.denial({ action: 'access.deny', actor: 'spiffe://dev.local/agent/y', decision: 'deny', reason: 'not_task_agent' });
  for (let i = 0; i < 3; i++) await deny();
  down.now = true;
  await log.flushFolds(true); // logged, not thrown
  down.now = false;
  await log.flushFolds(true);
  const records = (await redis.xrange(keys.auditStream('ops'), '-', '+')).map(([, f]) => JSON.parse(f[1]!));
  // Before: the count of the two folded denials was dropped with the failed write.
  expect(records.map((r) => r.count)).toEqual([undefined, 2]);
  await dropPrefix(prefix);
});

test("one caller's denials about two tasks in one minute are each under their own task", async () => {
  const prefix = uniquePrefix('audit-fold-two-tasks');
  const keys = new Keys(prefix);
  const log = new AuditLog({ redis, keys, logger: silentLogger, taskIndexMs: 60_000 });
  const deny = (taskId: string) =>
    log.denial({ action: 'credential.deny', actor: 'spiffe://dev.local/agent/z', decision: 'deny', reason: 'role_not_granted', taskId });
  await deny('first');
  await deny('second');
  await deny('second');
  await log.flushFolds(true);
  // Before: the second task's denials folded into the first task's record, missing from its own evidence.
  expect(await redis.llen(keys.taskAudit('second'))).toBe(2);
  expect(await redis.llen(keys.taskAudit('first'))).toBe(1);
  await dropPrefix(prefix);
});

/** Redis failing slowly, as ioredis does with a command timeout and retries: each command rejects after `ms`. */
function slowFailing(state: { down: boolean; ms: number }): Redis {
  return new Proxy(redis, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        if (state.down) return new Promise((_, reject) => setTimeout(() => reject(new Error('Command timed out')), state.ms));
        return v.apply(target, args);
      };
    },
  });
}

const folded = async (keys: Keys) =>
  (await redis.xrange(keys.auditStream('ops'), '-', '+')).map(([, f]) => JSON.parse(f[1]!)).filter((r) => r.detail?.folded);

test('a first denial whose write fails only after the minute was flushed is still counted (found in review)', async () => {
  const prefix = uniquePrefix('audit-fold-race');
  const keys = new Keys(prefix);
  const state = { down: true, ms: 300 };
  let now = Date.UTC(2026, 11, 1, 16, 0, 59, 900); // 100 ms before the minute ends
  const log = new AuditLog({ redis: slowFailing(state), keys, logger: silentLogger, taskIndexMs: 60_000, now: () => now });
  const first = log
    .denial({ action: 'access.deny', actor: 'spiffe://dev.local/agent/x', decision: 'deny', reason: 'not_task_agent' })
    .catch(() => 'rejected');
  now += 5_000;
  await log.flushFolds(false); // takes the minute's entry while its first write is still failing
  expect(await first).toBe('rejected');
  state.down = false;
  await log.flushFolds(true);
  // Before: the count went to a detached entry; no record at all.
  expect((await folded(keys)).map((r) => ({ count: r.count, firstUnwritten: r.detail.firstUnwritten }))).toEqual([
    { count: 1, firstUnwritten: true },
  ]);
  await dropPrefix(prefix);
});

test('folded records that fail part-way are retried one by one: no count written twice (found in review)', async () => {
  const prefix = uniquePrefix('audit-fold-dup');
  const keys = new Keys(prefix);
  const state = { down: false, ms: 200 };
  const log = new AuditLog({ redis: slowFailing(state), keys, logger: silentLogger, taskIndexMs: 60_000, foldMaxKeys: 100_000 });
  const n = 1500;
  const deny = (i: number) =>
    log.denial({ action: 'access.deny', actor: `spiffe://dev.local/agent/${i}`, decision: 'deny', reason: 'not_task_agent' });
  await Promise.all(Array.from({ length: n }, (_, i) => deny(i)));
  for (let i = 0; i < n; i++) await deny(i); // one repeat each
  state.down = true;
  const failing = log.flushFolds(true); // the first batch fails; the ones queued behind it are written once Redis is back
  await new Promise((r) => setTimeout(r, 100));
  state.down = false;
  await failing;
  await log.flushFolds(true);
  // Before: 2,499; every record went back to the table though most were written.
  expect((await folded(keys)).reduce((sum, r) => sum + r.count, 0)).toBe(n);
  await dropPrefix(prefix);
}, 60_000);

test('one caller denied about many tasks in a minute: a few tasks get their own record, the rest fold together (found in review)', async () => {
  const prefix = uniquePrefix('audit-fold-many-tasks');
  const keys = new Keys(prefix);
  const now = Date.UTC(2026, 11, 1, 16, 0, 10); // one minute for all of them
  const log = new AuditLog({ redis, keys, logger: silentLogger, taskIndexMs: 60_000, now: () => now });
  for (let i = 0; i < 50; i++)
    await log.denial({
      action: 'access.deny',
      actor: 'spiffe://dev.local/agent/m',
      decision: 'deny',
      reason: 'not_orchestrator',
      taskId: `m-${i}`,
    });
  await log.flushFolds(true);
  const all = await auditRecords(redis, keys);
  // Before: 50 records at once, and 50 task indexes: a caller naming a new task each time grew the log.
  expect(all.length).toBeLessThanOrEqual(5);
  expect(all.reduce((sum, r) => sum + (r.count ?? 1), 0)).toBe(50);
  expect(all.flatMap((r) => (r.taskId === undefined ? [] : [r.taskId])).sort()).toEqual(['m-0', 'm-1', 'm-2']);
  expect(all.find((r) => r.detail?.manyTasks && r.count === undefined)).toMatchObject({ detail: { manyTasks: true } });
  await dropPrefix(prefix);
});

test.each([
  ['the flush writes the entry it took', false],
  ['the flush fails to write it too', true],
])('a first write failing after a flush took its entry with repeats: counts stay exact, %s (found in review)', async (_, flushFails) => {
  const prefix = uniquePrefix('audit-fold-taken');
  const keys = new Keys(prefix);
  const state = { down: true, ms: 300 };
  let now = Date.UTC(2026, 11, 1, 16, 0, 59, 900);
  const log = new AuditLog({ redis: slowFailing(state), keys, logger: silentLogger, taskIndexMs: 60_000, now: () => now });
  const ev = { action: 'access.deny' as const, actor: 'spiffe://dev.local/agent/x', decision: 'deny' as const, reason: 'not_task_agent' };
  const first = log.denial(ev).catch(() => 'rejected');
  await log.denial(ev);
  await log.denial(ev); // two repeats, counted
  now += 5_000;
  if (!flushFails) state.down = false; // Redis back before the slow first write gives up
  const flushing = log.flushFolds(false); // takes the entry (count 2)
  expect(await first).toBe('rejected');
  await flushing;
  state.down = false;
  await log.flushFolds(true);
  // Three denials, none with a record of its own. Before: 5 (the written entry put back) or 6 (added to itself).
  expect((await folded(keys)).reduce((sum, r) => sum + r.count, 0)).toBe(3);
  await dropPrefix(prefix);
});

describe('records sent behind what they record', () => {
  const event = (i: number): OutboxEvent => ({
    action: 'credential.issue',
    actor: 'spiffe://dev.local/agent/a',
    decision: 'allow',
    leaseId: `l${i}`,
  });

  test('a record whose outbox member is absent is not written; the records around it are, in order, on a valid chain', async () => {
    const prefix = uniquePrefix('audit-if');
    const keys = new Keys(prefix);
    const log = new AuditLog({ redis, keys, logger: silentLogger, taskIndexMs: 60_000 });
    await log.append(event(0));
    const [absent, present] = [outboxMember(event(1)), outboxMember(event(3))];
    await redis.zadd(keys.auditOutbox('ops'), Date.now(), present);
    // Three batches: the first refused (its member is absent), the second sent behind it refused with it, sent again.
    const results = await Promise.all([log.appendMember(event(1), absent), log.append(event(2)), log.appendMember(event(3), present)]);
    expect(results).toEqual([false, undefined, true]);
    expect(await redis.zcard(keys.auditOutbox('ops'))).toBe(0);
    const leases = (await redis.xrange(keys.auditStream('ops'), '-', '+')).map(([, f]) => JSON.parse(f[1]!).leaseId);
    expect(leases).toEqual(['l0', 'l2', 'l3']);
    expect(await verifyAuditChain(redis, keys, 'ops')).toMatchObject({ ok: true, records: 3 });
    await dropPrefix(prefix);
  });

  test('a record sent while another batch is in flight goes out in the same socket write as the command before it', async () => {
    const prefix = uniquePrefix('audit-pipe');
    const keys = new Keys(prefix);
    const c = new Redis(REDIS_URL);
    coalesceWrites(c);
    await new Promise((resolve) => c.once('ready', resolve));
    const log = new AuditLog({ redis: c, keys, logger: silentLogger, taskIndexMs: 60_000 });
    await log.append(event(0));
    const seen = countWrites(c);
    const inFlight = log.append(event(1));
    const member = outboxMember(event(2));
    void c.zadd(keys.auditOutbox('ops'), Date.now(), member); // what the record is about (the lease script adds its member)
    const record = log.appendMember(event(2), member);
    expect(await record).toBe(true);
    await inFlight;
    // Before: the second record waited for the first batch's answer and went in a write of its own.
    expect(seen).toMatchObject({ writes: 1, commands: 3 });
    expect(await verifyAuditChain(redis, keys, 'ops')).toMatchObject({ ok: true, records: 3 });
    await c.quit();
    await dropPrefix(prefix);
  });

  test('two instances appending over many turns, batches in flight on both, form one valid chain', async () => {
    const prefix = uniquePrefix('audit-race');
    const keys = new Keys(prefix);
    const conns = [new Redis(REDIS_URL), new Redis(REDIS_URL)];
    const logs = conns.map((c) => new AuditLog({ redis: c, keys, logger: silentLogger, taskIndexMs: 60_000 }));
    const all: Promise<void>[] = [];
    for (let i = 0; i < 400; i++) {
      all.push(logs[i % 2]!.append(event(i)));
      if (i % 3 === 0) await new Promise((r) => setImmediate(r));
    }
    await Promise.all(all);
    expect(await verifyAuditChain(redis, keys, 'ops')).toMatchObject({ ok: true, records: 400 });
    const leases = new Set((await redis.xrange(keys.auditStream('ops'), '-', '+')).map(([, f]) => JSON.parse(f[1]!).leaseId));
    expect(leases.size).toBe(400);
    await Promise.all(conns.map((c) => c.quit()));
    await dropPrefix(prefix);
  });
});

test('a batch written whose answer was lost and that the client sent again is not written twice, nor the batch behind it', async () => {
  const prefix = uniquePrefix('audit-resent');
  const keys = new Keys(prefix);
  const event = (i: number): OutboxEvent => ({
    action: 'credential.issue',
    actor: 'spiffe://dev.local/agent/a',
    decision: 'allow',
    leaseId: `l${i}`,
  });
  // What ioredis does after a dropped connection: each unanswered script runs again, and its second answer counts.
  const twice = new Proxy(redis, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (prop !== 'evalsha') return typeof v === 'function' ? v.bind(target) : v;
      return (...args: unknown[]) => v.apply(target, args).then(() => v.apply(target, args));
    },
  });
  const log = new AuditLog({ redis: twice, keys, logger: silentLogger, taskIndexMs: 60_000 });
  await log.append(event(0));
  // Two batches in flight: each runs, then runs again once the first answer is in (after both first runs).
  await Promise.all([log.append(event(1)), log.append(event(2))]);
  const leases = (await redis.xrange(keys.auditStream('ops'), '-', '+')).map(([, f]) => JSON.parse(f[1]!).leaseId);
  // Before: l1 again after l2 (its second run was refused as contention and its record re-hashed and sent).
  expect(leases).toEqual(['l0', 'l1', 'l2']);
  expect(await verifyAuditChain(redis, keys, 'ops')).toMatchObject({ ok: true, records: 3 });
  await dropPrefix(prefix);
});

test('a record that cannot be serialised fails alone; the records of its batch are written', async () => {
  const prefix = uniquePrefix('audit-poison');
  const keys = new Keys(prefix);
  const log = new AuditLog({ redis, keys, logger: silentLogger, taskIndexMs: 60_000 });
  const event = (i: number, detail?: AuditEvent['detail']): AuditEvent => ({
    action: 'credential.issue',
    actor: 'spiffe://dev.local/agent/a',
    decision: 'allow',
    leaseId: `l${i}`,
    ...(detail ? { detail } : {}),
  });
  await log.append(event(0));
  const results = await Promise.allSettled([
    log.append(event(1)),
    log.append(event(2)),
    log.append(event(3, { n: 1n as unknown as number })),
    log.append(event(4)),
  ]);
  expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'fulfilled']);
  await log.flush();
  const leases = (await redis.xrange(keys.auditStream('ops'), '-', '+')).map(([, f]) => JSON.parse(f[1]!).leaseId);
  expect(leases).toEqual(['l0', 'l1', 'l2', 'l4']);
  expect(await verifyAuditChain(redis, keys, 'ops')).toMatchObject({ ok: true, records: 4 });
  await dropPrefix(prefix);
});
