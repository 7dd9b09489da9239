import { ADMIN, AGENT, ORCH, call, waitFor } from '../helpers/broker.ts';
import { AGENT_ID, twoBrokers } from './races-fixture.ts';

/**
 * Red team: races on the lifecycle boundaries, with two broker instances on one Redis prefix and many
 * concurrent requests: issuance and sub-task opens racing completion, the deadline, the kill switch and a
 * quarantine. The promise: an agent holds exactly what its task granted, and nothing outlives the task
 * (contract sections 3 and 5). Upstream credentials: races-vault.test.ts, races-aws.test.ts.
 */
const w = twoBrokers('rt-races');
const a = () => w.a();
const b = () => w.b();
const { either, open, expectNothingOutlives } = w;

test('jwt issuance on two instances racing complete: no credential stays active, every lease ends', async () => {
  for (let round = 0; round < 3; round++) {
    const id = `rt-race-complete-${round}`;
    expect((await open(a(), id, [{ role: 'demo-api' }])).status).toBe(201);
    const asks = Array.from({ length: 60 }, (_, i) =>
      call(either(i).url, 'POST', '/v1/credentials', either(i).as(AGENT), { taskId: id, role: 'demo-api', ttlSeconds: 60 }),
    );
    // Completed from the other instance while the requests are in flight.
    await new Promise((r) => setTimeout(r, 5 + round * 10));
    const done = await call(either(round + 1).url, 'POST', `/v1/tasks/${id}/complete`, either(round + 1).as(ORCH));
    expect(done.status).toBe(202);
    const got = await Promise.all(asks);
    for (const r of got) expect([201, 409, 429]).toContain(r.status);
    const tokens = got.filter((r) => r.status === 201).map((r) => r.body.credentials.access_token as string);
    await expectNothingOutlives([id], tokens);
  }
});

test('jwt issuance racing the kill switch and a quarantine of the agent: nothing stays active', async () => {
  const rogue = '/agent/rt-race-rogue';
  const rogueId = `spiffe://dev.local${rogue}`;
  const ids = Array.from({ length: 4 }, (_, i) => `rt-race-kill-${i}`);
  for (const id of ids) expect((await open(a(), id, [{ role: 'demo-api' }], 600, rogueId)).status).toBe(201);
  const asks = Array.from({ length: 80 }, (_, i) =>
    call(either(i).url, 'POST', '/v1/credentials', either(i).as(rogue), { taskId: ids[i % ids.length], role: 'demo-api' }),
  );
  await new Promise((r) => setTimeout(r, 10));
  const q = await call(b().url, 'POST', '/v1/admin/quarantine', b().as(ADMIN), { agent: rogueId, reason: 'race' });
  expect(q.status).toBeLessThan(300);
  const got = await Promise.all(asks);
  for (const r of got) expect([201, 403, 409, 429]).toContain(r.status);
  const tokens = got.filter((r) => r.status === 201).map((r) => r.body.credentials.access_token as string);
  await expectNothingOutlives(ids, tokens);
  for (const id of ids) expect((await call(a().url, 'GET', `/v1/tasks/${id}`, a().as(ADMIN))).body.status).toBe('completed');
  expect((await call(a().url, 'DELETE', `/v1/admin/quarantine/${encodeURIComponent(rogueId)}`, a().as(ADMIN))).status).toBeLessThan(300);
});

test('jwt issuance racing the task deadline: once expired, nothing stays active', async () => {
  const id = 'rt-race-deadline';
  expect((await open(a(), id, [{ role: 'demo-api' }], 2)).status).toBe(201);
  const tokens: string[] = [];
  const until = Date.now() + 2600;
  let i = 0;
  while (Date.now() < until) {
    const got = await Promise.all(
      Array.from({ length: 10 }, () =>
        call(either(i++).url, 'POST', '/v1/credentials', either(i).as(AGENT), { taskId: id, role: 'demo-api' }),
      ),
    );
    for (const r of got) {
      expect([201, 409, 429]).toContain(r.status);
      if (r.status === 201) {
        tokens.push(r.body.credentials.access_token);
        // Never longer than the task: its exp is within the deadline.
        expect(Date.parse(r.body.expiresAt)).toBeLessThanOrEqual(Date.now() + 2100);
      }
    }
  }
  await waitFor(async () => (await call(a().url, 'GET', `/v1/tasks/${id}`, a().as(ADMIN))).body.status === 'expired', 5000);
  await expectNothingOutlives([id], tokens);
});

