import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { outboxIntent } from '../../src/audit/outbox-intent.ts';
import { outboxMember } from '../../src/audit/outbox-member.ts';
import { memberTag, swapOutbox } from '../../src/audit/outbox-swap.ts';
import type { OutboxEvent } from '../../src/audit/record.ts';
import { script } from '../../src/redis/scripts.ts';
import { auditRecords, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';

/**
 * An operation made in many steps puts its outcome in the ops outbox in place of its `interrupted` intent
 * (audit-outbox-swap.lua) before appending it (OutboxIntent.finish; test/admin/crash-after-decision.test.ts
 * kills a process right after). These check the swap itself against Redis.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('outbox-swap', { broker: { worker: false } });
});
afterAll(async () => {
  await t?.close();
});

const record = (detail: Record<string, string | number | boolean>): OutboxEvent => ({
  action: 'admin.revoke',
  actor: 'spiffe://dev.local/ops/alice',
  decision: 'ok',
  reason: 'revoked_by_admin',
  detail,
});

async function ops(tenant: string): Promise<Record<string, any>[]> {
  return (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter((r) => r.chain === 'ops' && r.detail?.tenant === tenant);
}

/** Makes every member of the ops outbox older than the grace period, then runs a recovery pass. */
async function recoverNow(): Promise<void> {
  const { redis, keys } = t.broker.deps;
  const flat = await redis.zrange(keys.auditOutbox('ops'), '0', '-1', 'WITHSCORES');
  for (let i = 0; i < flat.length; i += 2) await redis.zadd(keys.auditOutbox('ops'), 'XX', Number(flat[i + 1]) - 60_000, flat[i]!);
  await t.broker.outbox.pass();
}

test('an outcome recorded normally takes the place of its intent: one record, the outbox empty', async () => {
  const intent = await outboxIntent(t.broker.deps, 'ops', record({ tenant: 'sw-1', interrupted: true }));
  await intent.finish(record({ tenant: 'sw-1', tasks: 2, leases: 3 }));
  expect((await ops('sw-1')).map((r) => r.detail)).toEqual([{ tenant: 'sw-1', tasks: 2, leases: 3 }]);
  expect(await t.broker.deps.redis.zcard(t.broker.deps.keys.auditOutbox('ops'))).toBe(0);
});

test('an intent recovery appended while the operation ran is followed by the outcome', async () => {
  const intent = await outboxIntent(t.broker.deps, 'ops', record({ tenant: 'sw-2', interrupted: true }));
  intent.stop();
  await recoverNow();
  await intent.finish(record({ tenant: 'sw-2', tasks: 1, leases: 0 }));
  // No task of the tenant is open: recovery records the outcome that state shows (`recovered`, no counts) in
  // the intent's place, under a tag of its own, so the process's own outcome, arriving late, still follows.
  expect((await ops('sw-2')).map((r) => r.detail)).toEqual([
    { tenant: 'sw-2', recovered: true },
    { tenant: 'sw-2', tasks: 1, leases: 0 },
  ]);
  expect(await t.broker.deps.redis.zcard(t.broker.deps.keys.auditOutbox('ops'))).toBe(0);
});

test('an outcome left in the outbox (its append never made) is what recovery appends', async () => {
  const { redis, keys } = t.broker.deps;
  const intent = await outboxIntent(t.broker.deps, 'ops', record({ tenant: 'sw-3', interrupted: true }));
  intent.stop();
  const outcome = outboxMember(record({ tenant: 'sw-3', tasks: 4, leases: 4 }));
  const swap = script('audit-outbox-swap');
  const tag = intent.member.slice(0, intent.member.indexOf(' '));
  await swap.run(redis, [keys.auditOutbox('ops'), keys.auditOutboxSwapped('ops')], [intent.member, outcome, tag, 60_000]);
  await recoverNow();
  expect((await ops('sw-3')).map((r) => r.detail)).toEqual([{ tenant: 'sw-3', tasks: 4, leases: 4 }]);
});

test('a swap sent again after its answer was lost adds nothing, even once its outcome was appended', async () => {
  const { redis, keys, audit } = t.broker.deps;
  const intent = await outboxIntent(t.broker.deps, 'ops', record({ tenant: 'sw-4', interrupted: true }));
  intent.stop();
  const outcome = outboxMember(record({ tenant: 'sw-4', tasks: 1, leases: 1 }));
  const swap = script('audit-outbox-swap');
  const tag = intent.member.slice(0, intent.member.indexOf(' '));
  const run = () => swap.run(redis, [keys.auditOutbox('ops'), keys.auditOutboxSwapped('ops')], [intent.member, outcome, tag, 60_000]);
  const at = Number(await run());
  // Sent again while the outcome waits: the same score, nothing added.
  expect(Number(await run())).toBe(at);
  await audit.appendOutbox('ops', [outcome], at);
  // Sent again after the outcome was appended (by recovery in another process, say): nothing to append.
  expect(await run()).toBeNull();
  expect(await redis.zcard(keys.auditOutbox('ops'))).toBe(0);
  await recoverNow();
  expect((await ops('sw-4')).map((r) => r.detail)).toEqual([{ tenant: 'sw-4', tasks: 1, leases: 1 }]);
});

/**
 * The deps of `t` with a Redis whose first run of the swap script fails as a command timeout does: before it
 * reaches Redis (`ran: false`), or after Redis ran it (`ran: true`: the answer lost). Everything else is the
 * real client.
 */
function swapFailsOnce(ran: boolean) {
  const { redis } = t.broker.deps;
  const sha = script('audit-outbox-swap').sha;
  let failed = false;
  const flaky = new Proxy(redis, {
    get(target, prop, receiver) {
      if (prop !== 'evalsha') return Reflect.get(target, prop, receiver);
      return async (...args: unknown[]) => {
        if (args[0] !== sha || failed) return (target.evalsha as (...a: unknown[]) => Promise<unknown>).apply(target, args);
        failed = true;
        if (ran) await (target.evalsha as (...a: unknown[]) => Promise<unknown>).apply(target, args);
        throw new Error('Command timed out');
      };
    },
  });
  return { ...t.broker.deps, redis: flaky };
}

for (const ran of [false, true]) {
  test(`a swap that fails (${ran ? 'run by Redis, its answer lost' : 'never reaching Redis'}) is made again in the background: the outcome lands once`, async () => {
    const tenant = `sw-retry-${ran}`;
    const deps = swapFailsOnce(ran);
    const intent = await outboxIntent(deps, 'ops', record({ tenant, interrupted: true }));
    await expect(intent.finish(record({ tenant, tasks: 5, leases: 6 }))).rejects.toThrow(/timed out/);
    // Tried again every quarter grace period (2.5 s).
    await waitFor(async () => (await ops(tenant)).length > 0, 10_000, 100);
    await recoverNow();
    expect((await ops(tenant)).map((r) => r.detail)).toEqual([{ tenant, tasks: 5, leases: 6 }]);
    expect(await t.broker.deps.redis.zcard(t.broker.deps.keys.auditOutbox('ops'))).toBe(0);
  }, 20_000);
}

test("recovery's swap (only while the intent is there) adds nothing once the intent has left: no second record", async () => {
  const { redis, keys } = t.broker.deps;
  const intent = await outboxIntent(t.broker.deps, 'ops', record({ tenant: 'sw-gone', interrupted: true }));
  // Its process, slow rather than dead, records its own outcome between recovery's read and its swap.
  await intent.finish(record({ tenant: 'sw-gone', tasks: 1, leases: 1 }));
  const recovered = outboxMember(record({ tenant: 'sw-gone', recovered: true }));
  const tag = `recovered:${memberTag(intent.member)}`;
  expect(await swapOutbox(t.broker.deps, 'ops', intent.member, recovered, tag, true)).toBeUndefined();
  expect(await redis.zcard(keys.auditOutbox('ops'))).toBe(0);
  await recoverNow();
  expect((await ops('sw-gone')).map((r) => r.detail)).toEqual([{ tenant: 'sw-gone', tasks: 1, leases: 1 }]);
});
