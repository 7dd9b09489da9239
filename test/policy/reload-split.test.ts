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
  for (const p of ['invalid', 'newer']) await dropPrefix(`${prefix}-${p}`);
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
const ready = async (t: TestBroker) => (await call(t.url, 'GET', '/readyz', {})).status;
const FORBID = 'forbid (principal, action == Action::"issue", resource == Role::"tickets-api");\n';

test('an instance whose files do not load after an announced reload is not ready, audited, and catches up', async () => {
  const { a, b, dirA, dirB } = await twoInstances('invalid');
  const open = await call(a.url, 'POST', '/v1/tasks', a.as(ORCH), {
    taskId: 'ps-1',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'policy split',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api' }],
  });
  expect(open.status).toBe(201);
  writeFileSync(join(dirA, 'zz-incident.cedar'), FORBID);
  writeFileSync(join(dirB, 'zz-incident.cedar'), FORBID.slice(0, 60)); // half-written on B
  const r = await call(a.url, 'POST', '/v1/admin/policy/reload', a.as(ADMIN), {});
  expect(r.status).toBe(202);
  // Before: 200 on both, and B went on issuing tickets-api under the replaced set.
  await waitFor(async () => (await ready(b)) === 503, 5000);
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

test('an instance whose files load as a newer set than the one announced stays ready; the mismatch is audited (found in review)', async () => {
  // The new files reach B first and its watcher loads them; the admin's reload lands on A, still on the old
  // files. Before the review's fix, B went 503 for good: its retries could never load the announced (older) set.
  const { a, b, dirA, dirB } = await twoInstances('newer');
  writeFileSync(join(dirB, 'zz-incident.cedar'), FORBID);
  await waitFor(async () => b.broker.deps.policy.version !== a.broker.deps.policy.version, 5000);
  const r = await call(a.url, 'POST', '/v1/admin/policy/reload', a.as(ADMIN), {});
  expect(r.status).toBe(202);
  const records = async () =>
    (await auditRecords(a.broker.deps.redis, a.broker.deps.keys)).filter((x) => x.action === 'policy.reload' && x.decision === 'error');
  await waitFor(async () => (await records()).length > 0, 5000);
  expect(await records()).toEqual([
    expect.objectContaining({ reason: 'policy_mismatch', detail: { expected: r.body.version, inForce: b.broker.deps.policy.version } }),
  ]);
  expect([await ready(a), await ready(b)]).toEqual([200, 200]);
  writeFileSync(join(dirA, 'zz-incident.cedar'), FORBID);
  await waitFor(async () => a.broker.deps.policy.version === b.broker.deps.policy.version, 5000);
  expect([await ready(a), await ready(b)]).toEqual([200, 200]);
}, 60_000);
