import { AGENT, ORCH, call, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';

// Black-box finding: an agent delegating part of its task could ask a sub-task grant for a scope its parent's grant
// lacks and get 400 `scope_not_allowed`, unaudited, whenever the role's configuration lacks that scope too; a
// scope the role has but the parent lacks answered 403 `delegation_widens`, audited. So the widening attempts
// left no trace in the parent's evidence, and the two answers told the agent which scopes the role is configured
// with. The contract: a sub-task's grants must be a subset of the parent's (roles and scopes), otherwise 403.
// A role that is not configured stays 400 `unknown_role` (contract: only configured roles are roles), but the
// attempt is recorded under the parent as the other refusals of a sub-task are.
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('bb-subprobe', { config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080' } } });
});
afterAll(async () => {
  await t.close();
});

const AGENT_ID = `spiffe://dev.local${AGENT}`;
const sub = (parent: string, name: string, grants: Record<string, unknown>[]) =>
  call(t.url, 'POST', '/v1/tasks', t.as(AGENT), { parentTaskId: parent, taskId: name, agent: AGENT_ID, ttlSeconds: 60, grants });
const refusals = async (taskId: string) =>
  ((await call(t.url, 'GET', `/v1/tasks/${taskId}/evidence`, t.as(ORCH))).body.audit.items as Record<string, any>[])
    .filter((r) => r.action === 'access.deny')
    .map((r) => ({ reason: r.reason, subtask: r.detail?.subtask }));

test("a sub-task grant with a scope outside the parent's grant is 403 delegation_widens, audited, whatever the role's config (found by black-box red team)", async () => {
  // tickets:write is in the role's configuration, tickets:admin is not: both are outside the parent's grant.
  await openAgentTask(t, 'bb-sp-1', [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
  const outsideRole = await sub('bb-sp-1', 'b', [{ role: 'tickets-api', scopes: ['tickets:admin'] }]);
  // Before: 400 scope_not_allowed, and no record under the parent.
  expect([outsideRole.status, outsideRole.body.code]).toEqual([403, 'delegation_widens']);
  expect(await refusals('bb-sp-1')).toEqual([{ reason: 'delegation_widens', subtask: 'bb-sp-1~b' }]);
  await openAgentTask(t, 'bb-sp-1b', [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
  const inRole = await sub('bb-sp-1b', 'a', [{ role: 'tickets-api', scopes: ['tickets:write'] }]);
  expect([inRole.status, inRole.body.code]).toEqual([403, 'delegation_widens']);
  expect(await refusals('bb-sp-1b')).toEqual([{ reason: 'delegation_widens', subtask: 'bb-sp-1b~a' }]);
  // A role the parent lacks is a widening too, whatever scopes it names (demo-api is configured with none).
  await openAgentTask(t, 'bb-sp-1c', [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
  const otherRole = await sub('bb-sp-1c', 'e', [{ role: 'demo-api', scopes: ['x'] }]);
  // Before: 400 scope_not_allowed.
  expect([otherRole.status, otherRole.body.code]).toEqual([403, 'delegation_widens']);
});

test('a sub-task grant naming a role that is not configured stays 400 unknown_role, and is recorded under the parent (found by black-box red team)', async () => {
  await openAgentTask(t, 'bb-sp-2', [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
  const r = await sub('bb-sp-2', 'c', [{ role: 'no-such-role' }]);
  expect([r.status, r.body.code]).toEqual([400, 'unknown_role']);
  // Before: no record; a configured role the parent lacks (403 delegation_widens) was recorded.
  expect(await refusals('bb-sp-2')).toEqual([{ reason: 'unknown_role', subtask: 'bb-sp-2~c' }]);
});

test('a stranger naming a parent it is not the agent of is refused as before, without learning about roles', async () => {
  await openAgentTask(t, 'bb-sp-3', [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
  const r = await call(t.url, 'POST', '/v1/tasks', t.as('/agent/other'), {
    parentTaskId: 'bb-sp-3',
    taskId: 'd',
    agent: AGENT_ID,
    ttlSeconds: 60,
    grants: [{ role: 'no-such-role' }],
  });
  expect([r.status, r.body.code]).toEqual([403, 'not_parent_agent']);
});
