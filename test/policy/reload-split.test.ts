import { afterAll, expect, test } from '@jest/globals';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { validateConfig } from '../../src/config/load.ts';
import {
  ADMIN,
  AGENT,
  ORCH,
  auditRecords,
  openAgentTask,
  call,
  dropPrefix,
  startTestBroker,
  testRawConfig,
  uniquePrefix,
  waitFor,
  type TestBroker,
} from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';

/**
 * A policy reload that one instance cannot follow (its copy of the directory is half-written, as with
 * a lagging mounted volume). Found from outside: the admin got `reloaded: true`, instance A denied while
 * B kept issuing under the set the operators had just replaced (without the incident's forbid), both
 * answered ready, and B's refusal was only a log line. Now B is not ready until it loads the announced
 * set, the mismatch is audited, and B catches up on its own once its files are right.
 */
const prefix = uniquePrefix('policy-split');
const issuer = new TestIssuer();
const brokers: TestBroker[] = [];
const dirs: string[] = [];
afterAll(async () => {
  for (const b of brokers) await b.broker.close().catch(() => {});
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  for (const p of ['invalid', 'older', 'newer', 'gone', 'cross', 'late']) await dropPrefix(`${prefix}-${p}`);
});

/** Two instances on one prefix, each with its own copy of the policy directory (as with mounted volumes). */
async function twoInstances(name: string) {
  const copy = () => {
    const d = mkdtempSync(join(tmpdir(), 'jit-policy-split-'));
    cpSync(resolve('config/policies'), d, { recursive: true });
    dirs.push(d);
    return d;
  };
  const [dirA, dirB] = [copy(), copy()];
  const p = `${prefix}-${name}`;
  const raw = testRawConfig(issuer, p, { policies: dirA });
  const configPath = join(process.cwd(), 'config/test.yaml');
  const a = await startTestBroker('policy-split', { prefix: p, issuer, loaded: validateConfig(raw, {}, configPath) });
  brokers.push(a);
  const b = await startTestBroker('policy-split', {
    prefix: p,
    issuer,
    loaded: validateConfig({ ...raw, policies: dirB }, {}, configPath),
  });
  brokers.push(b);
  return { a, b, dirA, dirB, prefix: p };
}
// The tests run at once (each on its own prefix, directories and brokers): most of each is waiting for a
// follower's next check (every 5 s), not working. What a test waits for has 15 s, as one broker among several
// in a busy process may be slower to get there.
const ready = async (t: TestBroker) => (await call(t.url, 'GET', '/readyz', {})).status;
const FORBID = 'forbid (principal, action == Action::"issue", resource == Role::"tickets-api");\n';

test.concurrent('an instance whose files do not load after an announced reload is not ready, audited, and catches up', async () => {
  const { a, b, dirA, dirB } = await twoInstances('invalid');
  await openAgentTask(a, 'ps-1', [{ role: 'tickets-api' }], 'policy split');
  writeFileSync(join(dirA, 'zz-incident.cedar'), FORBID);
  writeFileSync(join(dirB, 'zz-incident.cedar'), FORBID.slice(0, 60)); // half-written on B
  const r = await call(a.url, 'POST', '/v1/admin/policy/reload', a.as(ADMIN), {});
  expect(r.status).toBe(202);
  // Before: 200 on both, and B went on issuing tickets-api under the replaced set.
  await waitFor(async () => (await ready(b)) === 503, 15_000);
  expect(await ready(a)).toBe(200);
  expect((await call(a.url, 'POST', '/v1/credentials', a.as(AGENT), { taskId: 'ps-1', role: 'tickets-api' })).status).toBe(403);
  const records = (await auditRecords(a.broker.deps.redis, a.broker.deps.keys)).filter((x) => x.action === 'policy.reload');
  expect(records).toContainEqual(
    expect.objectContaining({
      actor: 'broker',
      decision: 'error',
      reason: 'policy_invalid',
      detail: expect.objectContaining({ expected: r.body.version }),
    }),
  );
  const metrics = await (await fetch(`${b.url}/metrics`)).text();
  expect(metrics).toMatch(/^jit_policy_in_sync 0$/m);
  // The volume catches up: B loads the announced set by itself and is ready again, with the forbid.
  writeFileSync(join(dirB, 'zz-incident.cedar'), FORBID);
  await waitFor(async () => (await ready(b)) === 200, 15_000);
  expect(b.broker.deps.policy.version).toBe(r.body.version);
  expect((await call(b.url, 'POST', '/v1/credentials', b.as(AGENT), { taskId: 'ps-1', role: 'tickets-api' })).status).toBe(403);
}, 60_000);

