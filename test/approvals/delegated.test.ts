import { ADMIN, AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Contract section 3: "agents and orchestrators [see the approvals] of their tasks". Whoever may read a task
 * reads its sub-tasks (src/tasks/readers.ts): the root orchestrator, and every agent above, see the approvals
 * of requests made in the sub-tasks below, in the list and by id, as they see those sub-tasks and their leases.
 * Seeing is not deciding: only `approvers` decide.
 */
let t: TestBroker;
const A = `spiffe://dev.local${AGENT}`;
const B = 'spiffe://dev.local/agent/researcher';
const C = 'spiffe://dev.local/agent/summarizer';
const OTHER_ORCH = '/orchestrator/other';
beforeAll(async () => {
  t = await startTestBroker('approvals-delegated', { config: { tasks: { maxTtlSeconds: 86_400, maxDelegationDepth: 3 } } });
  const root = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'root',
    agent: A,
    tenant: 'acme',
    purpose: 'release',
    ttlSeconds: 600,
    grants: [{ role: 'prod-deploy' }],
  });
  const child = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
    parentTaskId: 'root',
    taskId: 'child',
    agent: B,
    ttlSeconds: 500,
    grants: [{ role: 'prod-deploy' }],
  });
  const grandchild = await call(t.url, 'POST', '/v1/tasks', t.as('/agent/researcher'), {
    parentTaskId: 'root~child',
    taskId: 'gc',
    agent: C,
    ttlSeconds: 400,
    grants: [{ role: 'prod-deploy' }],
  });
  // Another orchestrator's own task, asking for the same role: it must not see the tree's approvals.
  const other = await call(t.url, 'POST', '/v1/tasks', t.as(OTHER_ORCH), {
    taskId: 'other',
    agent: A,
    tenant: 'acme',
    purpose: 'elsewhere',
    ttlSeconds: 600,
    grants: [{ role: 'prod-deploy' }],
  });
  expect([root.status, child.status, grandchild.status, other.status]).toEqual([201, 201, 201, 201]);
});
afterAll(async () => {
  await t.close();
});

const askIn = async (who: string, taskId: string, ttlSeconds: number): Promise<string> => {
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(who), { taskId, role: 'prod-deploy', ttlSeconds });
  expect(r.status).toBe(202);
  return r.body.approvalId as string;
};

