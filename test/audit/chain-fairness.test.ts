import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { verifyAuditChain } from '../../src/audit/verify.ts';
import { AGENT, call, openAgentTask, startSibling, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Two broker instances issuing JWTs for one task append every issue record to the same chain (the task's
 * bucket), each batch a compare-and-set on the chain head; a JWT issuance answers once its record is in the
 * chain (or its append was given up: then recovery appends it from the outbox). A refused batch is re-hashed
 * on the head the refusal names and sent again at once. A random wait before resending (3156512, reverted)
 * starved the refused instance: it waited while the other's pipelined batches kept moving the head, and it
 * issued 4 tokens to the other's 994. These tests count issuances per instance and stop on a count, never on
 * time: fairness is a ratio, and a loaded CI machine slows both instances alike (they share one process).
 * They also check what contention must never cost: every token has exactly one issue record in a valid chain.
 */

let a: TestBroker;
let b: TestBroker;
let n = 0;

beforeAll(async () => {
  a = await startTestBroker('chain-fairness', {
    config: {
      // The load below issues far beyond one identity's budget and one task's lease bounds; this file tests the chain.
      server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } },
      tasks: { maxLeases: 0, maxLeasesTotal: 0 },
    },
  });
  b = await startSibling(a);
});
afterAll(async () => {
  await b?.close();
  await a?.close();
});

/**
 * Closed-loop issuance on one task: `loops[i]` concurrent callers on instance i, each issuing again as soon as
 * its token (or error) is back, until `total` tokens are issued over both. Returns the lease ids per instance.
 */
async function issueUntil(taskId: string, loops: [number, number], total: number) {
  const issued: string[][] = [[], []];
  const failures: string[] = [];
  const done = () => issued[0]!.length + issued[1]!.length >= total || failures.length > 0;
  const loop = async (i: 0 | 1) => {
    const t = [a, b][i]!;
    const as = t.as(AGENT);
    while (!done()) {
      const r = await call(t.url, 'POST', '/v1/credentials', as, {
        taskId,
        role: 'tickets-api',
        scopes: ['tickets:read'],
        ttlSeconds: 600,
      });
      if (r.status === 201) issued[i]!.push(r.body.leaseId);
      else failures.push(`${r.status} ${JSON.stringify(r.body)}`);
    }
  };
  await Promise.all(([0, 1] as const).flatMap((i) => Array.from({ length: loops[i] }, () => loop(i))));
  expect(failures).toEqual([]);
  return issued;
}

/** The task's chain verifies and holds exactly one issue record per token handed out, whichever instance issued it. */
async function expectChained(taskId: string, issued: string[][]) {
  const { redis, keys } = a.broker.deps;
  const chain = keys.bucketOfTask(taskId);
  expect(await verifyAuditChain(redis, keys, chain)).toMatchObject({ ok: true });
  const records = (await redis.xrange(keys.auditStream(chain), '-', '+')).map(([, f]) => JSON.parse(f[1]!));
  const issues = records.filter((r) => r.action === 'credential.issue' && r.taskId === taskId).map((r) => r.leaseId);
  expect(issues.length).toBe(new Set(issues).size);
  expect(new Set(issues)).toEqual(new Set(issued.flat()));
}

describe('two instances issuing on one audit chain', () => {
  test('under the same load, neither issues less than a quarter of what the other does', async () => {
    const taskId = `t-fair-${++n}`;
    await openAgentTask(a, taskId, [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
    const issued = await issueUntil(taskId, [10, 10], 600);
    const [na, nb] = issued.map((x) => x.length) as [number, number];
    // Measured here: 296:323 to 375:244. With the reverted random wait: 10:609.
    expect(Math.min(na, nb)).toBeGreaterThanOrEqual(Math.max(na, nb) / 4);
    await expectChained(taskId, issued);
  }, 120_000);

  test('an instance under light load is not starved by one under heavy load on the same chain', async () => {
    const taskId = `t-fair-${++n}`;
    await openAgentTask(a, taskId, [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
    // 20 callers against 2: by callers alone the light instance would issue 1 token in 11.
    const issued = await issueUntil(taskId, [20, 2], 1500);
    const [heavy, light] = issued.map((x) => x.length) as [number, number];
    // Measured here: the light instance issues 12-23% of the tokens (its callers wait less); with the reverted
    // random wait, 2 to 10 of 1,500. A quarter of its share by callers is the bound.
    expect(light).toBeGreaterThanOrEqual((heavy + light) / 11 / 4);
    // Nor the other way round: with the random wait, whichever instance lost first starved (once 144:1,377).
    expect(heavy).toBeGreaterThanOrEqual(light);
    await expectChained(taskId, issued);
  }, 120_000);

  test('refusals between the two are no rollback: neither instance took its replaced heads for lost', async () => {
    // Each refusal replaces the head an instance had confirmed; its look checks that Redis still holds it.
    const taskId = `t-fair-${++n}`;
    await openAgentTask(a, taskId, [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
    await issueUntil(taskId, [10, 10], 400);
    await Promise.all([a.broker.recovery.check(), b.broker.recovery.check()]);
    for (const t of [a, b]) {
      const metrics = await (await fetch(`${t.url}/metrics`)).text();
      expect(metrics).not.toMatch(/jit_redis_data_loss_total\{kind="rolled_back"\} [1-9]/);
    }
  }, 120_000);
});
