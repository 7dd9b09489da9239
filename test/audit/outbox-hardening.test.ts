import { readdirSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { OutboxRecovery } from '../../src/audit/outbox.ts';
import { OUTBOX_MEMBER_MAX_BYTES, outboxMember } from '../../src/audit/outbox-member.ts';
import { OUTBOX_ACTION_SET } from '../../src/audit/record.ts';
import { verifyAuditChain } from '../../src/audit/verify.ts';
import type { Pending } from '../../src/audit/chain-writer.ts';
import type { WorkloadIdentity } from '../../src/identity/types.ts';
import type { AuditChain } from '../../src/redis/keys.ts';
import type { RedisClient } from '../../src/redis/scripts.ts';
import { ADMIN, auditRecords, call, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * The audit outbox is the one way into the hash-chained log that is not the broker's own code: anyone who
 * can write Redis can put a member there, and recovery chains it. What such a member can and cannot do
 * (docs/audit.md, "What a Redis writer can do through the outbox").
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('outbox-hardening');
});
afterAll(async () => {
  await t.close();
});

/** The value of an unlabelled metric in Prometheus text. */
async function metric(name: string): Promise<number> {
  const text = await t.broker.deps.metrics.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return Number(line?.split(' ')[1]);
}

/** Puts members in `chain`'s outbox as a dead process would have left them a minute ago, in this order. */
async function leave(chain: AuditChain, members: string[]): Promise<void> {
  const { keys, redis } = t.broker.deps;
  const old = Date.now() - 60_000;
  const args: (string | number)[] = [];
  for (const [i, m] of members.entries()) args.push(old + i, m);
  await redis.zadd(keys.auditOutbox(chain), ...args);
}

const record = (taskId: string, reason: string) => ({ action: 'task.complete', actor: 'broker', decision: 'ok', taskId, reason });

test('a member carrying chain-owned fields, another action, another field or a nested detail is parked; the real records around it are chained; verify stays intact', async () => {
  const { keys, redis } = t.broker.deps;
  const b = keys.bucketOfTask('t-forge');
  const real = (n: number) =>
    outboxMember({ action: 'task.complete', actor: 'broker', decision: 'ok', taskId: 't-forge', reason: `real-${n}` });
  const poison = [
    // Copied into the hashed record, a `hash` field made the record's hash disagree with its content.
    `1 ${JSON.stringify({ ...record('t-forge', 'forged-hash'), hash: 'f'.repeat(64) })}`,
    `2 ${JSON.stringify({ ...record('t-forge', 'forged-seq'), seq: 1, prev: '0'.repeat(64), time: '2020-01-01T00:00:00.000Z' })}`,
    // Actions no script or broker code puts in an outbox: a forged sign-in, a quarantine lifted.
    `3 ${JSON.stringify({ action: 'console.signin', actor: 'spiffe://dev.local/admin', decision: 'allow', taskId: 't-forge' })}`,
    `4 ${JSON.stringify({ action: 'quarantine.remove', actor: 'spiffe://dev.local/admin', decision: 'ok', taskId: 't-forge' })}`,
    `5 ${JSON.stringify({ ...record('t-forge', 'extra'), note: 'not an AuditEvent field' })}`,
    `6 ${JSON.stringify({ ...record('t-forge', 'nested'), detail: { a: { b: { c: 1 } } } })}`,
    `7 ${JSON.stringify({ ...record('t-forge', 'count'), count: -1 })}`,
  ];
  await leave(b, [real(1), ...poison, real(2)]);
  const poisonBefore = await metric('jit_audit_outbox_poison_total');
  await t.broker.outbox.pass();

  const recs = (await auditRecords(redis, keys)).filter((r) => r.chain === b);
  expect(recs.filter((r) => r.taskId === 't-forge').map((r) => r.reason)).toEqual(['real-1', 'real-2']);
  expect(recs.filter((r) => r.action === 'audit.outbox_poison')).toHaveLength(poison.length);
  expect(await metric('jit_audit_outbox_poison_total')).toBe(poisonBefore + poison.length);
  expect((await redis.zrange(keys.auditOutboxParked(b), '0', '-1')).sort()).toEqual([...poison].sort());
  expect(await redis.zcard(keys.auditOutbox(b))).toBe(0);
  expect(await verifyAuditChain(redis, keys, b)).toMatchObject({ ok: true });
});

