import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ADMIN, AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Found by a red-team pass:
 * - `openTask`'s context is documented (and typed in the schema) with `ttlSeconds` and `scopes`, but the
 *   broker passed only `task`: a `has`-guarded forbid on them never fired, an unguarded permit on them
 *   always errored (every open denied);
 * - an incident's forbid on a task id was walked past by the task's agent opening a sub-task for
 *   itself: `context.task.id` changes with every sub-task, and nothing named the root. `rootId` does.
 */
let t: TestBroker;
let policies: string;
beforeAll(async () => {
  policies = mkdtempSync(join(tmpdir(), 'rt-policy-context-'));
  writeFileSync(
    join(policies, 'all.cedar'),
    [
      'permit (principal, action, resource);',
      'forbid (principal, action == Action::"openTask", resource) when { context has ttlSeconds && context.ttlSeconds > 3600 };',
      'forbid (principal, action == Action::"openTask", resource) when { context has scopes && context.scopes.contains("tickets:write") };',
    ].join('\n'),
  );
  t = await startTestBroker('rt-policy-context', { config: { policies } });
});
afterAll(async () => {
  await t.close();
});

const agent = `spiffe://dev.local${AGENT}`;
const open = (taskId: string, ttlSeconds: number, scopes: string[]) =>
  call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds,
    grants: [{ role: 'tickets-api', scopes }],
  });

test('openTask policy sees the requested ttlSeconds and the union of the grants scopes', async () => {
  expect((await open('t-ctx-ok', 600, ['tickets:read'])).status).toBe(201);
  const long = await open('t-ctx-long', 80_000, ['tickets:read']);
  expect({ status: long.status, code: long.body.code }).toEqual({ status: 403, code: 'policy_denied' });
  const write = await open('t-ctx-write', 600, ['tickets:read', 'tickets:write']);
  expect({ status: write.status, code: write.body.code }).toEqual({ status: 403, code: 'policy_denied' });
});

test('a forbid on the root task id holds in every sub-task the agent opens under it', async () => {
  expect((await open('t-incident', 600, ['tickets:read'])).status).toBe(201);
  // The incident: a rule about this task, loaded while it runs.
  writeFileSync(
    join(policies, 'incident.cedar'),
    'forbid (principal, action, resource) when { context has task && context.task.rootId == "t-incident" };\n',
  );
  expect((await call(t.url, 'POST', '/v1/admin/policy/reload', t.as(ADMIN))).status).toBe(202);
  const issue = (taskId: string) => call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api' });
  expect((await issue('t-incident')).body.code).toBe('policy_denied');
  // Only that task: another one goes on.
  const by = await open('t-bystander', 600, ['tickets:read']);
  expect([by.status, by.body.code, by.body.detail]).toEqual([201, undefined, undefined]);
  const other = await issue('t-bystander');
  expect([other.status, other.body.code]).toEqual([201, undefined]);
  // Before: the agent opened `t-incident~x` for itself (201) and got the credential there (201).
  const sub = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
    parentTaskId: 't-incident',
    taskId: 'x',
    agent,
    ttlSeconds: 300,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
  });
  expect({ status: sub.status, code: sub.body.code }).toEqual({ status: 403, code: 'policy_denied' });
});
