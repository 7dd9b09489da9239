import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { openLargestTask } from '../helpers/largest-task.ts';

/**
 * Red team: `GET /v1/tasks/{id}/evidence` answered the whole sub-task tree in one response, every task whole
 * (grants, labels, purpose: up to ~36 KB each within every bound, and a sub-task inherits them all from a
 * request of a few hundred bytes). Lists stop a page at ~2 MB; the tree had no byte bound. With
 * `tasks.maxSubtasks` at its documented maximum (1,000) a task's own agent made each evidence call answer
 * ~36 MB (and every page of its audit records sent the tree again); 16 such answers buffered per identity
 * (`server.rateLimit.concurrentReads`) are over half a GB per caller. Here 130 sub-tasks: ~4.7 MB per call.
 * Now the tree is paged like a list: ~2 MB of it, at least the task itself, and `treeNextCursor` goes on
 * (`?treeCursor=`), so a tree within the defaults (51 tasks) is still one page.
 */
let t: TestBroker;
const SUBS = 130;
const evidence = (q = '') => fetch(`${t.url}/v1/tasks/eb/evidence${q}`, { headers: t.as(AGENT) });

beforeAll(async () => {
  t = await startTestBroker('rt-evidence-bytes', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } }, tasks: { maxSubtasks: 1000 } },
  });
  await openLargestTask(t, 'eb', { scopeChars: 256, purposeChars: 1024 });
  for (let i = 0; i < SUBS; i += 10) {
    const rs = await Promise.all(
      Array.from({ length: Math.min(10, SUBS - i) }, (_, j) =>
        call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
          parentTaskId: 'eb',
          taskId: `s${String(i + j).padStart(3, '0')}`,
          agent: `spiffe://dev.local${AGENT}`,
          ttlSeconds: 600,
          grants: [{ role: 'demo-api' }], // every scope of the parent's grant, inherited
        }),
      ),
    );
    for (const r of rs) expect(r.status).toBe(201);
  }
}, 120_000);
afterAll(async () => t?.close());

/** Every page of the tree: its task ids, in order, and how many pages; `between` runs after the first page. */
async function walk(between?: () => Promise<void>): Promise<{ ids: string[]; created: number[]; pages: number }> {
  const ids: string[] = [];
  const created: number[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const res = await evidence(cursor ? `?treeCursor=${encodeURIComponent(cursor)}` : '');
    expect(res.status).toBe(200);
    const text = await res.text();
    // Before: ~4.7 MB, the whole tree at once (and ~36 MB at tasks.maxSubtasks 1,000).
    expect(text.length).toBeLessThan(2_200_000);
    const body = JSON.parse(text);
    expect(body.task.taskId).toBe('eb');
    expect(body.tree.length).toBeGreaterThan(0);
    ids.push(...body.tree.map((x: { taskId: string }) => x.taskId));
    created.push(...body.tree.map((x: { createdAt: string }) => Date.parse(x.createdAt)));
    cursor = body.treeNextCursor;
    pages += 1;
    if (pages === 1) await between?.();
  } while (cursor && pages < 10);
  expect(cursor).toBeNull();
  return { ids, created, pages };
}

test('an evidence answer holds ~2 MB of the tree at most; treeNextCursor pages through the rest, each task once, as opened', async () => {
  const { ids, created, pages } = await walk();
  expect(pages).toBeGreaterThan(1);
  expect(ids[0]).toBe('eb');
  expect([...ids].sort()).toEqual(['eb', ...Array.from({ length: SUBS }, (_, i) => `eb~s${String(i).padStart(3, '0')}`)]);
  // In the order they were opened (ten at a time, so not by id).
  expect(created).toEqual([...created].sort((x, y) => x - y));
}, 60_000);

test('a tree cursor is bound to its caller and its task', async () => {
  const first = (await (await evidence()).json()) as { treeNextCursor: string };
  expect(first.treeNextCursor).toEqual(expect.any(String));
  const q = `?treeCursor=${encodeURIComponent(first.treeNextCursor)}`;
  const other = await call(t.url, 'GET', `/v1/tasks/eb/evidence${q}`, t.as(ORCH));
  expect([other.status, other.body.code]).toEqual([400, 'invalid_cursor']);
  const sub = await call(t.url, 'GET', `/v1/tasks/eb~s000/evidence${q}`, t.as(AGENT));
  expect([sub.status, sub.body.code]).toEqual([400, 'invalid_cursor']);
  // The audit records' cursor is another: it does not page the tree.
  const mixed = await call(t.url, 'GET', `/v1/tasks/eb/evidence?cursor=${encodeURIComponent(first.treeNextCursor)}`, t.as(AGENT));
  expect([mixed.status, mixed.body.code]).toEqual([400, 'invalid_cursor']);
});

/**
 * Review: the tree was breadth first with each level sorted by id, and its cursor names the last task read: a
 * sub-task opened mid-walk whose id sorted before that task was never shown. Sub-tasks now come in opening order.
 */
test('a sub-task opened while a client pages through the tree is shown, whatever its id', async () => {
  const opened = async () => {
    const r = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
      parentTaskId: 'eb',
      taskId: 'a-late',
      agent: `spiffe://dev.local${AGENT}`,
      ttlSeconds: 600,
      grants: [{ role: 'demo-api' }],
    });
    expect(r.status).toBe(201);
  };
  const { ids } = await walk(opened);
  // Before: missing (it sorted first, among the tasks the first page had shown).
  expect(ids.at(-1)).toBe('eb~a-late');
  expect(new Set(ids).size).toBe(ids.length);
  expect(ids).toHaveLength(SUBS + 2);
}, 60_000);
