import { AGENT, ORCH, call, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Review: paging a task tree's leases (`GET /v1/tasks/{id}/leases?tree=true`, and the evidence's
 * `leasesNextCursor`) could miss a sub-task opened mid-walk. The cursor names the last task read, and the tree was
 * ordered breadth first with each level's sub-tasks sorted by id: a sub-task opened meanwhile whose id sorted
 * before the cursor's task landed among the tasks already read, and the walk went on past it. The tree is now
 * ordered as its sub-tasks were opened (task-open.lua numbers them on the root), so a new one comes after every
 * page already read.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('tree-paging', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } } },
  });
});
afterAll(async () => t?.close());

const grants = [{ role: 'tickets-api', scopes: ['tickets:read'] }];
/** A sub-task, each level living a little less than its parent (a sub-task may not outlive it). */
async function sub(parent: string, name: string): Promise<string> {
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
    parentTaskId: parent,
    taskId: name,
    agent: `spiffe://dev.local${AGENT}`,
    ttlSeconds: 300 - 10 * parent.split('~').length,
    grants,
  });
  expect([r.status, r.body.code]).toEqual([201, undefined]);
  return r.body.taskId as string;
}
async function lease(taskId: string): Promise<string> {
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api', ttlSeconds: 300 });
  expect(r.status).toBe(201);
  return r.body.leaseId as string;
}
async function page(cursor: string | null): Promise<{ items: { leaseId: string; taskId: string }[]; nextCursor: string | null }> {
  const q = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
  const r = await call(t.url, 'GET', `/v1/tasks/tp/leases?tree=true&limit=1${q}`, t.as(ORCH));
  expect(r.status).toBe(200);
  return r.body;
}

test('a sub-task opened while a client pages through the tree’s leases is not skipped, whatever its id', async () => {
  await openAgentTask(t, 'tp', grants);
  const want = [await lease('tp')];
  const m = await sub('tp', 'm');
  want.push(await lease(m));
  const z = await sub('tp', 'z');
  want.push(await lease(z));

  const seen: string[] = [];
  let p = await page(null); // tp's lease
  seen.push(...p.items.map((l) => l.leaseId));
  p = await page(p.nextCursor); // tp~m's: the cursor now names tp~m
  seen.push(...p.items.map((l) => l.leaseId));
  expect(p.items.map((l) => l.taskId)).toEqual(['tp~m']);
  // Mid-walk: a sub-task whose id sorts before the cursor's task, and one a level deeper below it.
  const a = await sub('tp', 'a');
  want.push(await lease(a));
  const deep = await sub(a, 'x');
  want.push(await lease(deep));
  let cursor = p.nextCursor;
  while (cursor) {
    p = await page(cursor);
    seen.push(...p.items.map((l) => l.leaseId));
    cursor = p.nextCursor;
  }
  // Before: tp~a's and tp~a~x's leases were never shown (tp~a sorted before tp~m, where the walk already was).
  expect(seen).toEqual(want);
});

test('the tree is in opening order: the task, then each sub-task after its parent, as opened', async () => {
  await openAgentTask(t, 'to', grants);
  const opened = ['to'];
  opened.push(await sub('to', 'q'));
  opened.push(await sub('to', 'b'));
  opened.push(await sub('to~q', 'a'));
  opened.push(await sub('to', 'a'));
  const e = await call(t.url, 'GET', '/v1/tasks/to/evidence', t.as(ORCH));
  expect(e.status).toBe(200);
  expect(e.body.tree.map((x: { taskId: string }) => x.taskId)).toEqual(opened);
  // A sub-task's own tree: it first, then what was opened below it.
  const below = await call(t.url, 'GET', '/v1/tasks/to~q/evidence', t.as(AGENT));
  expect(below.body.tree.map((x: { taskId: string }) => x.taskId)).toEqual(['to~q', 'to~q~a']);
});
