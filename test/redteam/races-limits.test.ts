import { ADMIN, AGENT, ORCH, call } from '../helpers/broker.ts';
import { AGENT_ID, twoBrokers } from './races-fixture.ts';

/**
 * Red team: the bounds of contract section 3 under concurrency on two broker instances: one approval, one
 * credential; tasks.maxLeases, maxSubtasks and maxPendingApprovals; one task per task id.
 */
const w = twoBrokers('rt-races-limits');
const a = () => w.a();
const b = () => w.b();
const { either, open } = w;

test('one approval, 100 identical requests on two instances: one credential', async () => {
  const id = 'rt-race-approval';
  expect((await open(a(), id, [{ role: 'prod-deploy' }])).status).toBe(201);
  const first = await call(a().url, 'POST', '/v1/credentials', a().as(AGENT), { taskId: id, role: 'prod-deploy' });
  expect(first.status).toBe(202);
  const ok = await call(b().url, 'POST', `/v1/approvals/${first.body.approvalId}`, b().as(ADMIN), { decision: 'approve' });
  expect(ok.status).toBe(200);
  const got = await Promise.all(
    Array.from({ length: 100 }, (_, i) =>
      call(either(i).url, 'POST', '/v1/credentials', either(i).as(AGENT), { taskId: id, role: 'prod-deploy' }),
    ),
  );
  expect(got.filter((r) => r.status >= 500)).toEqual([]);
  expect(got.filter((r) => r.status === 201)).toHaveLength(1);
  expect(await a().broker.deps.tasks.leaseIds(id)).toHaveLength(1);
});

test('tasks.maxLeases, maxSubtasks and maxPendingApprovals hold under concurrency on two instances', async () => {
  const id = 'rt-race-limits';
  expect((await open(a(), id, [{ role: 'demo-api' }, { role: 'prod-deploy' }])).status).toBe(201);
  const leases = await Promise.all(
    Array.from({ length: 100 }, (_, i) =>
      call(either(i).url, 'POST', '/v1/credentials', either(i).as(AGENT), { taskId: id, role: 'demo-api' }),
    ),
  );
  expect(leases.filter((r) => r.status === 201)).toHaveLength(7);
  expect(leases.filter((r) => r.status !== 201 && r.status !== 429)).toEqual([]);
  expect((await a().broker.deps.tasks.get(id))?.liveLeases).toBe(7);

  // Each distinct ttlSeconds is its own approval.
  const pend = await Promise.all(
    Array.from({ length: 60 }, (_, i) =>
      call(either(i).url, 'POST', '/v1/credentials', either(i).as(AGENT), { taskId: id, role: 'prod-deploy', ttlSeconds: 60 + (i % 30) }),
    ),
  );
  const approvals = new Set(pend.filter((r) => r.status === 202).map((r) => r.body.approvalId));
  expect(approvals.size).toBe(4);
  expect(pend.filter((r) => r.status !== 202 && r.status !== 429)).toEqual([]);

  const subs = await Promise.all(
    Array.from({ length: 60 }, (_, i) =>
      call(either(i).url, 'POST', '/v1/tasks', either(i).as(AGENT), {
        parentTaskId: id,
        taskId: `s${i}`,
        agent: AGENT_ID,
        ttlSeconds: 60,
        grants: [{ role: 'demo-api' }],
      }),
    ),
  );
  expect(subs.filter((r) => r.status === 201)).toHaveLength(9);
  expect(subs.filter((r) => r.status !== 201 && r.status !== 429)).toEqual([]);
  expect((await a().broker.deps.tasks.subtree(id)).length).toBe(10);
});

test('the same taskId opened at once by two orchestrators on two instances: one task, one opener', async () => {
  for (let round = 0; round < 5; round++) {
    const id = `rt-race-same-${round}`;
    const body = () => ({ taskId: id, agent: AGENT_ID, tenant: 'acme', purpose: 'same', ttlSeconds: 600, grants: [{ role: 'demo-api' }] });
    const got = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        call(either(i).url, 'POST', '/v1/tasks', either(i).as(i % 4 < 2 ? ORCH : '/orchestrator/other'), body()),
      ),
    );
    const created = got.filter((r) => r.status === 201);
    expect(created).toHaveLength(1);
    const opener = created[0]!.body.openedBy as string;
    for (const [i, r] of got.entries()) {
      const mine = `spiffe://dev.local${i % 4 < 2 ? ORCH : '/orchestrator/other'}` === opener;
      expect(r.status).toBe(r === created[0] ? 201 : mine ? 200 : 409);
    }
  }
});

test('tasks.maxLeases under concurrent DELETEs (each lease on both instances, several times) and new requests', async () => {
  const id = 'rt-race-live-count';
  expect((await open(a(), id, [{ role: 'demo-api' }])).status).toBe(201);
  const live = async () => (await w.liveLeasesOf([id])).length;
  for (let round = 0; round < 3; round++) {
    const first = await Promise.all(
      Array.from({ length: 7 }, (_, i) =>
        call(either(i).url, 'POST', '/v1/credentials', either(i).as(AGENT), { taskId: id, role: 'demo-api' }),
      ),
    );
    const ids = first.filter((r) => r.status === 201).map((r) => r.body.leaseId as string);
    const storm = await Promise.all([
      ...ids.flatMap((leaseId, k) =>
        [0, 1, 2, 3].map((j) => call(either(k + j).url, 'DELETE', `/v1/leases/${leaseId}`, either(k + j).as(j % 2 ? ORCH : AGENT))),
      ),
      ...Array.from({ length: 30 }, (_, i) =>
        call(either(i).url, 'POST', '/v1/credentials', either(i).as(AGENT), { taskId: id, role: 'demo-api' }),
      ),
    ]);
    expect(storm.filter((r) => r.status >= 500)).toEqual([]);
    const n = await live();
    expect(n).toBeLessThanOrEqual(7);
    expect((await a().broker.deps.tasks.get(id))?.liveLeases).toBe(n);
    // Back to the bound: whatever the storm left, exactly 7 - n more fit.
    const more = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        call(either(i).url, 'POST', '/v1/credentials', either(i).as(AGENT), { taskId: id, role: 'demo-api' }),
      ),
    );
    expect(more.filter((r) => r.status === 201)).toHaveLength(7 - n);
    expect(await live()).toBe(7);
    for (const leaseId of await a().broker.deps.tasks.leaseIds(id)) await call(a().url, 'DELETE', `/v1/leases/${leaseId}`, a().as(ORCH));
  }
});