/** Every approval id `who` is shown, following the cursor `limit` at a time. */
async function listAll(who: string, query: string, limit: number): Promise<string[]> {
  const ids: string[] = [];
  let cursor: string | null = null;
  for (let pages = 0; pages < 50; pages++) {
    const r = await call(
      t.url,
      'GET',
      `/v1/approvals?limit=${limit}${query}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
      t.as(who),
    );
    expect(r.status).toBe(200);
    ids.push(...(r.body.items as { approvalId: string }[]).map((i) => i.approvalId));
    cursor = r.body.nextCursor;
    if (!cursor) return ids;
  }
  throw new Error('the list did not end');
}

test('the root orchestrator and the agents above see a sub-task’s approvals, in the list and by id, and cannot decide them', async () => {
  const inGc = await askIn('/agent/summarizer', 'root~child~gc', 60);
  const inChild = await askIn('/agent/researcher', 'root~child', 60);
  const elsewhere = await askIn(AGENT, 'other', 60);

  // The orchestrator reads the sub-tasks (the baseline this is consistent with).
  expect((await call(t.url, 'GET', '/v1/tasks/root~child~gc', t.as(ORCH))).status).toBe(200);

  for (const [who, expected] of [
    [ORCH, [inGc, inChild]],
    [AGENT, [inGc, inChild, elsewhere]],
    ['/agent/researcher', [inGc, inChild]],
    ['/agent/summarizer', [inGc]],
    [OTHER_ORCH, [elsewhere]],
  ] as const) {
    const listed = await listAll(who, '&status=pending', 500);
    expect([who, listed.sort()]).toEqual([who, [...expected].sort()]);
  }
  for (const id of [inGc, inChild]) {
    const byId = await call(t.url, 'GET', `/v1/approvals/${id}`, t.as(ORCH));
    expect([byId.status, byId.body.status]).toEqual([200, 'pending']);
    expect(byId.body).not.toHaveProperty('readers');
    expect((await call(t.url, 'GET', `/v1/approvals/${id}`, t.as(AGENT))).status).toBe(200);
    const stranger = await call(t.url, 'GET', `/v1/approvals/${id}`, t.as(OTHER_ORCH));
    expect([stranger.status, stranger.body.code]).toEqual([403, 'not_approval_party']);
  }
  // The one below sees nothing above it.
  expect((await call(t.url, 'GET', `/v1/approvals/${inChild}`, t.as('/agent/summarizer'))).status).toBe(403);

  // Seeing is not deciding: the orchestrator is no approver, and an agent above is a delegator of the request.
  const decide = await call(t.url, 'POST', `/v1/approvals/${inGc}`, t.as(ORCH), { decision: 'approve' });
  expect([decide.status, decide.body.code]).toEqual([403, 'not_approver']);
  const byAgent = await call(t.url, 'POST', `/v1/approvals/${inGc}`, t.as(AGENT), { decision: 'approve' });
  expect(byAgent.status).toBe(403);
  expect((await call(t.url, 'GET', `/v1/approvals/${inGc}`, t.as(ADMIN))).body.status).toBe('pending');
});

test('a repeat request in a sub-task reads no task above it; one that creates an approval does, for its readers', async () => {
  // The parties above are read (ancestorParties) only to fix the readers of an approval being created: a repeat
  // request, which only answers the approval that exists (an agent polling its 202), read them every time before.
  const tasks = t.broker.deps.tasks;
  const real = tasks.recordsOf.bind(tasks);
  const asked: string[][] = [];
  tasks.recordsOf = async (ids, keepIf) => {
    asked.push([...ids]);
    return real(ids, keepIf);
  };
  try {
    const first = await askIn('/agent/summarizer', 'root~child~gc', 70);
    expect(asked).toEqual([['root', 'root~child']]);
    asked.length = 0;
    expect(await askIn('/agent/summarizer', 'root~child~gc', 70)).toBe(first);
    expect(asked).toEqual([]);
    // Its readers were fixed when it was created: the root orchestrator sees it.
    expect((await call(t.url, 'GET', `/v1/approvals/${first}`, t.as(ORCH))).status).toBe(200);
  } finally {
    tasks.recordsOf = real;
  }
});

test('the cursor and the status filter work on what the orchestrator sees of its sub-tasks', async () => {
  const ids = [];
  for (const ttl of [61, 62, 63, 64, 65]) ids.push(await askIn('/agent/summarizer', 'root~child~gc', ttl));
  const all = await listAll(ORCH, '', 500);
  expect(all).toEqual(expect.arrayContaining(ids));
  // One at a time, following the cursor: the same items, each once, newest first.
  const paged = await listAll(ORCH, '', 1);
  expect(paged).toEqual(all);
  expect(new Set(paged).size).toBe(paged.length);

  const approved = await call(t.url, 'POST', `/v1/approvals/${ids[0]}`, t.as(ADMIN), { decision: 'approve' });
  const rejected = await call(t.url, 'POST', `/v1/approvals/${ids[1]}`, t.as(ADMIN), { decision: 'reject', reason: 'no' });
  expect([approved.status, rejected.status]).toEqual([200, 200]);
  expect(await listAll(ORCH, '&status=approved', 2)).toEqual([ids[0]]);
  expect(await listAll(ORCH, '&status=rejected', 2)).toEqual([ids[1]]);
  const pending = await listAll(ORCH, '&status=pending', 2);
  expect(pending).toEqual(expect.arrayContaining(ids.slice(2)));
  expect(pending).not.toContain(ids[0]);
  expect(pending).not.toContain(ids[1]);

  // The cursor stays bound to its caller and its filters.
  const first = await call(t.url, 'GET', '/v1/approvals?limit=1&status=pending', t.as(ORCH));
  expect(first.body.nextCursor).toEqual(expect.any(String));
  const cursor = encodeURIComponent(first.body.nextCursor);
  expect((await call(t.url, 'GET', `/v1/approvals?limit=1&status=pending&cursor=${cursor}`, t.as(OTHER_ORCH))).status).toBe(400);
  expect((await call(t.url, 'GET', `/v1/approvals?limit=1&status=approved&cursor=${cursor}`, t.as(ORCH))).status).toBe(400);

  // Approvals end with their task: completing the root ends the sub-tasks, and the orchestrator sees them expired.
  expect((await call(t.url, 'POST', '/v1/tasks/root/complete', t.as(ORCH))).status).toBe(202);
  expect(await listAll(ORCH, '&status=pending', 500)).toEqual([]);
  expect(await listAll(ORCH, '&status=expired', 500)).toEqual(expect.arrayContaining(ids.slice(2)));
});
