import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ORCH, auditRecords, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: labels a sub-task adds (contract section 3: a sub-task keeps its
 * tenant and every parent label and may add new keys). A new key still
 * widens under a policy that permits on the presence of a label: the agent
 * approves itself by opening a sub-task with that label. Rule: a request on
 * a task whose labels delegation added is permitted only if policy permits
 * it with all its labels and with only the root orchestrator's labels.
 */
const AGENT = '/agent/rt-deleg';
const HELPER = '/agent/rt-helper';
const id = (p: string) => `spiffe://dev.local${p}`;
let t: TestBroker;

beforeAll(async () => {
  const policies = mkdtempSync(join(tmpdir(), 'rt-deleg-policies-'));
  writeFileSync(
    join(policies, 'labels.cedar'),
    [
      '@id("manage") permit (principal, action in [Action::"openTask", Action::"completeTask", Action::"revoke"], resource);',
      '@id("approved-only") permit (principal, action == Action::"issue", resource) when { context.task.labels has approved };',
      '@id("not-frozen") forbid (principal, action == Action::"issue", resource) when { context.task.labels has frozen };',
      '',
    ].join('\n'),
  );
  t = await startTestBroker('rt-deleg', { config: { policies } });
});
afterAll(async () => {
  await t.close();
});

const root = (taskId: string, labels: Record<string, string>) =>
  call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: id(AGENT),
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
    labels,
  });
const sub = (by: string, parentTaskId: string, agent: string, labels: Record<string, string>, ttlSeconds = 60) =>
  call(t.url, 'POST', '/v1/tasks', t.as(by), {
    parentTaskId,
    agent: id(agent),
    ttlSeconds,
    grants: [{ role: 'demo-api' }],
    labels,
  });
const issue = (who: string, taskId: string) => call(t.url, 'POST', '/v1/credentials', t.as(who), { taskId, role: 'demo-api' });

test('an agent cannot approve itself by adding a label in a sub-task', async () => {
  expect((await root('rt-self-approve', { ticket: '1' })).status).toBe(201);

  // The sub-task may add the key (adding keys narrows everything the broker checks)...
  const s = await sub(AGENT, 'rt-self-approve', AGENT, { approved: 'yes' });
  expect(s.status).toBe(201);
  expect(s.body.labels).toEqual({ ticket: '1', approved: 'yes' });
  // ...but it does not make policy permit what the orchestrator's labels do not.
  const r = await issue(AGENT, s.body.taskId);
  expect({ status: r.status, code: r.body.code }).toEqual({ status: 403, code: 'policy_denied' });
  // Nor further down the chain.
  const deeper = await sub(AGENT, s.body.taskId, HELPER, { more: 'x' }, 30);
  expect(deeper.status).toBe(201);
  expect((await issue(HELPER, deeper.body.taskId)).body.code).toBe('policy_denied');

  // (Checked after the sub-task's: repeated denials of one caller are folded in the audit.)
  expect((await issue(AGENT, 'rt-self-approve')).body.code).toBe('policy_denied');

  const audit = await auditRecords(t.broker.deps.redis, t.broker.deps.keys);
  expect(audit.filter((x) => x.taskId === s.body.taskId && x.action === 'credential.deny')).toEqual([
    expect.objectContaining({ reason: 'policy_denied', detail: expect.objectContaining({ delegatedLabels: true }) }),
  ]);
});

test('labels the orchestrator set still work in sub-tasks; added labels still narrow', async () => {
  expect((await root('rt-approved', { approved: 'yes' })).status).toBe(201);
  const plain = await sub(AGENT, 'rt-approved', HELPER, { step: '2' });
  expect(plain.status).toBe(201);
  expect((await issue(HELPER, plain.body.taskId)).status).toBe(201);
  // An added label a forbid names still denies.
  const frozen = await sub(AGENT, 'rt-approved', HELPER, { frozen: 'yes' });
  expect(frozen.status).toBe(201);
  expect((await issue(HELPER, frozen.body.taskId)).body.code).toBe('policy_denied');
});

test('a task has at most 32 labels, inherited ones included', async () => {
  const full = Object.fromEntries(Array.from({ length: 32 }, (_, i) => [`k${i}`, 'v']));
  expect((await root('rt-label-cap', full)).status).toBe(201);
  const over = await sub(AGENT, 'rt-label-cap', HELPER, { extra: 'x' });
  expect({ status: over.status, code: over.body.code, field: over.body.field }).toEqual({
    status: 400,
    code: 'invalid_request',
    field: 'labels',
  });
  // Repeating inherited labels does not count twice.
  expect((await sub(AGENT, 'rt-label-cap', HELPER, { k0: 'v' })).status).toBe(201);
});