test('sub-task opens on two instances racing the parent completion: no sub-task or lease outlives the parent', async () => {
  const rogue = '/agent/rt-race-child';
  for (let round = 0; round < 3; round++) {
    const parent = `rt-race-parent-${round}`;
    expect((await open(a(), parent, [{ role: 'demo-api' }])).status).toBe(201);
    const opens = Array.from({ length: 8 }, (_, i) =>
      call(either(i).url, 'POST', '/v1/tasks', either(i).as(AGENT), {
        parentTaskId: parent,
        taskId: `c${i}`,
        agent: `spiffe://dev.local${rogue}`,
        ttlSeconds: 300,
        grants: [{ role: 'demo-api' }],
      }).then(async (r) => {
        if (r.status !== 201) return { r, creds: [] as { status: number; body: any }[] };
        const creds = await Promise.all(
          [0, 1].map((k) =>
            call(either(i + k).url, 'POST', '/v1/credentials', either(i + k).as(rogue), { taskId: r.body.taskId, role: 'demo-api' }),
          ),
        );
        return { r, creds };
      }),
    );
    await new Promise((r) => setTimeout(r, 5 + round * 15));
    expect((await call(either(round).url, 'POST', `/v1/tasks/${parent}/complete`, either(round).as(ORCH))).status).toBe(202);
    const got = await Promise.all(opens);
    const tokens: string[] = [];
    for (const { r, creds } of got) {
      expect([201, 409]).toContain(r.status);
      for (const c of creds) {
        expect([201, 409]).toContain(c.status);
        if (c.status === 201) tokens.push(c.body.credentials.access_token);
      }
    }
    const tree = await a().broker.deps.tasks.subtree(parent);
    for (const child of tree) expect((await a().broker.deps.tasks.get(child))?.status).toBe('completed');
    await expectNothingOutlives(tree, tokens);
  }
});

test("sub-task opens and their credentials racing the parent's deadline: nothing in the tree outlives it", async () => {
  const parent = 'rt-race-parent-deadline';
  expect((await open(a(), parent, [{ role: 'demo-api' }], 2)).status).toBe(201);
  const tokens: string[] = [];
  const until = Date.now() + 2500;
  let i = 0;
  while (Date.now() < until) {
    const k = i++;
    const sub = await call(either(k).url, 'POST', '/v1/tasks', either(k).as(AGENT), {
      parentTaskId: parent,
      taskId: `d${k}`,
      agent: AGENT_ID,
      ttlSeconds: 1,
      grants: [{ role: 'demo-api' }],
    });
    // 403 once less than a second is left (the sub-task would outlive its parent), 409 once it has expired.
    expect([201, 403, 409, 429]).toContain(sub.status);
    if (sub.status !== 201) continue;
    const got = await Promise.all(
      [0, 1, 2].map((j) =>
        call(either(k + j).url, 'POST', '/v1/credentials', either(k + j).as(AGENT), { taskId: sub.body.taskId, role: 'demo-api' }),
      ),
    );
    for (const r of got) {
      expect([201, 409, 429]).toContain(r.status);
      if (r.status === 201) tokens.push(r.body.credentials.access_token);
    }
  }
  await waitFor(async () => (await a().broker.deps.tasks.get(parent))?.status === 'expired', 5000);
  const tree = await a().broker.deps.tasks.subtree(parent);
  for (const id of tree) expect((await a().broker.deps.tasks.get(id))?.status).not.toBe('open');
  await expectNothingOutlives(tree, tokens);
});

test('the kill switch (by agent, tenant and taskId) on one instance racing issuance and sub-task opens on both', async () => {
  for (const [k, sel] of [{ agent: AGENT_ID }, { tenant: 'rt-kill-tenant' }, { taskId: 'rt-race-ks-2' }].entries()) {
    const id = `rt-race-ks-${k}`;
    const r = await call(a().url, 'POST', '/v1/tasks', a().as(ORCH), {
      taskId: id,
      agent: AGENT_ID,
      tenant: 'rt-kill-tenant',
      purpose: 'race',
      ttlSeconds: 600,
      grants: [{ role: 'demo-api' }],
    });
    expect(r.status).toBe(201);
    const work = Array.from({ length: 24 }, (_, i) =>
      i % 3 === 0
        ? call(either(i).url, 'POST', '/v1/tasks', either(i).as(AGENT), {
            parentTaskId: id,
            taskId: `k${i}`,
            agent: AGENT_ID,
            ttlSeconds: 60,
            grants: [{ role: 'demo-api' }],
          }).then(async (s) =>
            s.status === 201
              ? call(either(i + 1).url, 'POST', '/v1/credentials', either(i + 1).as(AGENT), { taskId: s.body.taskId, role: 'demo-api' })
              : s,
          )
        : call(either(i).url, 'POST', '/v1/credentials', either(i).as(AGENT), { taskId: id, role: 'demo-api' }),
    );
    await Promise.race(work);
    expect((await call(b().url, 'POST', '/v1/admin/revoke', b().as(ADMIN), sel)).status).toBe(202);
    const got = await Promise.all(work);
    for (const g of got) expect([201, 409, 429]).toContain(g.status);
    const tokens = got.filter((g) => g.status === 201 && g.body.credentials).map((g) => g.body.credentials.access_token as string);
    const tree = await a().broker.deps.tasks.subtree(id);
    for (const t of tree) expect((await a().broker.deps.tasks.get(t))?.status).toBe('completed');
    await expectNothingOutlives(tree, tokens);
  }
});
