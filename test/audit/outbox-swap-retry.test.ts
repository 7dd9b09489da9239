import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { Redis } from 'ioredis';
import { outboxIntent } from '../../src/audit/outbox-intent.ts';
import type { OutboxEvent } from '../../src/audit/record.ts';
import { script } from '../../src/redis/scripts.ts';
import { ADMIN, auditRecords, call, dropPrefix, REDIS_URL, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';

/**
 * The background retry of a swap Redis failed (OutboxIntent.finish): what it does while it retries, and what
 * becomes of it when its process shuts down. The swap is failed by a client that refuses the script as a
 * command timeout does (it never reaches Redis) while `down` is true; everything else is the real client.
 */
let check: Redis;
beforeAll(() => {
  check = new Redis(REDIS_URL);
});
afterAll(async () => {
  await check?.quit();
});

const record = (detail: Record<string, string | number | boolean>): OutboxEvent => ({
  action: 'admin.revoke',
  actor: 'spiffe://dev.local/ops/alice',
  decision: 'ok',
  reason: 'revoked_by_admin',
  detail,
});

/** `t`'s deps with a swap that fails while `state.down`, counting the swaps tried (`tries`) and those once `state.closed`. */
function flakySwap(t: TestBroker, state: { down: boolean; closed: boolean; afterClose: number; tries?: number }) {
  const { redis } = t.broker.deps;
  const sha = script('audit-outbox-swap').sha;
  const evalsha = redis.evalsha as (...a: unknown[]) => Promise<unknown>;
  const flaky = new Proxy(redis, {
    get(target, prop, receiver) {
      if (prop !== 'evalsha') return Reflect.get(target, prop, receiver);
      return async (...args: unknown[]) => {
        if (args[0] === sha) state.tries = (state.tries ?? 0) + 1;
        if (args[0] === sha && state.closed) state.afterClose += 1;
        if (args[0] === sha && state.down) throw new Error('Command timed out');
        return evalsha.apply(target, args);
      };
    },
  });
  return { ...t.broker.deps, redis: flaky };
}

async function ops(t: TestBroker, tenant: string): Promise<Record<string, any>[]> {
  return (await auditRecords(check, t.broker.deps.keys)).filter((r) => r.chain === 'ops' && r.detail?.tenant === tenant);
}

test('an intent whose swap is being retried is kept fresh: recovery does not record the finished operation as interrupted', async () => {
  const t = await startTestBroker('swap-retry-fresh', { broker: { worker: false } });
  try {
    const { keys } = t.broker.deps;
    const outbox = keys.auditOutbox('ops');
    const state = { down: true, closed: false, afterClose: 0 };
    const intent = await outboxIntent(flakySwap(t, state), 'ops', record({ tenant: 'rf', interrupted: true }));
    await expect(intent.finish(record({ tenant: 'rf', tasks: 1, leases: 2 }))).rejects.toThrow(/timed out/);
    // As if the swap had failed for longer than the grace period: the intent is due for recovery...
    const aged = Number(await check.zscore(outbox, intent.member)) - 60_000;
    await check.zadd(outbox, 'XX', aged, intent.member);
    // ...until the process, still trying to record the outcome, moves it forward again (every 2.5 s).
    // Before: nothing did, and recovery appended `interrupted` for an operation that had finished.
    await waitFor(async () => Number(await check.zscore(outbox, intent.member)) > aged, 10_000, 100);
    await t.broker.outbox.pass();
    state.down = false;
    await waitFor(async () => (await ops(t, 'rf')).length > 0, 10_000, 100);
    expect((await ops(t, 'rf')).map((r) => r.detail)).toEqual([{ tenant: 'rf', tasks: 1, leases: 2 }]);
    expect(await check.zcard(outbox)).toBe(0);
  } finally {
    await t.close();
  }
}, 30_000);

test('a swap Redis fails for more than an hour is still tried: once Redis is back its outcome lands, not `interrupted`', async () => {
  const t = await startTestBroker('swap-retry-long', { broker: { worker: false } });
  try {
    const { keys } = t.broker.deps;
    const state = { down: true, closed: false, afterClose: 0, tries: 0 };
    // The process's clock as read by the retry: moved two hours on once the swap has failed (an outage that long).
    let offset = 0;
    const deps = { ...flakySwap(t, state), clock: { now: () => Date.now() + offset } };
    const intent = await outboxIntent(deps, 'ops', record({ tenant: 'rl', interrupted: true }));
    await expect(intent.finish(record({ tenant: 'rl', tasks: 4, leases: 1 }))).rejects.toThrow(/timed out/);
    offset = 2 * 60 * 60_000;
    const before = state.tries;
    // Before: the retry gave up after an hour (SWAP_RETRY_MS), and the outcome of a finished kill switch was lost.
    await waitFor(async () => state.tries > before, 10_000, 100);
    state.down = false;
    await waitFor(async () => (await ops(t, 'rl')).length > 0, 20_000, 100);
    expect((await ops(t, 'rl')).map((r) => r.detail)).toEqual([{ tenant: 'rl', tasks: 4, leases: 1 }]);
    expect(await check.zcard(keys.auditOutbox('ops'))).toBe(0);
  } finally {
    await t.close();
  }
}, 40_000);

test('a swap still retried at shutdown is tried once more before the connections close: its outcome lands', async () => {
  const t = await startTestBroker('swap-retry-close', { broker: { worker: false } });
  const { keys } = t.broker.deps;
  try {
    const state = { down: true, closed: false, afterClose: 0 };
    const intent = await outboxIntent(flakySwap(t, state), 'ops', record({ tenant: 'rc', interrupted: true }));
    await expect(intent.finish(record({ tenant: 'rc', tasks: 3, leases: 0 }))).rejects.toThrow(/timed out/);
    state.down = false;
    await t.broker.close();
    // Before: the retry's next try came 2.5 s later, on a closed connection; the intent was left for recovery.
    expect((await ops(t, 'rc')).map((r) => r.detail)).toEqual([{ tenant: 'rc', tasks: 3, leases: 0 }]);
    expect(await check.zcard(keys.auditOutbox('ops'))).toBe(0);
  } finally {
    await dropPrefix(keys.prefix);
  }
}, 30_000);

test('a swap that fails its last try at shutdown is given up: no retry outlives the broker, the intent stands', async () => {
  const t = await startTestBroker('swap-retry-stop', { broker: { worker: false } });
  const { keys } = t.broker.deps;
  try {
    const state = { down: true, closed: false, afterClose: 0 };
    const intent = await outboxIntent(flakySwap(t, state), 'ops', record({ tenant: 'rs', interrupted: true }));
    await expect(intent.finish(record({ tenant: 'rs', tasks: 1, leases: 1 }))).rejects.toThrow(/timed out/);
    await t.broker.close();
    state.closed = true;
    // Two retry periods: a retry left running tries again in this time. Before: it did, every 2.5 s for an
    // hour, on the closed connection (a timer leaked per failed swap).
    await new Promise((r) => setTimeout(r, 6_000));
    expect(state.afterClose).toBe(0);
    // The intent is what recovery (another process's) appends: the process did not get to record the outcome.
    expect(await check.zscore(keys.auditOutbox('ops'), intent.member)).not.toBeNull();
  } finally {
    await dropPrefix(keys.prefix);
  }
}, 30_000);

test('a rotation that succeeded is answered as done when Redis fails at its swap, and its outcome is recorded by the retry', async () => {
  const t = await startTestBroker('swap-retry-rotate', { broker: { worker: false }, config: { rotation: { switchGraceMs: 0 } } });
  const { redis } = t.broker.deps;
  const sha = script('audit-outbox-swap').sha;
  // The broker's own client fails the first swap as a command timeout does (before it reaches Redis).
  const evalsha = redis.evalsha;
  let failed = false;
  redis.evalsha = (async (...args: unknown[]) => {
    if (args[0] === sha && !failed) {
      failed = true;
      throw new Error('Command timed out');
    }
    return (evalsha as (...a: unknown[]) => Promise<unknown>).apply(redis, args);
  }) as typeof redis.evalsha;
  try {
    const res = await call(t.url, 'POST', '/v1/admin/rotate', t.as(ADMIN), { target: 'signing-key' });
    expect(failed).toBe(true);
    // Before: 503 not_ready for a rotation that was done (a retry by the caller rotates again).
    expect(res.status).toBe(202);
    const rotated = await waitFor(
      async () => {
        const r = (await auditRecords(check, t.broker.deps.keys)).filter((x) => x.chain === 'ops' && x.action === 'rotate');
        return r.length > 0 && r;
      },
      10_000,
      100,
    );
    expect(rotated).toEqual([expect.objectContaining({ decision: 'ok', reason: 'signing-key' })]);
  } finally {
    redis.evalsha = evalsha;
    await t.close();
  }
}, 30_000);
