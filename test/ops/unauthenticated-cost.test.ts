import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { Redis } from 'ioredis';
import { outboxMember } from '../../src/audit/outbox-member.ts';
import { REDIS_PROBE_MS } from '../../src/http/routes/ops.ts';
import { CHECK_EVERY_MS, RedisRequirements } from '../../src/redis/requirements.ts';
import { silentLogger } from '../../src/logger.ts';
import { AGENT, ORCH, call, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';
import { type RedisStandalone, startStandalone } from '../helpers/redis-topology.ts';

/**
 * What anyone who can reach the broker makes it send to Redis through the unauthenticated routes. Found in
 * review: one `GET /metrics` was about 6,000 commands at `redis.buckets: 1024` (the active-lease, seal-age
 * and outbox gauges read every bucket on every scrape), so a scrape flood was a flood of Redis (and the
 * stall guard answered 503 to everyone); every `GET /readyz` sent ROLE and SET. Counted here with INFO
 * commandstats on a Redis of this file's own, so nothing else's commands are counted.
 */
let redis: RedisStandalone;
let admin: Redis;
let t: TestBroker;
const BUCKETS = 64;

beforeAll(async () => {
  redis = await startStandalone();
  admin = redis.client();
  t = await startTestBroker('unauth-cost', {
    config: {
      server: { port: 0, publicUrl: 'http://127.0.0.1:8080', metricsRefreshSeconds: 1 },
      redis: { url: redis.url, prefix: 'cost', buckets: BUCKETS },
    },
    // API only, no periodic data-loss check: the broker's own background commands stay few.
    broker: { worker: false, dataLossCheckMs: 600_000 },
  });
}, 60_000);
afterAll(async () => {
  await t?.broker.close().catch(() => {});
  admin?.disconnect();
  await redis?.stop();
});

/** Calls per command since the server started (INFO commandstats). */
async function commandStats(): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const line of String(await admin.info('commandstats')).split('\n')) {
    const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(line);
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

/** Commands the broker sent while `f` ran (this test's own INFO excluded), by command. */
async function sent(f: () => Promise<unknown>): Promise<{ total: number; by: Record<string, number> }> {
  const before = await commandStats();
  await f();
  const after = await commandStats();
  const by: Record<string, number> = {};
  let total = 0;
  for (const [k, v] of Object.entries(after)) {
    const d = v - (before[k] ?? 0);
    if (k === 'info' || d <= 0) continue;
    by[k] = d;
    total += d;
  }
  return { total, by };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const get = async (path: string) => {
  const res = await fetch(`${t.url}${path}`);
  return { status: res.status, text: await res.text() };
};
const gauge = (text: string, name: string) =>
  Number(
    text
      .split('\n')
      .find((l) => l.startsWith(`${name} `))
      ?.split(' ')[1],
  );

test('a flood of /metrics scrapes costs one reading of Redis per interval, and the gauges still follow Redis', async () => {
  await sleep(1100); // whatever startup read is stale now
  const one = await sent(() => get('/metrics'));
  // The reading: a ZCARD per bucket (leases), two GETs per chain (seal), three reads per chain (outbox).
  expect(one.total).toBeGreaterThanOrEqual(6 * BUCKETS);
  await sleep(1100);
  // A reading starts at least the interval (1 s) after the last one ended, so a window of w ms holds at most
  // floor(w / 1000) + 1 readings, whatever the machine's load makes w: counted in those slots, not in a fixed
  // number (a loaded machine took over a second for the flood, and then over two).
  const slots = (from: number) => Math.floor((performance.now() - from) / 1000) + 1;
  const floodStarted = performance.now();
  const flood = await sent(async () => {
    const answers = await Promise.all(Array.from({ length: 50 }, () => get('/metrics')));
    expect(answers.every((a) => a.status === 200 && a.text.includes('jit_active_leases'))).toBe(true);
  });
  const floodSlots = slots(floodStarted);
  // Fifty concurrent scrapes share one reading per slot (before: fifty readings, 50 × 6 × 64 commands).
  expect(flood.total).toBeLessThanOrEqual(floodSlots * (one.total + 20));
  // The next scrapes within the same slot take no reading at all (before: twenty readings); counted over the
  // flood and them together, so a loaded machine that crosses into the next slot is allowed one new one.
  const again = await sent(() => Promise.all(Array.from({ length: 20 }, () => get('/metrics'))));
  expect(flood.total + again.total).toBeLessThanOrEqual(slots(floodStarted) * (one.total + 20));

  // The state changes: the gauges show it once the interval has passed.
  const taskId = 'cost-task';
  expect(
    (
      await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
        taskId,
        agent: `spiffe://dev.local${AGENT}`,
        tenant: 'acme',
        purpose: 'p',
        ttlSeconds: 600,
        grants: [{ role: 'demo-api' }],
      })
    ).status,
  ).toBe(201);
  expect((await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'demo-api' })).status).toBe(201);
  const { keys } = t.broker.deps;
  const old = Date.now() - 60_000;
  await t.broker.deps.redis.zadd(keys.auditOutbox(3), old, outboxMember({ action: 'task.complete', actor: 'broker', decision: 'ok' }));
  const moved = await waitFor(async () => {
    const m = (await get('/metrics')).text;
    return gauge(m, 'jit_active_leases') === 1 && gauge(m, 'jit_audit_outbox_records') === 1 && m;
  }, 30_000);
  // The oldest record's age, as of the scrape: at least what it was when read.
  expect(gauge(moved, 'jit_audit_outbox_oldest_seconds')).toBeGreaterThanOrEqual(59);
  await t.broker.deps.redis.del(keys.auditOutbox(3));
  await waitFor(async () => gauge((await get('/metrics')).text, 'jit_audit_outbox_records') === 0, 30_000);
}, 60_000);

