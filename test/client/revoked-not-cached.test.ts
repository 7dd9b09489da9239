import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { BrokerClient, type JwtCredentials } from '../../src/client/index.ts';
import { AGENT, ORCH, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * A credential the client itself gave back (revokeLease) or whose task it ended (completeTask) is not handed out
 * again from its cache: the next getCredential asks the broker (a new lease, or the broker's refusal), instead
 * of a token that every resource server that introspects refuses until the cache's refresh time.
 */
let t: TestBroker;
const agentId = 'spiffe://dev.local/agent/support';
beforeAll(async () => {
  t = await startTestBroker('client-revoked-cache');
}, 60_000);
afterAll(async () => {
  await t?.close();
});

const as = (path: string) => new BrokerClient({ url: t.url, token: () => t.issuer.svid(path), env: {} });
const introspect = (c: BrokerClient, token: string) => c.introspect(token);

async function open(client: BrokerClient, taskId: string) {
  await client.openTask({ taskId, agent: agentId, tenant: 'acme', purpose: 'p', ttlSeconds: 600, grants: [{ role: 'tickets-api' }] });
}

it('revokeLease drops that credential from the cache', async () => {
  await open(as(ORCH), 't-cache-revoked');
  const agent = as(AGENT);
  const req = { taskId: 't-cache-revoked', role: 'tickets-api' };
  const first = await agent.getCredential<JwtCredentials>(req);
  await agent.revokeLease(first.leaseId);
  expect((await introspect(agent, first.credentials.access_token)).active).toBe(false);
  const again = await agent.getCredential<JwtCredentials>(req);
  expect(again.leaseId).not.toBe(first.leaseId);
  expect((await introspect(agent, again.credentials.access_token)).active).toBe(true);
});

it('completeTask drops the credentials of that task and its sub-tasks from the cache, and no other', async () => {
  await open(as(ORCH), 't-cache-done');
  await open(as(ORCH), 't-cache-done-other');
  // The agent opens a sub-task for itself, and (as that sub-task's orchestrator) completes it with the same client.
  const agent = as(AGENT);
  const sub = await agent.openTask({
    parentTaskId: 't-cache-done',
    taskId: 'child',
    agent: agentId,
    ttlSeconds: 300,
    grants: [{ role: 'tickets-api' }],
  });
  const deeper = await agent.openTask({
    parentTaskId: sub.taskId,
    taskId: 'grandchild',
    agent: agentId,
    ttlSeconds: 200,
    grants: [{ role: 'tickets-api' }],
  });
  await agent.getCredential({ taskId: sub.taskId, role: 'tickets-api' });
  await agent.getCredential({ taskId: deeper.taskId, role: 'tickets-api' });
  const kept = await agent.getCredential({ taskId: 't-cache-done-other', role: 'tickets-api' });
  await agent.completeTask(sub.taskId);
  await expect(agent.getCredential({ taskId: sub.taskId, role: 'tickets-api' })).rejects.toMatchObject({ status: 409 });
  await expect(agent.getCredential({ taskId: deeper.taskId, role: 'tickets-api' })).rejects.toMatchObject({ status: 409 });
  expect((await agent.getCredential({ taskId: 't-cache-done-other', role: 'tickets-api' })).leaseId).toBe(kept.leaseId);
});

it('a task ended elsewhere: revokeLease of the cached lease answers, and the next request gets the refusal', async () => {
  const orch = as(ORCH);
  await open(orch, 't-cache-elsewhere');
  const agent = as(AGENT);
  const cred = await agent.getCredential({ taskId: 't-cache-elsewhere', role: 'tickets-api' });
  await orch.completeTask('t-cache-elsewhere');
  // Not seen yet: the cache hands out the same (now inactive) credential until its renewal.
  expect((await agent.getCredential({ taskId: 't-cache-elsewhere', role: 'tickets-api' })).leaseId).toBe(cred.leaseId);
  expect((await agent.revokeLease(cred.leaseId)).leaseId).toBe(cred.leaseId);
  await expect(agent.getCredential({ taskId: 't-cache-elsewhere', role: 'tickets-api' })).rejects.toMatchObject({ status: 409 });
});
