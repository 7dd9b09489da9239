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
  await dropPrefix(prefix);
});

test('an instance that cannot load the announced policy set is not ready, audited, and catches up', async () => {
  const copy = () => {
    const d = mkdtempSync(join(tmpdir(), 'jit-policy-split-'));
    cpSync(resolve('config/policies'), d, { recursive: true });
    dirs.push(d);
    return d;
  };
  const [dirA, dirB] = [copy(), copy()];
  const raw = testRawConfig(issuer, prefix, { policies: dirA });
  const configPath = join(process.cwd(), 'config/test.yaml');
  const a = await startTestBroker('policy-split', { prefix, issuer, loaded: validateConfig(raw, {}, configPath) });
  brokers.push(a);
  const b = await startTestBroker('policy-split', { prefix, issuer, loaded: validateConfig({ ...raw, policies: dirB }, {}, configPath) });
  brokers.push(b);
  const open = await call(a.url, 'POST', '/v1/tasks', a.as(ORCH), {
    taskId: 'ps-1',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'policy split',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api' }],
  });
  expect(open.status).toBe(201);
  const forbid = 'forbid (principal, action == Action::"issue", resource == Role::"tickets-api");\n';
  writeFileSync(join(dirA, 'zz-incident.cedar'), forbid);
  writeFileSync(join(dirB, 'zz-incident.cedar'), forbid.slice(0, 60)); // half-written on B
  const r = await call(a.url, 'POST', '/v1/admin/policy/reload', a.as(ADMIN), {});
  expect(r.status).toBe(202);
  const ready = async (t: TestBroker) => (await call(t.url, 'GET', '/readyz', {})).status;
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
  writeFileSync(join(dirB, 'zz-incident.cedar'), forbid);
  await waitFor(async () => (await ready(b)) === 200, 15_000);
  expect(b.broker.deps.policy.version).toBe(r.body.version);
  expect((await call(b.url, 'POST', '/v1/credentials', b.as(AGENT), { taskId: 'ps-1', role: 'tickets-api' })).status).toBe(403);
}, 60_000);