test('a flood of /readyz costs one Redis probe a second, and /readyz turns 503 within about 2 s of Redis going away', async () => {
  await get('/readyz');
  const started = performance.now();
  const flood = await sent(async () => {
    for (let round = 0; round < 10; round++) {
      const answers = await Promise.all(Array.from({ length: 20 }, () => get('/readyz')));
      expect(answers.every((a) => a.status === 200)).toBe(true);
    }
  });
  const seconds = (performance.now() - started) / 1000;
  // 200 probes: one Redis probe (ROLE, then SET) per REDIS_PROBE_MS, and one round of the Redis setup checks
  // (a ROLE, and a SET in its probe script) per CHECK_EVERY_MS, counted in the slots the flood spanned however
  // long a loaded machine made it (it took 10 s: three setup rounds). Plus one of each a probe and a round begun
  // by the first get can send inside the flood, once their 1-s deadline gave up on them.
  // Before: one ROLE and one SET per probe.
  const ms = seconds * 1000;
  const probes = Math.floor(ms / REDIS_PROBE_MS) + 1 + 1;
  const rounds = Math.floor(ms / CHECK_EVERY_MS) + 1 + 1;
  expect(flood.by.set ?? 0).toBeLessThanOrEqual(probes + rounds);
  // ROLE also counts the replicas every second (replica-ack.ts ROLE_POLL_MS, replicas: auto), flood or not.
  const replicaPolls = Math.floor(ms / 1000) + 1;
  expect(flood.by.role ?? 0).toBeLessThanOrEqual(probes + rounds + replicaPolls);
  // All told: two commands a probe and what one setup round costs (measured: the same checks, run once), per slot.
  const { deps } = t.broker;
  const checks = new RedisRequirements({ redis: deps.redis, keys: deps.keys, logger: silentLogger, blocking: false, wait: false });
  const round = await sent(() => checks.problems());
  expect(round.total).toBeGreaterThan(0);
  expect(flood.total).toBeLessThanOrEqual(probes * 2 + rounds * round.total + replicaPolls);

  // Redis goes away: a probe's answer is reused for REDIS_PROBE_MS at most, so the first /readyz asked once that
  // has passed probes again and says 503 (its probe fails, or gives up at its 1-s deadline): judged on that first
  // answer, not on how long a loaded machine took to give it. No /readyz runs meanwhile (none in flight either).
  await redis.kill();
  await sleep(REDIS_PROBE_MS + 100);
  expect((await get('/readyz')).status).toBe(503);
  await redis.restart();
  // Back once it has recovered from the empty Redis (a data loss: signing key, export, chains). Not what this test
  // measures. The periodic data-loss check is off here (dataLossCheckMs above), so it is run once now, as it would
  // within a second: without it, a signing-key refresh (every 10 s) that happened to read the empty Redis left the
  // broker with no key and nothing to recover it, 503 to the end of the wait (a CI run, reproduced under load).
  // (It fails while the broker's connection is still coming back: tried again, as the timer would.)
  await waitFor(
    () =>
      t.broker.recovery.check().then(
        () => true,
        () => false,
      ),
    30_000,
    200,
  );
  // A failure names the checks still failing (the last answer's body).
  let last: unknown;
  await waitFor(
    async () => {
      const r = await get('/readyz');
      last = r.text;
      return r.status === 200;
    },
    45_000,
    100,
  ).catch((err: Error) => {
    throw new Error(`${err.message}; last /readyz: ${String(last)}`);
  });
}, 90_000);
