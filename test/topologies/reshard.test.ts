import { ONCE_KEEP_MS } from '../../src/audit/outbox-member.ts';
import { loadConfig } from '../../src/config/load.ts';
import { slotOf } from '../../src/redis/keys.ts';
import { script } from '../../src/redis/scripts.ts';
import { AGENT, ORCH, call, startTestBroker, testConfigFile, uniquePrefix, waitFor, type TestBroker } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { type RedisCluster, startCluster } from '../helpers/redis-topology.ts';

/**
 * A Redis Cluster reshard (`redis-cli --cluster reshard`, a managed service rebalancing) moves a bucket's slot while
 * the broker runs: MIGRATING on its master, IMPORTING on another, keys leaving in batches with MIGRATE. Redis checks
 * only a script's declared KEYS against the moving slot; the broker's scripts also reach keys they build from the
 * bucket's base (task-end's sub-tasks, the audit outbox). Such a script refuses with TRYAGAIN before its first write
 * while its slot moves (src/redis/lua/lib/slot.lua): a call either does all of its work or none, and the caller
 * gets 503 not_ready with Retry-After until the move ends, never a 500 and never a parent ended without its sub-task.
 * (Red team 5 found task-end half-run on both sides of a move.)
 */
let cluster: RedisCluster;
let t: TestBroker;
const issuer = new TestIssuer();
const prefix = uniquePrefix('reshard');
const A = `spiffe://dev.local${AGENT}`;
const HELPER = '/agent/helper';

beforeAll(async () => {
  cluster = await startCluster({ masters: 3 });
  const file = testConfigFile(issuer, prefix, {
    redis: { cluster: { nodes: cluster.urls }, prefix },
    tasks: { maxTtlSeconds: 86_400, maxDelegationDepth: 3, maxGrants: 20 },
  });
  t = await startTestBroker('reshard', { prefix, issuer, loaded: loadConfig({}, file) });
}, 90_000);
afterAll(async () => {
  await t?.broker.close();
  await cluster?.stop();
});

interface Node {
  id: string;
  port: number;
  slots: [number, number][];
}

async function nodes(): Promise<Node[]> {
  const raw = String(await on(cluster.ports[0]!, 'CLUSTER', 'NODES'));
  return raw
    .trim()
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f[2]!.includes('master'))
    .map((f) => ({
      id: f[0]!,
      port: Number(f[1]!.split(':')[1]!.split('@')[0]),
      slots: f
        .slice(8)
        .filter((s) => /^\d+(-\d+)?$/.test(s))
        .map((s) => {
          const [a, b] = s.split('-').map(Number);
          return [a!, b ?? a!] as [number, number];
        }),
    }));
}

/** One command on one node (no redirection followed). */
async function on(port: number, ...args: (string | number)[]): Promise<unknown> {
  const c = cluster.client(cluster.ports.indexOf(port));
  await c.connect();
  try {
    return await c.call(String(args[0]), ...args.slice(1).map(String));
  } finally {
    c.disconnect();
  }
}

/** Starts moving the slot of `key` to another master: MIGRATING / IMPORTING, then `first` keys moved. */
async function startMove(key: string, first: string[]): Promise<{ slot: number; src: Node; dst: Node; all: Node[] }> {
  const slot = slotOf(key);
  const all = await nodes();
  const src = all.find((n) => n.slots.some(([a, b]) => slot >= a && slot <= b))!;
  const dst = all.find((n) => n.id !== src.id)!;
  await on(dst.port, 'CLUSTER', 'SETSLOT', slot, 'IMPORTING', src.id);
  await on(src.port, 'CLUSTER', 'SETSLOT', slot, 'MIGRATING', dst.id);
  expect(await on(src.port, 'MIGRATE', '127.0.0.1', dst.port, '', 0, 5000, 'KEYS', ...first)).toBe('OK');
  return { slot, src, dst, all };
}

