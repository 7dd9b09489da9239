import { AGENT, auditRecords, call, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: past the per-minute fold table's bound (10,000 distinct callers; 3 here), denials fold per
 * (task, code, action) whoever made them, and the folded record carried the first folded caller as its
 * actor: every other caller's denials were recorded as theirs. The folded record's actor is now `broker`
 * and `detail.actors` names the callers it counts; each key's first denial is still its caller's own record.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('rt-deny-overflow-actor', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 1000 } } },
    broker: { auditFoldMaxKeys: 3 },
  });
  await openAgentTask(t, 'victim', [{ role: 'demo-api' }]);
});
afterAll(async () => {
  await t?.close();
});

const id = (n: string) => `spiffe://dev.local/agent/${n}`;

test("a folded overflow record names the callers it counts, not the first one's identity for all", async () => {
  // Three distinct callers fill the table; the next ones overflow into one key for (victim, not_task_party, access.deny).
  for (const n of ['a', 'b', 'c', 'first', 'second', 'third', 'second']) {
    expect((await call(t.url, 'GET', '/v1/tasks/victim', t.as(`/agent/${n}`))).status).toBe(403);
  }
  await t.broker.deps.audit.flushFolds(true);
  const denials = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter(
    (r) => r.action === 'access.deny' && r.reason === 'not_task_party' && r.taskId === 'victim',
  );
  const overflow = denials.filter((r) => r.detail?.overflow);
  // The key's first denial, written at once: its own caller's.
  const first = overflow.filter((r) => !r.detail.folded);
  expect(first).toHaveLength(1);
  expect(first[0]!.actor).toBe(id('first'));
  // The rest: three denials of two other callers.
  const folded = overflow.filter((r) => r.detail.folded);
  expect(folded).toHaveLength(1);
  expect(folded[0]!).toMatchObject({ actor: 'broker', count: 3, detail: { actors: [id('second'), id('third')] } });
  expect(folded[0]!.detail.actorsTruncated).toBeUndefined();
  // Nothing else recorded under the first caller beyond its own denial.
  expect(denials.filter((r) => r.actor === id('first'))).toHaveLength(1);
  // The agent's own task is not theirs: the task's agent is not among them.
  expect(folded[0]!.detail.actors).not.toContain(`spiffe://dev.local${AGENT}`);
});
