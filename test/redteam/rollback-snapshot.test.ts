import { AGENT, ADMIN, ORCH, call, waitFor } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';

/**
 * Red team 5 (copied from their probe): Redis restarted from an older RDB snapshot (an operator restores last night's backup, or a
 * replica that was lagging is promoted after its master is lost). The epoch marker is in the snapshot, so the
 * broker sees "same dataset" and does not treat it as a data loss, yet everything decided after the snapshot is gone:
 * a completed task is open again, revoked leases are active again, quarantines are lifted.
 */
const own = brokerOnOwnRedis('rt5-rollback', { broker: { dataLossCheckMs: 100 } });

const agentId = `spiffe://dev.local${AGENT}`;

async function introspect(token: string): Promise<any> {
  const { t } = own;
  const res = await fetch(`${t.url}/v1/introspect`, {
    method: 'POST',
    headers: { ...t.as('/resource/tickets'), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token }).toString(),
  });
  return await res.json();
}

async function rollBack(work: () => Promise<void>): Promise<void> {
  const { t, redis } = own;
  const admin = redis.client();
  await admin.connect();
  expect(await admin.call('SAVE')).toBe('OK');
  admin.disconnect();
  await work();
  // Give the export a chance to write what happened (it runs where the worker runs).
  await new Promise((r) => setTimeout(r, 500));
  await redis.restart({ keepData: true }); // loads dump.rdb: the state at SAVE
  await waitFor(async () => (await fetch(`${t.url}/readyz`)).status === 200, 20_000, 100);
  await new Promise((r) => setTimeout(r, 3000)); // several data-loss checks and quarantine reloads
}

test('a task completed after the snapshot stays completed: its agent cannot issue again, its revoked token stays inactive', async () => {
  const { t } = own;
  const opened = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'rb-1',
    agent: agentId,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  expect(opened.status).toBe(201);
  const issued = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'rb-1', role: 'demo-api' });
  expect(issued.status).toBe(201);
  const token = issued.body.credentials.access_token as string;
  expect((await introspect(token)).active).toBe(true);

  await rollBack(async () => {
    expect((await call(t.url, 'POST', '/v1/tasks/rb-1/complete', t.as(ORCH))).status).toBe(202);
    await waitFor(
      async () => (await call(t.url, 'GET', `/v1/leases/${issued.body.leaseId}`, t.as(ORCH))).body.status === 'revoked',
      10_000,
    );
    expect((await introspect(token)).active).toBe(false);
  });

  const task = await call(t.url, 'GET', '/v1/tasks/rb-1', t.as(ORCH));
  const again = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'rb-1', role: 'demo-api' });
  const seen = { task: task.body.status, issueAgain: again.status, revokedTokenActive: (await introspect(token)).active };
  expect(seen).toEqual({ task: 'completed', issueAgain: 409, revokedTokenActive: false });
}, 90_000);

test('a quarantine added after the snapshot holds after the rollback', async () => {
  const { t } = own;
  const bad = '/agent/leaky';
  await rollBack(async () => {
    const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: `spiffe://dev.local${bad}`, reason: 'leaked' });
    expect(q.status).toBe(201);
    expect((await call(t.url, 'GET', '/v1/tasks/none', t.as(bad))).body.code).toBe('identity_quarantined');
  });
  const r = await call(t.url, 'GET', '/v1/tasks/none', t.as(bad));
  expect({ status: r.status, code: r.body?.code }).toEqual({ status: 403, code: 'identity_quarantined' });
}, 90_000);
