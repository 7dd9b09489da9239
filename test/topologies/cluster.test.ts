import { cpSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { loadConfig } from '../../src/config/load.ts';
import { ADMIN, AGENT, ORCH, call, startTestBroker, testConfigFile, uniquePrefix, waitFor, type TestBroker } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { type BrokerProcess, START_TIMEOUT_MS, startBrokerProcess } from '../helpers/process.ts';
import { type RedisCluster, startCluster } from '../helpers/redis-topology.ts';

/**
 * The broker on a real 3-master Redis Cluster (contract section 8): every
 * script and transaction touches one slot, tasks and leases spread over all
 * masters, and what one instance announces (policy reload, key rotation)
 * reaches the others through the Cluster's pub/sub. One instance runs as its
 * own process, one in this process.
 */
let cluster: RedisCluster;
let a: TestBroker;
let b: BrokerProcess;
const issuer = new TestIssuer();
const prefix = uniquePrefix('cluster');
const policies = mkdtempSync(join(tmpdir(), 'jit-cluster-policies-'));

beforeAll(async () => {
  cluster = await startCluster({ masters: 3 });
  cpSync(resolve('config/policies'), policies, { recursive: true });
  const file = testConfigFile(issuer, prefix, {
    redis: { cluster: { nodes: cluster.urls }, prefix },
    policies,
    tasks: { maxTtlSeconds: 86_400, maxDelegationDepth: 3, maxGrants: 20, maxLeases: 0 },
  });
  a = await startTestBroker('cluster-a', { prefix, issuer, loaded: loadConfig({}, file) });
  b = await startBrokerProcess(file, { args: ['--api'] });
}, START_TIMEOUT_MS + 60_000);
afterAll(async () => {
  await b?.kill('SIGTERM');
  await a?.broker.close();
  await cluster?.stop();
});

const as = (path: string) => ({ authorization: `Bearer ${issuer.svid(path)}` });
const agent = `spiffe://dev.local${AGENT}`;

test('tasks and leases spread over every master; open, issue, complete and revoke across two instances', async () => {
  const tasks = Array.from({ length: 24 }, (_, i) => `t-cl-${i}`);
  const leases: string[] = [];
  for (const [i, taskId] of tasks.entries()) {
    const api = i % 2 === 0 ? a.url : b.url;
    const o = await call(api, 'POST', '/v1/tasks', as(ORCH), {
      taskId,
      agent,
      tenant: 'acme',
      purpose: 'p',
      ttlSeconds: 600,
      grants: [{ role: 'demo-api' }],
    });
    expect(o.status).toBe(201);
    const c = await call(i % 2 === 0 ? b.url : a.url, 'POST', '/v1/credentials', as(AGENT), { taskId, role: 'demo-api' });
    expect(c.status).toBe(201);
    leases.push(c.body.leaseId);
  }
  // Every master holds some of the broker's keys.
  for (let i = 0; i < 3; i++) {
    const node = cluster.client(i);
    const [, keys] = await node.scan('0', 'MATCH', `${prefix}:*task:*`, 'COUNT', 10_000);
    await node.quit();
    expect(keys.length).toBeGreaterThan(0);
  }
  // The opener's open tasks (tasks.maxOpenTasks: a key of its own, in another slot than most tasks) counted every one
  // opened on either instance, and completing them (on the other one) gave every place back.
  const openOf = a.broker.deps.keys.openTasksOf(`spiffe://dev.local${ORCH}`);
  expect(await a.broker.deps.redis.zcard(openOf)).toBe(24);
  for (const [i, taskId] of tasks.entries()) {
    expect((await call(i % 2 === 0 ? b.url : a.url, 'POST', `/v1/tasks/${taskId}/complete`, as(ORCH))).status).toBe(202);
  }
  expect(await a.broker.deps.redis.zcard(openOf)).toBe(0);
  // Only `a` runs a worker: it revokes what `b`'s callers issued too.
  for (const leaseId of leases) {
    await waitFor(async () => (await call(b.url, 'GET', `/v1/leases/${leaseId}`, as(AGENT))).body.status === 'revoked', 10_000);
  }
  const list = await call(b.url, 'GET', '/v1/tasks?status=completed&limit=500', as(ADMIN));
  expect(list.body.items.filter((t: { taskId: string }) => t.taskId.startsWith('t-cl-'))).toHaveLength(24);
  const evidence = await call(a.url, 'GET', '/v1/tasks/t-cl-3/evidence', as(ORCH));
  expect(evidence.body.chain).toBe('intact');
}, 60_000);

test('TTL expiry and sub-tasks on the Cluster', async () => {
  await call(a.url, 'POST', '/v1/tasks', as(ORCH), {
    taskId: 't-cl-ttl',
    agent,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  const sub = await call(b.url, 'POST', '/v1/tasks', as(AGENT), {
    parentTaskId: 't-cl-ttl',
    agent: 'spiffe://dev.local/agent/helper',
    ttlSeconds: 60,
    grants: [{ role: 'demo-api' }],
  });
  expect(sub.status).toBe(201);
  const c = await call(b.url, 'POST', '/v1/credentials', as('/agent/helper'), { taskId: sub.body.taskId, role: 'demo-api', ttlSeconds: 1 });
  const expired = await waitFor(async () => {
    const l = (await call(a.url, 'GET', `/v1/leases/${c.body.leaseId}`, as('/agent/helper'))).body;
    return l.status === 'expired' && l;
  }, 8000);
  expect(expired.reason).toBe('ttl_expired');
});

test('quarantining an approver on one instance revokes the credentials issued on its word in every bucket, sub-tasks included', async () => {
  const APPROVER = '/ops/cl-approver';
  const HELPER = '/agent/cl-helper';
  const leases: string[] = [];
  for (let i = 0; i < 8; i++) {
    const taskId = `t-cl-appr-${i}`;
    const o = await call(a.url, 'POST', '/v1/tasks', as(ORCH), {
      taskId,
      agent,
      tenant: 'acme',
      purpose: 'p',
      ttlSeconds: 600,
      grants: [{ role: 'prod-deploy' }],
    });
    expect(o.status).toBe(201);
    // Every other one in a sub-task delegated to a helper (its own bucket, maybe its own master).
    let on = { taskId, who: AGENT };
    if (i % 2 === 1) {
      const sub = await call(b.url, 'POST', '/v1/tasks', as(AGENT), {
        parentTaskId: taskId,
        agent: `spiffe://dev.local${HELPER}`,
        ttlSeconds: 300,
        grants: [{ role: 'prod-deploy' }],
      });
      expect(sub.status).toBe(201);
      on = { taskId: sub.body.taskId, who: HELPER };
    }
    const ask = () => call(i % 2 === 0 ? a.url : b.url, 'POST', '/v1/credentials', as(on.who), { taskId: on.taskId, role: 'prod-deploy' });
    const pending = await ask();
    expect(pending.status).toBe(202);
    expect((await call(b.url, 'POST', `/v1/approvals/${pending.body.approvalId}`, as(APPROVER), { decision: 'approve' })).status).toBe(200);
    const issued = await ask();
    expect(issued.status).toBe(201);
    leases.push(issued.body.leaseId);
  }
  const q = await call(b.url, 'POST', '/v1/admin/quarantine', as(ADMIN), {
    agent: `spiffe://dev.local${APPROVER}`,
    reason: 'approver key leaked',
  });
  expect(q.status).toBe(201);
  expect(q.body).toMatchObject({ tasks: 0, approvedLeases: 8 });
  for (const leaseId of leases) {
    const l = (await call(a.url, 'GET', `/v1/leases/${leaseId}`, as(ADMIN))).body;
    expect([l.status, l.reason]).toEqual(['revoked', 'revoked_by_admin']);
  }
});

test('a policy reload and a signing-key rotation on one instance reach the other', async () => {
  // A policy that forbids demo-api, written to disk; only `a` is told to reload.
  writeFileSync(
    join(policies, 'zz-forbid-demo.cedar'),
    '@id("no-demo")\nforbid (principal, action == Action::"issue", resource == Role::"demo-api");\n',
  );
  await call(a.url, 'POST', '/v1/tasks', as(ORCH), {
    taskId: 't-cl-pol',
    agent,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  expect((await call(a.url, 'POST', '/v1/admin/policy/reload', as(ADMIN))).status).toBe(202);
  await waitFor(
    async () => (await call(b.url, 'POST', '/v1/credentials', as(AGENT), { taskId: 't-cl-pol', role: 'demo-api' })).status === 403,
    8000,
  );

  const before = (await call(b.url, 'GET', '/.well-known/jwks.json', {})).body.keys.map((k: { kid: string }) => k.kid);
  const rotated = await call(a.url, 'POST', '/v1/admin/rotate', as(ADMIN), { target: 'signing-key', immediate: true });
  expect(rotated.status).toBe(202);
  const after = await waitFor(async () => {
    const keys = (await call(b.url, 'GET', '/.well-known/jwks.json', {})).body.keys.map((k: { kid: string }) => k.kid);
    return keys.includes(rotated.body.kid) && keys;
  }, 8000);
  // Immediate: the old key left the JWKS at once.
  for (const kid of before) expect(after).not.toContain(kid);
}, 30_000);

test('one master of the Cluster switched to allkeys-lru: /readyz 503 naming that node; noeviction again: ready', async () => {
  const node = cluster.client(1);
  await node.config('SET', 'maxmemory-policy', 'allkeys-lru');
  try {
    const r = await waitFor(async () => {
      const r = await call(a.url, 'GET', '/readyz', {});
      return r.status === 503 && r;
    });
    expect(r.body.checks).toMatchObject({ redis: true, redisSetup: false });
    expect(r.body.problems).toEqual([
      expect.stringMatching(new RegExp(`^maxmemory-policy is allkeys-lru on 127\\.0\\.0\\.1:${cluster.ports[1]}; `)),
    ]);
  } finally {
    await node.config('SET', 'maxmemory-policy', 'noeviction');
    await node.quit();
  }
  await waitFor(async () => (await call(a.url, 'GET', '/readyz', {})).status === 200);
});
