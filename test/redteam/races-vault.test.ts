import { ADMIN, AGENT, ORCH, call, waitFor } from '../helpers/broker.ts';
import { twoVaultBrokers } from '../helpers/two-vault-brokers.ts';
import { AGENT_ID } from './races-fixture.ts';

/**
 * Red team: Vault credentials (a token role and a dynamic secret) issued on two instances while the task
 * completes, is killed, or its agent is quarantined. Afterwards nothing the broker made may still be valid in
 * Vault, and no lease may be left live.
 */
const w = twoVaultBrokers('rt-races-vault');
const { a, b, emu, either, validInVault } = w;

async function expectNothingOutlives(taskIds: string[]): Promise<void> {
  await w.expectNothingOutlives(taskIds);
  // Each task's live-lease count (what tasks.maxLeases is checked on) came back to exactly none.
  for (const t of await a().broker.deps.tasks.getMany(taskIds)) expect([t.taskId, t.liveLeases]).toEqual([t.taskId, 0]);
}

async function open(id: string, agent = AGENT_ID) {
  const r = await call(a().url, 'POST', '/v1/tasks', a().as(ORCH), {
    taskId: id,
    agent,
    tenant: 'acme',
    purpose: 'race',
    ttlSeconds: 600,
    grants: [{ role: 'vault-ops' }, { role: 'orders-db' }],
  });
  expect(r.status).toBe(201);
}

const ask = (i: number, taskId: string, as = AGENT) =>
  call(either(i).url, 'POST', '/v1/credentials', either(i).as(as), {
    taskId,
    role: i % 4 < 2 ? 'vault-ops' : 'orders-db',
    ttlSeconds: 300,
  });

test('issuance racing complete (answers held in flight, then free): nothing stays valid in Vault', async () => {
  for (let round = 0; round < 2; round++) {
    const id = `rt-vrace-${round}`;
    await open(id);
    // Round 0: every token creation (an agent's token, a secret's reader) takes effect in Vault, its answer held
    // until the task has completed.
    const hold = round === 0 ? emu().holdResponses('auth/token/create-orphan', 20) : undefined;
    const asks = Array.from({ length: 20 }, (_, i) => ask(i, id));
    if (hold) {
      await hold.until(20);
      // The check below sees what Vault made: 20 credentials exist now.
      expect(validInVault()).toHaveLength(20);
    }
    // Round 1: completed as soon as the first credential is out, the others in flight.
    else await Promise.race(asks);
    expect((await call(either(round + 1).url, 'POST', `/v1/tasks/${id}/complete`, either(round + 1).as(ORCH))).status).toBe(202);
    hold?.release();
    const got = await Promise.all(asks);
    for (const r of got) expect([201, 409]).toContain(r.status);
    if (hold) expect(got.filter((r) => r.status === 201)).toEqual([]);
    await expectNothingOutlives([id]);
  }
});

test('issuance racing a quarantine of the agent (kill switch): nothing stays valid in Vault', async () => {
  const rogue = '/agent/rt-vrace-rogue';
  const rogueId = `spiffe://dev.local${rogue}`;
  const ids = ['rt-vrace-q-0', 'rt-vrace-q-1'];
  for (const id of ids) await open(id, rogueId);
  const asks = Array.from({ length: 24 }, (_, i) => ask(i, ids[i % 2]!, rogue));
  await new Promise((r) => setTimeout(r, 20));
  expect((await call(b().url, 'POST', '/v1/admin/quarantine', b().as(ADMIN), { agent: rogueId, reason: 'race' })).status).toBeLessThan(300);
  const got = await Promise.all(asks);
  for (const r of got) expect([201, 403, 409]).toContain(r.status);
  await expectNothingOutlives(ids);
});

test('one approval, 60 identical requests on two instances while Vault fails some creations: one credential', async () => {
  const id = 'rt-vrace-approval';
  const open = await call(a().url, 'POST', '/v1/tasks', a().as(ORCH), {
    taskId: id,
    agent: AGENT_ID,
    tenant: 'acme',
    purpose: 'race',
    ttlSeconds: 600,
    grants: [{ role: 'vault-approved' }],
  });
  expect(open.status).toBe(201);
  const askOne = (i: number) => call(either(i).url, 'POST', '/v1/credentials', either(i).as(AGENT), { taskId: id, role: 'vault-approved' });
  const first = await askOne(0);
  expect(first.status).toBe(202);
  expect((await call(b().url, 'POST', `/v1/approvals/${first.body.approvalId}`, b().as(ADMIN), { decision: 'approve' })).status).toBe(200);
  // The first creations fail: each request that consumed the approval gives it back, and another takes it.
  emu().injectFault({ path: 'auth/token/create-orphan', status: 500, times: 3 });
  const before = validInVault().length;
  const storm = async () => {
    const got = await Promise.all(Array.from({ length: 60 }, (_, i) => askOne(i)));
    expect(got.filter((r) => r.status >= 500 && r.body.code !== 'upstream_unavailable')).toEqual([]);
    return got.filter((r) => r.status === 201).length;
  };
  // While one request holds the approval the others are refused (or wait on a pending twin the approval,
  // given back, withdraws): storms until it is used, then more storms that get nothing.
  let handed = 0;
  for (let k = 0; k < 6 && handed === 0; k++) handed += await storm();
  expect(handed).toBe(1);
  expect(await storm()).toBe(0);
  expect(await storm()).toBe(0);
  expect(validInVault().length - before).toBe(1);
  const issued = (await a().broker.deps.leases.getMany(await a().broker.deps.tasks.leaseIds(id))).filter((l) => l.status === 'active');
  expect(issued).toHaveLength(1);
  expect((await call(a().url, 'POST', `/v1/tasks/${id}/complete`, a().as(ORCH))).status).toBe(202);
  await expectNothingOutlives([id]);
});

test("issuance on two instances racing the task's deadline: once expired, nothing stays valid in Vault", async () => {
  const id = 'rt-vrace-deadline';
  const r = await call(a().url, 'POST', '/v1/tasks', a().as(ORCH), {
    taskId: id,
    agent: AGENT_ID,
    tenant: 'acme',
    purpose: 'race',
    ttlSeconds: 2,
    grants: [{ role: 'vault-ops' }, { role: 'orders-db' }],
  });
  expect(r.status).toBe(201);
  const until = Date.now() + 2400;
  let issued = 0;
  for (let i = 0; Date.now() < until; i += 6) {
    const got = await Promise.all(Array.from({ length: 6 }, (_, k) => ask(i + k, id)));
    for (const g of got) expect([201, 409]).toContain(g.status);
    issued += got.filter((g) => g.status === 201).length;
  }
  expect(issued).toBeGreaterThan(0);
  await waitFor(async () => (await call(a().url, 'GET', `/v1/tasks/${id}`, a().as(ADMIN))).body.status === 'expired', 5000);
  await expectNothingOutlives([id]);
});
