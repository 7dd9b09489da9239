import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../src/config/load.ts';
import { script } from '../../src/redis/scripts.ts';
import {
  ADMIN,
  ORCH,
  REDIS_URL,
  auditRecords,
  call,
  startTestBroker,
  type TestBroker,
  testRawConfig,
  uniquePrefix,
  waitFor,
} from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { jest } from '@jest/globals';
import { type BrokerProcess, START_TIMEOUT_MS, startBrokerProcess } from '../helpers/process.ts';
import { redisCutProxy } from '../helpers/redis-cut-proxy.ts';

/**
 * Admin operations made in many steps, their process SIGKILLed at the worst moment: it reaches Redis through
 * a proxy that cuts it off at a given command (what it sent before reaches Redis, that command and all after
 * it never do), and is killed there. Another instance's outbox recovery then appends what it left.
 *
 * - The kill switch, a rotation and a policy reload keep an `interrupted` record in the ops outbox while they
 *   run and wrote their outcome in its place when done. Cut off at that last append (a process dying, or
 *   Redis failing at that moment), the operation had completed but the intent stayed in the outbox, and
 *   recovery appended it: the audit trail said `interrupted` and the outcome (tasks and leases ended, keys
 *   rotated) was lost. The outcome now takes the intent's place in the outbox (audit-outbox-swap.lua) before
 *   it is appended.
 * - A quarantine is put in force with its record in the outbox (quarantine-add.lua); its identity's open
 *   tasks are ended after. Cut off in between, the quarantine stood but the tasks stayed open and their
 *   leases live until their TTL: nothing ended them. Recovery now ends them before it appends the record.
 */
const issuer = new TestIssuer();
const prefix = uniquePrefix('crash-after-decision');
const appendSha = script('audit-append').sha;
let proxy: Awaited<ReturnType<typeof redisCutProxy>>;
let survivor: TestBroker;
let viaProxy: string;
const victims: BrokerProcess[] = [];
const as = (path: string) => ({ authorization: `Bearer ${issuer.svid(path)}` });

beforeAll(async () => {
  proxy = await redisCutProxy(REDIS_URL);
  // One config (one KEK) in two files: the process to kill reaches Redis through the proxy, the survivor directly.
  const raw = testRawConfig(issuer, prefix, {
    server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } },
    rotation: { switchGraceMs: 0 },
  });
  const dir = mkdtempSync(join(tmpdir(), 'jit-crash-after-'));
  viaProxy = join(dir, 'proxy.yaml');
  const direct = join(dir, 'direct.yaml');
  writeFileSync(viaProxy, JSON.stringify({ ...raw, redis: { ...(raw.redis as object), url: proxy.url } }));
  writeFileSync(direct, JSON.stringify(raw));
  // API and worker (its revocations end the leases); its recovery is driven by the test (outbox.pass()).
  survivor = await startTestBroker('crash-after-survivor', { prefix, issuer, loaded: loadConfig({}, direct) });
}, 60_000);
afterAll(async () => {
  for (const v of victims) await v.kill();
  await survivor?.close();
  await proxy?.close();
});

/**
 * Starts an API process through the proxy, sends `request` to it with the proxy armed to cut it off at the
 * first EVALSHA of `sha` carrying `containing`, and SIGKILLs it once cut off.
 */
// Each test below starts an API process (killAt), allowed START_TIMEOUT_MS, and does a few seconds of work.
jest.setTimeout(START_TIMEOUT_MS + 60_000);

async function killAt(sha: string, containing: string, request: (url: string) => Promise<unknown>): Promise<void> {
  const victim = await startBrokerProcess(viaProxy, { args: ['--api'] });
  victims.push(victim);
  const cut = proxy.arm(sha, containing);
  const pending = request(victim.url).catch(() => undefined);
  await cut;
  await victim.kill('SIGKILL');
  await pending;
}

/** Recovery as it runs once the grace period is over: the ops outbox's members made older than it, then a pass. */
async function recover(): Promise<void> {
  const { redis, keys } = survivor.broker.deps;
  const outbox = keys.auditOutbox('ops');
  const flat = await redis.zrange(outbox, '0', '-1', 'WITHSCORES');
  for (let i = 0; i < flat.length; i += 2) await redis.zadd(outbox, 'XX', Number(flat[i + 1]) - 60_000, flat[i]!);
  await survivor.broker.outbox.pass();
}

async function opsRecords(action: string): Promise<Record<string, any>[]> {
  return (await auditRecords(survivor.broker.deps.redis, survivor.broker.deps.keys)).filter(
    (r) => r.chain === 'ops' && r.action === action,
  );
}

