import { ADMIN, AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

// Contract section 3: lists answer `{ items, nextCursor }`, "`nextCursor` null on the last page". A filtered
// page that came out exactly full said there was more whenever any entry of its index was left, matching or
// not: `?tenant=X&limit=3` over exactly three tasks of X answered a cursor, and the next page was empty.
let t: TestBroker;
const agentId = `spiffe://dev.local${AGENT}`;
beforeAll(async () => {
  t = await startTestBroker('conf-last-page');
  // Oldest first: two tasks of another tenant, then three of "solo", then two more of the other tenant.
  for (const [taskId, tenant] of [
    ['lp-o1', 'other'],
    ['lp-o2', 'other'],
    ['lp-s1', 'solo'],
    ['lp-s2', 'solo'],
    ['lp-s3', 'solo'],
    ['lp-o3', 'other'],
  ]) {
    const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
      taskId,
      agent: agentId,
      tenant,
      purpose: 'p',
      ttlSeconds: 600,
      grants: [{ role: 'demo-api' }, { role: 'prod-deploy' }],
    });
    expect(r.status).toBe(201);
  }
  expect((await call(t.url, 'POST', '/v1/tasks/lp-o1/complete', t.as(ORCH))).status).toBe(202);
});
afterAll(async () => {
  await t.close();
});

const get = async (who: string, path: string) => {
  const r = await call(t.url, 'GET', path, t.as(who));
  expect(r.status).toBe(200);
  const id = path.startsWith('/v1/approvals') ? 'approvalId' : 'taskId';
  return { ids: r.body.items.map((x: any) => x[id]), nextCursor: r.body.nextCursor };
};

test('a filtered page holding the last matching task is the last page: nextCursor null', async () => {
  // Before: nextCursor was a cursor (older tasks of "other" were left in the index), and its page was empty.
  expect(await get(ADMIN, '/v1/tasks?tenant=solo&limit=3')).toEqual({ ids: ['lp-s3', 'lp-s2', 'lp-s1'], nextCursor: null });
  expect(await get(ORCH, '/v1/tasks?tenant=solo&limit=3')).toEqual({ ids: ['lp-s3', 'lp-s2', 'lp-s1'], nextCursor: null });
  expect(await get(AGENT, '/v1/tasks?status=completed&limit=1')).toEqual({ ids: ['lp-o1'], nextCursor: null });
});

test('a full page with more matching tasks still has a cursor, and the pages add up', async () => {
  const first = await get(ADMIN, '/v1/tasks?tenant=solo&limit=2');
  expect(first.ids).toEqual(['lp-s3', 'lp-s2']);
  expect(first.nextCursor).toEqual(expect.any(String));
  const second = await get(ADMIN, `/v1/tasks?tenant=solo&limit=2&cursor=${encodeURIComponent(first.nextCursor)}`);
  expect(second).toEqual({ ids: ['lp-s1'], nextCursor: null });
});

test('approvals too: a filtered page holding the last match is the last page', async () => {
  for (const taskId of ['lp-s1', 'lp-s2']) {
    const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'prod-deploy' });
    expect(r.status).toBe(202);
  }
  const older = (await get(ADMIN, '/v1/approvals?limit=2')).ids.at(-1);
  expect((await call(t.url, 'POST', `/v1/approvals/${older}`, t.as(ADMIN), { decision: 'reject' })).status).toBe(200);
  const pending = await get(ADMIN, '/v1/approvals?status=pending&limit=1');
  expect(pending.ids).toHaveLength(1);
  expect(pending.nextCursor).toBeNull();
});

test("a task's audit records filtered by action: the page holding the last match is the last page", async () => {
  // lp-s3: task.open, then one credential.issue, then a lease revocation by its agent.
  const cred = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'lp-s3', role: 'demo-api' });
  expect(cred.status).toBe(201);
  expect((await call(t.url, 'DELETE', `/v1/leases/${cred.body.leaseId}`, t.as(AGENT))).status).toBe(202);
  for (const who of [ADMIN, AGENT]) {
    const r = await call(t.url, 'GET', '/v1/audit?taskId=lp-s3&action=credential.issue&limit=1', t.as(who));
    expect(r.status).toBe(200);
    // Before: a cursor (records of other actions followed), whose page was empty.
    expect([who, r.body.items.map((x: any) => x.action), r.body.nextCursor]).toEqual([who, ['credential.issue'], null]);
  }
  const open = await call(t.url, 'GET', '/v1/audit?taskId=lp-s3&action=task.open&limit=1', t.as(AGENT));
  expect([open.body.items.map((x: any) => x.action), open.body.nextCursor]).toEqual([['task.open'], null]);
  // Unfiltered, a full page with records after it keeps its cursor.
  const first = await call(t.url, 'GET', '/v1/audit?taskId=lp-s3&limit=1', t.as(AGENT));
  expect(first.body.nextCursor).toEqual(expect.any(String));
});