test('a deeply nested or oversized member cannot stop recovery: it is parked and the records around it are chained in the same pass', async () => {
  const { keys, redis } = t.broker.deps;
  const b = keys.bucketOfTask('t-deep');
  const real = (n: number) =>
    outboxMember({ action: 'task.complete', actor: 'broker', decision: 'ok', taskId: 't-deep', reason: `real-${n}` });
  // Within the byte bound, nested deeper than serialising or hashing it recursively can go (RangeError).
  const depth = 100_000;
  const deep = `1 {"action":"task.complete","actor":"broker","decision":"ok","taskId":"t-deep","detail":{"x":${'['.repeat(depth)}${']'.repeat(depth)}}}`;
  expect(Buffer.byteLength(deep)).toBeLessThan(OUTBOX_MEMBER_MAX_BYTES);
  const big = `2 ${JSON.stringify({ ...record('t-deep', 'big'), detail: { x: 'y'.repeat(OUTBOX_MEMBER_MAX_BYTES) } })}`;
  await leave(b, [real(1), deep, big, real(2)]);
  const recoveredBefore = await metric('jit_audit_outbox_recovered_total');

  expect(await t.broker.outbox.pass()).toBeGreaterThanOrEqual(2);
  const recs = (await auditRecords(redis, keys)).filter((r) => r.chain === b);
  expect(recs.filter((r) => r.taskId === 't-deep').map((r) => r.reason)).toEqual(['real-1', 'real-2']);
  expect(recs.filter((r) => r.action === 'audit.outbox_poison').map((r) => r.detail.bytes)).toEqual(
    expect.arrayContaining([Buffer.byteLength(deep), Buffer.byteLength(big)]),
  );
  expect(await redis.zcard(keys.auditOutbox(b))).toBe(0);
  expect(await redis.zscore(keys.auditOutboxParked(b), deep)).not.toBeNull();
  // real-1 and real-2 (the poison records are the parking's own, not recovered ones).
  expect(await metric('jit_audit_outbox_recovered_total')).toBe(recoveredBefore + 2);
  expect(await verifyAuditChain(redis, keys, b)).toMatchObject({ ok: true });
});

test('every action a Lua script writes into an outbox is an outbox action; the broker cannot make a member of another', () => {
  const dir = new URL('../../src/redis/lua/', import.meta.url);
  const files = [
    ...readdirSync(dir).map((f) => new URL(f, dir)),
    ...readdirSync(new URL('lib/', dir)).map((f) => new URL(`lib/${f}`, dir)),
  ];
  const actions = new Set<string>();
  for (const f of files.filter((u) => u.pathname.endsWith('.lua'))) {
    for (const m of readFileSync(f, 'utf8').matchAll(/'([a-z]+\.[a-z_]+)'/g)) actions.add(m[1]!);
  }
  expect(actions.size).toBeGreaterThan(0);
  for (const a of actions) expect([a, OUTBOX_ACTION_SET.has(a)]).toEqual([a, true]);
  expect(() => outboxMember({ action: 'console.signin' as never, actor: 'x', decision: 'allow' })).toThrow(/not an outbox action/);
});

test('recovery counts only the records it wrote: one its own process appended meanwhile is not "recovered"', async () => {
  const { deps } = t.broker;
  const { keys, redis } = deps;
  const b = keys.bucketOfTask('t-late');
  const member = outboxMember({ action: 'task.complete', actor: 'broker', decision: 'ok', taskId: 't-late', reason: 'own' });
  const at = Date.now() - 60_000;
  await redis.zadd(keys.auditOutbox(b), at, member);
  // The process that made the decision was only slow: its append lands right after recovery read the page.
  const slow = new Proxy(redis, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (prop !== 'zrangebyscore') return typeof v === 'function' ? v.bind(target) : v;
      return async (...args: unknown[]) => {
        const page = await (v as (...a: unknown[]) => Promise<string[]>).apply(target, args);
        if (args.includes('WITHSCORES') && page.includes(member)) await deps.audit.appendOutbox(b, [member], at);
        return page;
      };
    },
  }) as RedisClient;
  const recovery = new OutboxRecovery(
    { redis: slow, keys, audit: deps.audit, logger: deps.logger, clock: deps.clock, metrics: deps.metrics },
    60_000,
  );
  const before = await metric('jit_audit_outbox_recovered_total');
  expect(await recovery.pass()).toBe(0);
  expect(await metric('jit_audit_outbox_recovered_total')).toBe(before);
  expect((await auditRecords(redis, keys)).filter((r) => r.reason === 'own')).toHaveLength(1);
});

const admin: WorkloadIdentity = {
  id: `spiffe://dev.local${ADMIN}`,
  trust: 'dev',
  kind: 'spiffe',
  claims: {},
  exp: Math.floor(Date.now() / 1000) + 600,
};

/** While dead, every record this broker appends fails before reaching Redis, as if its process had died. */
function killAppends(): { revive(): void } {
  const writer = (t.broker.deps.audit as unknown as { writer: { write(chain: AuditChain, p: Pending): void } }).writer;
  const real = writer.write.bind(writer);
  let dead = true;
  writer.write = (chain, p) => (dead ? p.reject(new Error('the process died before appending')) : real(chain, p));
  return {
    revive: () => {
      dead = false;
      writer.write = real;
    },
  };
}