/** Moves the rest of the slot's keys and assigns it to the destination everywhere, as redis-cli does. */
async function finishMove({ slot, src, dst, all }: { slot: number; src: Node; dst: Node; all: Node[] }): Promise<void> {
  for (;;) {
    const batch = (await on(src.port, 'CLUSTER', 'GETKEYSINSLOT', slot, 100)) as string[];
    if (batch.length === 0) break;
    await on(src.port, 'MIGRATE', '127.0.0.1', dst.port, '', 0, 5000, 'KEYS', ...batch);
  }
  for (const n of all) await on(n.port, 'CLUSTER', 'SETSLOT', slot, 'NODE', dst.id);
  await waitFor(async () => (await fetch(`${t.url}/readyz`)).status === 200, 20_000, 100);
}

/** A task for the orchestrator's agent with a sub-task for HELPER holding one live lease. */
async function tree(name: string): Promise<{ childId: string; leaseId: string }> {
  const o = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: name,
    agent: A,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  expect(o.status).toBe(201);
  const s = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
    parentTaskId: name,
    taskId: 'child',
    agent: `spiffe://dev.local${HELPER}`,
    ttlSeconds: 300,
    grants: [{ role: 'demo-api' }],
  });
  expect(s.status).toBe(201);
  const childId = s.body.taskId as string;
  const c = await call(t.url, 'POST', '/v1/credentials', t.as(HELPER), { taskId: childId, role: 'demo-api' });
  expect(c.status).toBe(201);
  return { childId, leaseId: c.body.leaseId as string };
}

const statusOf = async (taskId: string, as: string) =>
  (await call(t.url, 'GET', `/v1/tasks/${encodeURIComponent(taskId)}`, t.as(as))).body.status as string;

/** Completing `name` during the move is refused whole (503 + Retry-After); after it, it ends the whole tree. */
async function completeAcrossMove(name: string, childId: string, move: Parameters<typeof finishMove>[0]): Promise<void> {
  const during = await call(t.url, 'POST', `/v1/tasks/${name}/complete`, t.as(ORCH));
  // Nothing was written: the parent is as open as its sub-task (no half of the ending). Read from Redis (ioredis
  // follows the ASK): the API's task read pages the task's leases, a script the moving slot refuses too (503).
  const { redis, keys } = t.broker.deps;
  const duringState = { parent: await redis.hget(keys.task(name), 'status'), child: await redis.hget(keys.task(childId), 'status') };
  await finishMove(move);
  const retried = await call(t.url, 'POST', `/v1/tasks/${name}/complete`, t.as(ORCH));
  const childIssues = (await call(t.url, 'POST', '/v1/credentials', t.as(HELPER), { taskId: childId, role: 'demo-api' })).status;
  expect({
    during: during.status,
    code: during.body?.code,
    retryAfter: during.headers.get('retry-after'),
    duringState,
    retried: retried.status,
    parent: await statusOf(name, ORCH),
    child: await statusOf(childId, AGENT),
    childIssues,
  }).toEqual({
    during: 503,
    code: 'not_ready',
    retryAfter: '1',
    duringState: { parent: 'open', child: 'open' },
    retried: 202,
    parent: 'completed',
    child: 'completed',
    childIssues: 409,
  });
}

test('the sub-task already moved: completing its parent on the source is refused whole, then ends the tree', async () => {
  const { childId } = await tree('rs-src');
  // The move's first batch happens to hold the sub-task: task-end's read of it fails on the source ("non local key").
  const move = await startMove(t.broker.deps.keys.task(childId), [t.broker.deps.keys.task(childId)]);
  await completeAcrossMove('rs-src', childId, move);
}, 90_000);

test('the parent moved first: completing it on the destination (after ASK) is refused whole, then ends the tree', async () => {
  const { childId } = await tree('rs-dst');
  const keys = t.broker.deps.keys;
  // The parent's hash and the open index (task-end's declared keys) have left: the script runs on the destination,
  // where the sub-task's hash and the parent's children, not there yet, read as absent (a silent half-run).
  const bucket = keys.bucketOfTask('rs-dst');
  const move = await startMove(keys.task('rs-dst'), [keys.task('rs-dst'), keys.openTasks(bucket)]);
  await completeAcrossMove('rs-dst', childId, move);
}, 90_000);