test.concurrent('an instance whose files are older than the announced set is not ready and does not issue until they arrive (found in review)', async () => {
  // The incident's forbid reaches A; the admin reloads through A; B's copy is still the old, valid set.
  // Before the review's fix, B stayed ready and issued what the new set forbids.
  const { a, b, dirA, dirB } = await twoInstances('older');
  await openAgentTask(a, 'ps-2', [{ role: 'tickets-api' }], 'policy split');
  await openAgentTask(a, 'ps-3', [{ role: 'tickets-api' }], 'policy split');
  writeFileSync(join(dirA, 'zz-incident.cedar'), FORBID);
  const r = await call(a.url, 'POST', '/v1/admin/policy/reload', a.as(ADMIN), {});
  expect(r.status).toBe(202);
  await waitFor(async () => (await ready(b)) === 503, 15_000);
  const viaB = await call(b.url, 'POST', '/v1/credentials', b.as(AGENT), { taskId: 'ps-2', role: 'tickets-api' });
  expect({ status: viaB.status, code: viaB.body.code }).toEqual({ status: 503, code: 'not_ready' });
  // What ends things goes ahead: completing a task through B still works.
  expect((await call(b.url, 'POST', '/v1/tasks/ps-3/complete', b.as(ORCH))).status).toBe(202);
  const records = (await auditRecords(a.broker.deps.redis, a.broker.deps.keys)).filter((x) => x.action === 'policy.reload');
  expect(records).toContainEqual(expect.objectContaining({ decision: 'error', reason: 'policy_mismatch' }));
  writeFileSync(join(dirB, 'zz-incident.cedar'), FORBID); // the files arrive
  await waitFor(async () => (await ready(b)) === 200, 15_000);
  expect((await call(b.url, 'POST', '/v1/credentials', b.as(AGENT), { taskId: 'ps-2', role: 'tickets-api' })).status).toBe(403);
}, 60_000);

test.concurrent('a reload made through an instance with older files holds the newer ones back only until its own files catch up (found in review)', async () => {
  // The new files reach B first; the admin's reload lands on A, still on the old ones. B waits for A, and
  // once A's watcher loads the same set, B is ready again (an earlier version of the fix kept it out for good).
  const { a, b, dirA, dirB } = await twoInstances('newer');
  writeFileSync(join(dirB, 'zz-incident.cedar'), FORBID);
  await waitFor(async () => b.broker.deps.policy.version !== a.broker.deps.policy.version, 15_000);
  expect((await call(a.url, 'POST', '/v1/admin/policy/reload', a.as(ADMIN), {})).status).toBe(202);
  await waitFor(async () => (await ready(b)) === 503, 15_000);
  writeFileSync(join(dirA, 'zz-incident.cedar'), FORBID);
  await waitFor(async () => (await ready(b)) === 200, 20_000);
  expect(await ready(a)).toBe(200);
  expect(a.broker.deps.policy.version).toBe(b.broker.deps.policy.version);
}, 60_000);

test.concurrent('the announcing instance gone and its word expired: a follower on an older copy stays out until its files arrive (found in review)', async () => {
  // Before: a Redis read that failed, or an announcer gone, counted as agreement: the follower was ready again
  // on the replaced set.
  const { a, b, dirA, dirB, prefix: p } = await twoInstances('gone');
  writeFileSync(join(dirA, 'zz-incident.cedar'), FORBID);
  const r = await call(a.url, 'POST', '/v1/admin/policy/reload', a.as(ADMIN), {});
  expect(r.status).toBe(202);
  await waitFor(async () => (await ready(b)) === 503, 15_000);
  await a.broker.close();
  const redis = b.broker.deps.redis;
  const words = await redis.keys(`${p}:*policy-version*`); // A's word expired (B's own does not matter to B)
  expect(words.length).toBeGreaterThan(0);
  await redis.del(...words);
  await new Promise((res) => setTimeout(res, 6000)); // a check period
  expect(await ready(b)).toBe(503);
  writeFileSync(join(dirB, 'zz-incident.cedar'), FORBID);
  await waitFor(async () => (await ready(b)) === 200, 15_000);
  expect(b.broker.deps.policy.version).toBe(r.body.version);
}, 60_000);

test.concurrent("two reloads at once: an announcement older than an instance's own reload is ignored, so the two cannot wait on each other (found in review)", async () => {
  // Crossing reloads through instances with different copies left each waiting for the other's set: the whole
  // fleet unready for as long as the copies differed. Here the crossing is made exact: A reloads (B, on
  // another copy, follows it), then an announcement of B's set stamped before A's reload reaches A.
  const { a, b, dirB } = await twoInstances('cross');
  writeFileSync(join(dirB, 'zz-incident.cedar'), FORBID);
  await waitFor(async () => b.broker.deps.policy.version !== a.broker.deps.policy.version, 15_000);
  expect((await call(a.url, 'POST', '/v1/admin/policy/reload', a.as(ADMIN), {})).status).toBe(202);
  await waitFor(async () => (await ready(b)) === 503, 15_000);
  const { redis, keys } = a.broker.deps;
  await redis.set(keys.plain('policy-version', 'crossing'), b.broker.deps.policy.version, 'PX', 30_000); // its word
  await redis.publish(
    keys.channel('broker'),
    JSON.stringify({ type: 'policy-reload', version: b.broker.deps.policy.version, instance: 'crossing', at: 1 }),
  );
  await new Promise((res) => setTimeout(res, 1000));
  // Before: A followed it too, and both answered 503.
  expect(await ready(a)).toBe(200);
}, 60_000);

test.concurrent('an announcement older than the one an instance follows, arriving late, does not replace it (found in review)', async () => {
  const { b } = await twoInstances('late');
  const { redis, keys } = b.broker.deps;
  const announce = async (instance: string, version: string, at: number) => {
    await redis.set(keys.plain('policy-version', instance), version, 'PX', 30_000);
    await redis.publish(keys.channel('broker'), JSON.stringify({ type: 'policy-reload', version, instance, at }));
  };
  await announce('newer', b.broker.deps.policy.version, 2_000); // B agrees with it
  await new Promise((res) => setTimeout(res, 500));
  expect(await ready(b)).toBe(200);
  await announce('older', 'a-set-nobody-has', 1_000); // stamped earlier, delivered later
  await new Promise((res) => setTimeout(res, 1000));
  // Before: B followed it and was out (503) for a set no instance has now.
  expect(await ready(b)).toBe(200);
}, 60_000);