/** Ages the ops chain's outbox as the clock would, so recovery takes what is there. */
async function ageOps(): Promise<void> {
  const { keys, redis } = t.broker.deps;
  const flat = await redis.zrange(keys.auditOutbox('ops'), '0', '-1', 'WITHSCORES');
  for (let i = 0; i < flat.length; i += 2) await redis.zadd(keys.auditOutbox('ops'), 'XX', Number(flat[i + 1]) - 60_000, flat[i]!);
}

test('a quarantine put in force by a process that dies before appending its record: recovery appends the record, once', async () => {
  const { deps, services } = t.broker;
  const { keys, redis } = deps;
  const pattern = 'spiffe://dev.local/agent/crash-quarantine';
  const crash = killAppends();
  try {
    await expect(services.admin.quarantine(admin, pattern, 'crash test')).rejects.toThrow(/died/);
  } finally {
    crash.revive();
  }
  // The quarantine is in force (it restores from its record after a data loss: the record must exist).
  expect(await redis.hexists(keys.quarantine(), pattern)).toBe(1);
  await ageOps();
  await t.broker.outbox.pass();
  const recs = (await auditRecords(redis, keys)).filter((r) => r.action === 'quarantine.add' && r.detail?.pattern === pattern);
  expect(recs).toHaveLength(1);
  expect(recs[0]).toMatchObject({ chain: 'ops', actor: admin.id, decision: 'ok', reason: 'crash test' });
  await services.admin.unquarantine(admin, pattern);
});

test('a rotation whose append fails once it is done leaves its outcome, not an `interrupted` record, for recovery', async () => {
  const { deps, services } = t.broker;
  const { keys, redis } = deps;
  const rotatesBefore = (await auditRecords(redis, keys)).filter((r) => r.action === 'rotate').length;
  const crash = killAppends();
  try {
    // Done: answered (before: the failed append was taken for a failed rotation, answered 502 and recorded
    // `rotation_failed` with `oldSecretInUse`, or left `rotation_interrupted` for recovery).
    expect(await services.rotation.rotate('schedule', 'signing-key')).toMatchObject({ target: 'signing-key' });
  } finally {
    crash.revive();
  }
  await ageOps();
  await t.broker.outbox.pass();
  const recs = (await auditRecords(redis, keys)).filter((r) => r.action === 'rotate');
  expect(recs).toHaveLength(rotatesBefore + 1);
  expect(recs.at(-1)).toMatchObject({
    chain: 'ops',
    actor: 'broker',
    decision: 'ok',
    reason: 'signing-key',
    detail: { rotated: expect.anything() },
  });
  expect(await redis.zcard(keys.auditOutbox('ops'))).toBe(0);
});

test('a record recovered long after its decision is found by an audit query whose window covers the decision', async () => {
  const { keys, redis } = t.broker.deps;
  await openAgentTask(t, 't-window', [{ role: 'demo-api' }]);
  const decided = Date.now() - 60_000;
  const member = outboxMember({ action: 'task.complete', actor: 'broker', decision: 'ok', taskId: 't-window', reason: 'recovered-late' });
  await redis.zadd(keys.auditOutbox(keys.bucketOfTask('t-window')), decided, member);
  await t.broker.outbox.pass();
  // Appended a minute after its time: the chain's lateness says so, and queries by time read that far past `until`.
  expect(Number(await redis.zscore(keys.auditLate(keys.bucketOfTask('t-window')), 'max'))).toBeGreaterThanOrEqual(60_000);
  const window = `since=${new Date(decided - 1_000).toISOString()}&until=${new Date(decided + 1_000).toISOString()}`;
  for (const path of [`/v1/audit?${window}&limit=500`, `/v1/audit?taskId=t-window&${window}`]) {
    const r = await call(t.url, 'GET', path, t.as(ADMIN));
    expect([path, r.status]).toEqual([path, 200]);
    const found = r.body.items.filter((x: { reason?: string }) => x.reason === 'recovered-late');
    expect([path, found.length]).toEqual([path, 1]);
    expect(found[0].time).toBe(new Date(decided).toISOString());
  }
  // A window after the decision (covering only when it was appended) does not list it: the window is the record's time.
  const after = `since=${new Date(Date.now() - 5_000).toISOString()}`;
  const r = await call(t.url, 'GET', `/v1/audit?taskId=t-window&${after}`, t.as(ADMIN));
  expect(r.body.items.filter((x: { reason?: string }) => x.reason === 'recovered-late')).toHaveLength(0);
});