async function openTask(taskId: string, agentPath: string): Promise<string> {
  const open = await call(survivor.url, 'POST', '/v1/tasks', survivor.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${agentPath}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  expect(open.status).toBe(201);
  const issued = await call(survivor.url, 'POST', '/v1/credentials', survivor.as(agentPath), { taskId, role: 'demo-api' });
  expect(issued.status).toBe(201);
  return issued.body.leaseId as string;
}

test('a kill switch that completed is recorded with its outcome, not as interrupted, when its process dies at the outcome append', async () => {
  const rogue = '/agent/crash-rogue';
  await openTask('t-cad-kill', rogue);
  await killAt(appendSha, '"admin.revoke"', (url) =>
    call(url, 'POST', '/v1/admin/revoke', as(ADMIN), { agent: `spiffe://dev.local${rogue}` }),
  );
  // It completed: the task was ended before the cut.
  expect(await survivor.broker.deps.redis.hget(survivor.broker.deps.keys.task('t-cad-kill'), 'status')).toBe('completed');
  await recover();
  const records = await opsRecords('admin.revoke');
  // Before: one record, `detail: { agent, interrupted: true }`.
  expect(records).toEqual([
    expect.objectContaining({
      actor: `spiffe://dev.local${ADMIN}`,
      decision: 'ok',
      detail: { agent: `spiffe://dev.local${rogue}`, tasks: 1, leases: 1 },
    }),
  ]);
});

test('a kill switch whose process dies after its endings but before its outcome takes its place is recorded as recovered, not interrupted', async () => {
  const rogue = '/agent/crash-swap';
  const pattern = `spiffe://dev.local${rogue}`;
  await openTask('t-cad-swap', rogue);
  // Cut off at the swap (audit-outbox-swap.lua) itself: the task is ended, the intent alone is in the outbox.
  await killAt(script('audit-outbox-swap').sha, '"admin.revoke"', (url) =>
    call(url, 'POST', '/v1/admin/revoke', as(ADMIN), { agent: pattern }),
  );
  expect(await survivor.broker.deps.redis.hget(survivor.broker.deps.keys.task('t-cad-swap'), 'status')).toBe('completed');
  await recover();
  // Before: `detail: { agent, interrupted: true }`, though no task of the agent was left open. State shows the
  // outcome (not its counts: the task.revoke records name what was ended).
  const records = (await opsRecords('admin.revoke')).filter((r) => r.detail?.agent === pattern);
  expect(records).toEqual([
    expect.objectContaining({
      actor: `spiffe://dev.local${ADMIN}`,
      decision: 'ok',
      reason: 'revoked_by_admin',
      detail: { agent: pattern, recovered: true },
    }),
  ]);
  expect(await survivor.broker.deps.redis.zcard(survivor.broker.deps.keys.auditOutbox('ops'))).toBe(0);
});

test('a kill switch whose process dies before ending its tasks stays interrupted: state shows a task it had to end still open', async () => {
  const rogue = '/agent/crash-midway';
  const pattern = `spiffe://dev.local${rogue}`;
  await openTask('t-cad-midway', rogue);
  await killAt(script('task-end').sha, 't-cad-midway', (url) => call(url, 'POST', '/v1/admin/revoke', as(ADMIN), { agent: pattern }));
  expect(await survivor.broker.deps.redis.hget(survivor.broker.deps.keys.task('t-cad-midway'), 'status')).toBe('open');
  await recover();
  const records = (await opsRecords('admin.revoke')).filter((r) => r.detail?.agent === pattern);
  expect(records).toEqual([expect.objectContaining({ decision: 'ok', detail: { agent: pattern, interrupted: true } })]);
});

test('a policy reload that completed is recorded as done, not as interrupted, when its process dies at the outcome append', async () => {
  await killAt(appendSha, '"policy.reload"', (url) => call(url, 'POST', '/v1/admin/policy/reload', as(ADMIN), {}));
  await recover();
  const records = await opsRecords('policy.reload');
  // Before: `detail.interrupted: true`.
  expect(records).toHaveLength(1);
  expect(records[0]!.detail).toEqual({ policies: expect.any(Number), version: expect.any(String) });
});

test('a rotation that completed is recorded with what it rotated, not as rotation_interrupted, when its process dies at the outcome append', async () => {
  await killAt(appendSha, '"action":"rotate"', (url) => call(url, 'POST', '/v1/admin/rotate', as(ADMIN), { target: 'signing-key' }));
  await recover();
  const records = await opsRecords('rotate');
  // Before: `decision: error`, `reason: rotation_interrupted`.
  expect(records).toEqual([expect.objectContaining({ decision: 'ok', reason: 'signing-key', detail: { rotated: expect.anything() } })]);
});

test("a quarantine whose process dies before ending the identity's tasks has them ended by recovery, before its record", async () => {
  const suspect = '/agent/crash-suspect';
  const leaseId = await openTask('t-cad-q', suspect);
  const { redis, keys } = survivor.broker.deps;
  const pattern = `spiffe://dev.local${suspect}`;
  // Cut off at the first task ending (task-end.lua): the quarantine and its record are in Redis, the task is open.
  await killAt(script('task-end').sha, 't-cad-q', (url) =>
    call(url, 'POST', '/v1/admin/quarantine', as(ADMIN), { agent: pattern, reason: 'suspect' }),
  );
  expect(await redis.hexists(keys.quarantine(), pattern)).toBe(1);
  expect(await redis.hget(keys.task('t-cad-q'), 'status')).toBe('open');
  await recover();
  // Before: still `open`, its lease `active` until its TTL.
  const task = await call(survivor.url, 'GET', '/v1/tasks/t-cad-q', survivor.as(ADMIN));
  expect([task.body.status, task.body.reason]).toEqual(['completed', 'revoked_by_admin']);
  const lease = await waitFor(async () => {
    const l = (await call(survivor.url, 'GET', `/v1/leases/${leaseId}`, survivor.as(ADMIN))).body;
    return l.status === 'revoked' && l;
  });
  expect(lease.reason).toBe('revoked_by_admin');
  const all = await auditRecords(redis, keys);
  const added = all.filter((r) => r.action === 'quarantine.add');
  const revoked = all.filter((r) => r.action === 'task.revoke' && r.taskId === 't-cad-q');
  expect(added).toHaveLength(1);
  expect(added[0]).toMatchObject({ actor: `spiffe://dev.local${ADMIN}`, detail: { pattern } });
  expect(revoked).toHaveLength(1);
  // A second pass ends nothing more and writes nothing more.
  await recover();
  const again = await auditRecords(redis, keys);
  expect(again.filter((r) => r.action === 'quarantine.add' || (r.action === 'task.revoke' && r.taskId === 't-cad-q'))).toHaveLength(2);
  expect(await redis.zcard(keys.auditOutbox('ops'))).toBe(0);
});

test('a quarantine of an approver whose process dies before revoking the leases issued on its word has them revoked by recovery', async () => {
  const approver = '/ops/crash-approver';
  const agent = '/agent/crash-approved';
  const pattern = `spiffe://dev.local${approver}`;
  const { redis, keys } = survivor.broker.deps;
  const open = await call(survivor.url, 'POST', '/v1/tasks', survivor.as(ORCH), {
    taskId: 't-cad-approved',
    agent: `spiffe://dev.local${agent}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'prod-deploy' }],
  });
  expect(open.status).toBe(201);
  const ask = () => call(survivor.url, 'POST', '/v1/credentials', survivor.as(agent), { taskId: 't-cad-approved', role: 'prod-deploy' });
  const pending = await ask();
  expect(pending.status).toBe(202);
  expect((await call(survivor.url, 'POST', `/v1/approvals/${pending.body.approvalId}`, as(approver), { decision: 'approve' })).status).toBe(
    200,
  );
  const issued = await ask();
  expect(issued.status).toBe(201);
  const leaseId = issued.body.leaseId as string;
  // Cut off at the revocation of the approved lease (leases-end.lua): the quarantine and its record are in Redis,
  // the lease is live.
  await killAt(script('leases-end').sha, leaseId, (url) =>
    call(url, 'POST', '/v1/admin/quarantine', as(ADMIN), { agent: pattern, reason: 'approver key leaked' }),
  );
  expect(await redis.hexists(keys.quarantine(), pattern)).toBe(1);
  expect(await redis.hget(keys.lease(leaseId), 'status')).toBe('active');
  await recover();
  // Before: `active` until its TTL (recovery ended the quarantined identity's tasks only).
  const lease = (await call(survivor.url, 'GET', `/v1/leases/${leaseId}`, survivor.as(ADMIN))).body;
  expect([lease.status, lease.reason]).toEqual(['revoked', 'revoked_by_admin']);
  expect((await call(survivor.url, 'GET', '/v1/tasks/t-cad-approved', survivor.as(ADMIN))).body.status).toBe('open');
  const all = await auditRecords(redis, keys);
  expect(all.filter((r) => r.action === 'quarantine.add' && r.detail?.pattern === pattern)).toHaveLength(1);
  expect(all.filter((r) => r.action === 'lease.revoke' && r.leaseId === leaseId)).toEqual([
    expect.objectContaining({ actor: 'broker', reason: 'revoked_by_admin' }),
  ]);
  expect(await redis.zcard(keys.auditOutbox('ops'))).toBe(0);
});