test('every script that reaches undeclared keys refuses with TRYAGAIN on both sides of a moving slot, writing nothing', async () => {
  const { childId, leaseId } = await tree('rs-raw');
  const keys = t.broker.deps.keys;
  const bucket = keys.bucketOfTask('rs-raw');
  const base = keys.base(bucket);
  // A work-list entry, so every key the scripts declare exists (an absent declared key is Redis's own TRYAGAIN).
  await t.broker.deps.redis.zadd(keys.tasksEnding(bucket), 1, 'rs-raw~gone');
  const head = (await t.broker.deps.redis.get(keys.auditHead(bucket)))!;
  const record = JSON.stringify({ action: 'task.open', actor: 'x', decision: 'ok', taskId: 'rs-raw' });
  const calls: [string, string[], (string | number)[]][] = [
    ['task-end', [keys.task('rs-raw'), keys.openTasks(bucket)], [base, 'completed', 'task_completed', 'task_completed', 60_000, 'rs-raw']],
    ['sweep', [keys.liveLeases(bucket), keys.openTasks(bucket)], [base, 1000, 200, 60_000, 15_000, 'jwt']],
    ['leases-end', [keys.liveLeases(bucket)], [base, 'revoked', 'task_completed', 60_000, 'jwt', leaseId]],
    ['reconcile-tasks', [keys.tasksEnding(bucket)], [base, '1', 'rs-raw~gone']],
    ['reconcile-page', [keys.liveLeases(bucket)], [base, leaseId]],
    ['index-forget', [keys.tasksByTime(bucket)], [base, 'task:', 'rs-raw', 0]],
    [
      'audit-append',
      [keys.auditHead(bucket), keys.auditStream(bucket)],
      [head, `${head}x`, base, 60_000, ONCE_KEEP_MS, record, 'rs-raw', ''],
    ],
  ];
  const declared = [...new Set(calls.flatMap(([, ks]) => ks))];
  // The sub-task's hash leaves first: on the source, the scripts run (their keys are there) and would miss it.
  const move = await startMove(keys.task(childId), [keys.task(childId)]);
  const { src, dst } = move;
  const client = async (port: number) => {
    const c = cluster.client(cluster.ports.indexOf(port));
    await c.connect();
    return c;
  };
  const snapshot = async () => {
    const out: Record<string, string> = {};
    for (const port of [src.port, dst.port]) {
      const c = await client(port);
      for (const k of (await c.call('CLUSTER', 'GETKEYSINSLOT', move.slot, 1000)) as string[]) {
        if (port === dst.port) await c.call('ASKING'); // the slot is not the destination's yet
        // A hash by its content (field order in DUMP's encoding may differ without a write that changed anything).
        const type = String(await c.type(k));
        if (type === 'hash') {
          if (port === dst.port) await c.call('ASKING');
          const h = await c.hgetall(k);
          out[`${port} ${k}`] = JSON.stringify(
            Object.keys(h)
              .sort()
              .map((f) => [f, h[f]]),
          );
        } else {
          if (port === dst.port) await c.call('ASKING');
          out[`${port} ${k}`] = (await c.dumpBuffer(k))?.toString('hex') ?? '';
        }
      }
      c.disconnect();
    }
    return out;
  };
  const run = async (port: number, asking: boolean) => {
    const answers: Record<string, string> = {};
    for (const [name, ks, args] of calls) {
      const c = await client(port);
      if (asking) await c.call('ASKING');
      answers[name] = await c.eval(script(name).lua, ks.length, ...ks, ...args).then(
        () => 'answered',
        (e: Error) => e.message.split(' ')[0]!,
      );
      c.disconnect();
    }
    return answers;
  };
  const refused = Object.fromEntries(calls.map(([n]) => [n, 'TRYAGAIN']));
  const before = await snapshot();
  expect(await run(src.port, false)).toEqual(refused);
  expect(await snapshot()).toEqual(before);
  // Then every declared key leaves too: after an ASK, the scripts run on the destination, where the keys still on
  // the source (the parent's children, the lease, the indexes) would read as absent.
  expect(await on(src.port, 'MIGRATE', '127.0.0.1', dst.port, '', 0, 5000, 'KEYS', ...declared)).toBe('OK');
  const moved = await snapshot();
  expect(await run(dst.port, true)).toEqual(refused);
  expect(await snapshot()).toEqual(moved);
  await finishMove(move);
}, 90_000);
