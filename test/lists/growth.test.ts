import { Redis } from 'ioredis';
import { indexWindow } from '../../src/lists/index-window.ts';
import { ADMIN, AGENT, ORCH, REDIS_URL, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: "Growth is bounded" (contract section 3) and "ended tasks, leases,
 * approvals kept 7 days" (docs/security.md). The records themselves expired,
 * but the list indexes they were entered in (tasks-all, tasks-by-agent:<id>,
 * tasks-by-opener:<id>, approvals-all) were never pruned: every task and
 * approval ever made left an entry, and every distinct agent string a key
 * named after it, for ever. An agent picks those agent strings freely for its
 * sub-tasks. Index keys are now named by a hash, trimmed on write, cleaned on
 * read, and expire with the last record they list (src/redis/keys.ts).
 */
let t: TestBroker;
let redis: Redis;

beforeAll(async () => {
  t = await startTestBroker('rt-growth', {
    config: {
      server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } },
      tasks: { retentionSeconds: 60, maxLeases: 5 },
    },
  });
  redis = new Redis(REDIS_URL);
});
afterAll(async () => {
  redis.disconnect();
  await t.close();
});

async function allKeys(): Promise<string[]> {
  const out: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${t.prefix}:*`, 'COUNT', 1000);
    cursor = next;
    out.push(...keys);
  } while (cursor !== '0');
  return out;
}

test('once an ended task has left Redis, nothing of it stays behind (indexes included)', async () => {
  const root = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'rt-growth-1',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'prod-deploy' }, { role: 'tickets-api', scopes: [] }],
  });
  expect(root.status).toBe(201);
  // The agent names its sub-task's agent freely: any printable string up to 2048 chars.
  const junkAgent = `spiffe://dev.local/agent/${'x'.repeat(1900)}`;
  const sub = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
    parentTaskId: 'rt-growth-1',
    agent: junkAgent,
    ttlSeconds: 60,
    grants: [{ role: 'tickets-api', scopes: [] }],
  });
  expect(sub.status).toBe(201);
  const pending = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'rt-growth-1', role: 'prod-deploy' });
  expect(pending.status).toBe(202);
  expect((await call(t.url, 'POST', '/v1/tasks/rt-growth-1/complete', t.as(ORCH))).status).toBe(202);

  // Retention passes (fast-forwarded): every key that has a TTL now expires.
  for (const k of await allKeys()) if ((await redis.pttl(k)) > 0) await redis.pexpire(k, 1);
  await new Promise((r) => setTimeout(r, 500));

  // What is left mentioning the task, its sub-task, its approval, or the made-up agent?
  const leftovers: string[] = [];
  for (const k of await allKeys()) {
    if (k.includes(junkAgent)) leftovers.push(`${k.slice(0, 80)}... (key named after the sub-task's agent, TTL ${await redis.pttl(k)})`);
    const type = await redis.type(k);
    if (type === 'zset') {
      for (const id of [root.body.taskId, sub.body.taskId, pending.body.approvalId])
        if ((await redis.zscore(k, id)) !== null)
          leftovers.push(`${k.slice(k.lastIndexOf('}') + 2, k.lastIndexOf('}') + 90)} still lists ${id}`);
    }
  }
  expect(leftovers).toEqual([]);
});

async function openTask(taskId: string): Promise<void> {
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  expect(r.status).toBe(201);
}

test('a list drops the index entries of records that have left Redis as it comes across them', async () => {
  const { keys } = t.broker.deps;
  const id = 'rt-growth-gone';
  await openTask(id);
  const b = keys.bucketOfTask(id);
  const indexes = [
    keys.tasksByTime(b),
    keys.tasksByOpener(b, `spiffe://dev.local${ORCH}`),
    keys.tasksByAgent(b, `spiffe://dev.local${AGENT}`),
  ];
  for (const k of indexes) expect(await redis.zscore(k, id)).not.toBeNull();
  await redis.del(keys.task(id)); // its retention has passed
  for (const who of [ADMIN, ORCH]) {
    const page = await call(t.url, 'GET', '/v1/tasks?limit=500', t.as(who));
    expect(page.status).toBe(200);
    expect(page.body.items.map((x: { taskId: string }) => x.taskId)).not.toContain(id);
  }
  // The admin's list walked tasks-all, the orchestrator's its own indexes (by opener, by agent: none here).
  expect(await redis.zscore(indexes[0]!, id)).toBeNull();
  expect(await redis.zscore(indexes[1]!, id)).toBeNull();
});

test('a write trims its index of entries no record can outlive, and keeps the index key as long as what it lists', async () => {
  const { keys } = t.broker.deps;
  const id = 'rt-growth-trim';
  const b = keys.bucketOfTask(id);
  const index = keys.tasksByAgent(b, `spiffe://dev.local${AGENT}`);
  const window = indexWindow(t.config.tasks.retentionSeconds * 1000);
  await redis.zadd(index, Date.now() - window.horizonMs - 60_000, 'ancient', Date.now() - 60_000, 'recent');
  await openTask(id);
  expect(await redis.zscore(index, 'ancient')).toBeNull();
  expect(await redis.zscore(index, 'recent')).not.toBeNull(); // young enough that its record might exist: a read decides
  expect(await redis.zscore(index, id)).not.toBeNull();
  const task = await t.broker.deps.tasks.get(id);
  const ttl = await redis.pttl(index);
  const want = task!.expiresAt + window.afterDeadlineMs - Date.now();
  expect(Math.abs(ttl - want)).toBeLessThan(5000);
});
