import { ADMIN, AGENT, ORCH, call } from '../helpers/broker.ts';
import { twoVaultBrokers } from '../helpers/two-vault-brokers.ts';
import { AGENT_ID } from './races-fixture.ts';

/**
 * Red team (exploratory): Vault credentials of sub-tasks, of approved requests and of leases the agent DELETEs while
 * they are issued, on two instances, racing the end of the tree.
 */
const SUB = '/agent/rt-vtree-sub';
const SUB_ID = `spiffe://dev.local${SUB}`;
const { a, b, emu, either, expectNothingOutlives } = twoVaultBrokers('rt-vtree');

const openRoot = (id: string, grants: Record<string, unknown>[]) =>
  call(a().url, 'POST', '/v1/tasks', a().as(ORCH), {
    taskId: id,
    agent: AGENT_ID,
    tenant: 'acme',
    purpose: 'race',
    ttlSeconds: 600,
    grants,
  });

test('sub-task issuance on two instances racing the parent completion (answers held): nothing stays valid in Vault', async () => {
  for (let round = 0; round < 3; round++) {
    const parent = `rt-vtree-p-${round}`;
    expect((await openRoot(parent, [{ role: 'vault-ops' }, { role: 'orders-db' }])).status).toBe(201);
    const subs: string[] = [];
    for (let k = 0; k < 3; k++) {
      const r = await call(either(k).url, 'POST', '/v1/tasks', either(k).as(AGENT), {
        parentTaskId: parent,
        taskId: `s${k}`,
        agent: SUB_ID,
        ttlSeconds: 300,
        grants: [{ role: 'vault-ops' }, { role: 'orders-db' }],
      });
      expect(r.status).toBe(201);
      subs.push(r.body.taskId);
    }
    const hold = round === 0 ? emu().holdResponses('auth/token/create-orphan', 12) : undefined;
    const renew = round === 1 ? emu().holdResponses('auth/token/renew-accessor', 6) : undefined;
    const asks = Array.from({ length: 12 }, (_, i) =>
      call(either(i).url, 'POST', '/v1/credentials', either(i).as(SUB), {
        taskId: subs[i % 3],
        role: i % 4 < 2 ? 'vault-ops' : 'orders-db',
        ttlSeconds: 300,
      }),
    );
    if (hold) await hold.until(12);
    else if (renew) await renew.until(3);
    else await Promise.race(asks);
    expect((await call(either(round + 1).url, 'POST', `/v1/tasks/${parent}/complete`, either(round + 1).as(ORCH))).status).toBe(202);
    hold?.release();
    renew?.release();
    const got = await Promise.all(asks);
    for (const r of got) expect([201, 409, 502]).toContain(r.status);
    await expectNothingOutlives([parent, ...subs]);
  }
});

test('approved Vault requests racing completion and the kill switch: nothing stays valid in Vault', async () => {
  for (let round = 0; round < 2; round++) {
    const id = `rt-vtree-appr-${round}`;
    expect((await openRoot(id, [{ role: 'vault-approved' }])).status).toBe(201);
    const first = await call(a().url, 'POST', '/v1/credentials', a().as(AGENT), { taskId: id, role: 'vault-approved' });
    expect(first.status).toBe(202);
    expect((await call(b().url, 'POST', `/v1/approvals/${first.body.approvalId}`, b().as(ADMIN), { decision: 'approve' })).status).toBe(
      200,
    );
    const hold = emu().holdResponses('auth/token/create-orphan', 1);
    const asks = Array.from({ length: 10 }, (_, i) =>
      call(either(i).url, 'POST', '/v1/credentials', either(i).as(AGENT), { taskId: id, role: 'vault-approved' }),
    );
    await hold.until(1);
    const end =
      round === 0
        ? call(b().url, 'POST', `/v1/tasks/${id}/complete`, b().as(ORCH))
        : call(b().url, 'POST', '/v1/admin/revoke', b().as(ADMIN), { taskId: id });
    expect((await end).status).toBe(202);
    hold.release();
    const got = await Promise.all(asks);
    expect(got.filter((r) => r.status === 201)).toEqual([]);
    await expectNothingOutlives([id]);
    // Asking again after the end hands out nothing.
    const again = await call(a().url, 'POST', '/v1/credentials', a().as(AGENT), { taskId: id, role: 'vault-approved' });
    expect(again.status).toBe(409);
    await expectNothingOutlives([id]);
  }
});

test('the agent DELETEs its leases while they are being issued (listed as issuing): each ends, nothing stays valid', async () => {
  const id = 'rt-vtree-del';
  expect((await openRoot(id, [{ role: 'vault-ops' }, { role: 'orders-db' }])).status).toBe(201);
  const hold = emu().holdResponses('auth/token/create-orphan', 8);
  const asks = Array.from({ length: 8 }, (_, i) =>
    call(either(i).url, 'POST', '/v1/credentials', either(i).as(AGENT), {
      taskId: id,
      role: i % 2 ? 'vault-ops' : 'orders-db',
      ttlSeconds: 300,
    }),
  );
  await hold.until(8);
  const listed = await call(a().url, 'GET', `/v1/tasks/${id}/leases?limit=100`, a().as(AGENT));
  expect(listed.status).toBe(200);
  const ids = (listed.body.items as { leaseId: string; status: string }[]).map((l) => l.leaseId);
  expect(ids.length).toBeGreaterThan(0);
  const dels = await Promise.all(ids.map((l, i) => call(either(i).url, 'DELETE', `/v1/leases/${l}`, either(i).as(AGENT))));
  for (const d of dels) expect(d.status).toBe(202);
  hold.release();
  const got = await Promise.all(asks);
  // Every lease was listed `issuing` and DELETEd before its credential was recorded: none is handed out.
  expect(ids).toHaveLength(8);
  expect(got.map((r) => r.status)).toEqual(Array(8).fill(409));
  // The task is open: the answer says the lease was revoked, not that the task ended.
  for (const r of got) expect(r.body.detail).toMatch(/^Lease \S+ was revoked while the credential was being issued/);
  // Each ends and nothing it made stays valid in Vault, with the task still open.
  await expectNothingOutlives([id]);
  expect((await call(a().url, 'GET', `/v1/tasks/${id}`, a().as(ORCH))).body.status).toBe('open');
});
