import { ADMIN, AGENT, ORCH, auditRecords, call, startSibling, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';

/**
 * Contract section 3, "Stopping things": the kill switch ends every matching
 * task and revokes its leases; a quarantined identity is refused everywhere,
 * on every instance, and stays so after a restart.
 */
let a: TestBroker;
let b: TestBroker;
const ROGUE = '/agent/rogue/one';
const adminId = `spiffe://dev.local${ADMIN}`;
let n = 0;

beforeAll(async () => {
  a = await startTestBroker('kill-switch');
  b = await startSibling(a);
});
afterAll(async () => {
  await b.close();
  await a.close();
});

async function taskWithLeases(agentPath: string, count: number, tenant = 'acme'): Promise<{ taskId: string; leases: string[] }> {
  const taskId = `t-kill-${++n}`;
  const r = await call(a.url, 'POST', '/v1/tasks', a.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${agentPath}`,
    tenant,
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  expect(r.status).toBe(201);
  const leases: string[] = [];
  for (let i = 0; i < count; i++)
    leases.push((await call(b.url, 'POST', '/v1/credentials', a.as(agentPath), { taskId, role: 'demo-api' })).body.leaseId);
  return { taskId, leases };
}

test('POST /v1/admin/revoke by agent pattern ends its tasks (sub-tasks included) and revokes every lease', async () => {
  const t1 = await taskWithLeases(ROGUE, 3);
  const t2 = await taskWithLeases(ROGUE, 2);
  const sub = await call(a.url, 'POST', '/v1/tasks', a.as(ROGUE), {
    parentTaskId: t1.taskId,
    agent: 'spiffe://dev.local/agent/helper',
    ttlSeconds: 60,
    grants: [{ role: 'demo-api' }],
  });
  const subLease = (await call(a.url, 'POST', '/v1/credentials', a.as('/agent/helper'), { taskId: sub.body.taskId, role: 'demo-api' })).body
    .leaseId;
  const bystander = await taskWithLeases(AGENT, 1);

  const r = await call(b.url, 'POST', '/v1/admin/revoke', b.as(ADMIN), { agent: 'spiffe://dev.local/agent/rogue/*' });
  expect(r.status).toBe(202);
  expect(r.body).toEqual({ tasks: 3, leases: 6 });

  for (const id of [...t1.leases, ...t2.leases, subLease]) {
    const l = await waitFor(async () => {
      const x = (await call(a.url, 'GET', `/v1/leases/${id}`, a.as(ADMIN))).body;
      return x.status === 'revoked' && x;
    });
    expect(l.reason).toBe('revoked_by_admin');
  }
  for (const id of [t1.taskId, t2.taskId, sub.body.taskId]) {
    expect((await call(a.url, 'GET', `/v1/tasks/${id}`, a.as(ADMIN))).body).toMatchObject({
      status: 'completed',
      reason: 'revoked_by_admin',
    });
  }
  expect((await call(a.url, 'GET', `/v1/tasks/${bystander.taskId}`, a.as(ADMIN))).body.status).toBe('open');
  const audit = await auditRecords(a.broker.deps.redis, a.broker.deps.keys);
  // One record: the outcome took the place of the `interrupted` one kept in the ops outbox while it ran.
  expect(audit.filter((x) => x.action === 'admin.revoke')).toEqual([
    expect.objectContaining({
      actor: adminId,
      detail: { agent: 'spiffe://dev.local/agent/rogue/*', tasks: 3, leases: expect.any(Number) },
    }),
  ]);
  expect(await a.broker.deps.redis.zcard(a.broker.deps.keys.auditOutbox('ops'))).toBe(0);
});

test('by tenant and by task id; exactly one selector', async () => {
  const globex = await taskWithLeases(AGENT, 1, 'globex-kill');
  const other = await taskWithLeases(AGENT, 1);
  expect((await call(a.url, 'POST', '/v1/admin/revoke', a.as(ADMIN), { tenant: 'globex-kill' })).body).toEqual({ tasks: 1, leases: 1 });
  expect((await call(a.url, 'POST', '/v1/admin/revoke', a.as(ADMIN), { taskId: other.taskId })).body).toEqual({ tasks: 1, leases: 1 });
  expect((await call(a.url, 'GET', `/v1/tasks/${globex.taskId}`, a.as(ADMIN))).body.status).toBe('completed');
  const two = await call(a.url, 'POST', '/v1/admin/revoke', a.as(ADMIN), { tenant: 'x', taskId: 'y' });
  expect(two.status).toBe(400);
});

test('quarantine: refused everywhere, on every instance, across a restart; lifted again', async () => {
  const QA = '/agent/suspect';
  const open = await taskWithLeases(QA, 1);
  const q = await call(a.url, 'POST', '/v1/admin/quarantine', a.as(ADMIN), {
    agent: `spiffe://dev.local${QA}`,
    reason: 'prompt injection',
  });
  expect(q.status).toBe(201);
  expect(q.body).toMatchObject({ pattern: `spiffe://dev.local${QA}`, reason: 'prompt injection', by: adminId, tasks: 1, leases: 1 });

  // The other instance refuses it too (announced, and re-read every few seconds).
  const refused = await waitFor(async () => {
    const r = await call(b.url, 'GET', `/v1/tasks/${open.taskId}`, b.as(QA));
    return r.status === 403 && r;
  }, 5000);
  expect(refused.body.code).toBe('identity_quarantined');
  expect((await call(b.url, 'POST', '/v1/credentials', b.as(QA), { taskId: open.taskId, role: 'demo-api' })).body.code).toBe(
    'identity_quarantined',
  );
  const token = await fetch(`${b.url}/v1/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
      subject_token: b.issuer.svid(QA),
      subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      audience: 'demo-api',
      task_id: open.taskId,
    }),
  });
  expect(token.status).toBe(400);
  expect(((await token.json()) as { error: string }).error).toBe('unauthorized_client');
  expect((await call(a.url, 'GET', `/v1/leases/${open.leases[0]}`, a.as(ADMIN))).body.reason).toBe('revoked_by_admin');

  // An instance started after the quarantine refuses it from the start.
  const c = await startSibling(a);
  expect((await call(c.url, 'GET', `/v1/tasks/${open.taskId}`, c.as(QA))).body.code).toBe('identity_quarantined');
  await c.close();

  const listed = await call(a.url, 'GET', '/v1/admin/quarantine', a.as(ADMIN));
  expect(listed.body.items).toEqual([expect.objectContaining({ pattern: `spiffe://dev.local${QA}`, reason: 'prompt injection' })]);
  const lift = await call(b.url, 'DELETE', `/v1/admin/quarantine/${encodeURIComponent(`spiffe://dev.local${QA}`)}`, b.as(ADMIN));
  expect(lift.status).toBe(200);
  await waitFor(async () => (await call(a.url, 'GET', `/v1/tasks/${open.taskId}`, a.as(QA))).status === 200, 5000);
  expect((await call(a.url, 'DELETE', `/v1/admin/quarantine/${encodeURIComponent(`spiffe://dev.local${QA}`)}`, a.as(ADMIN))).status).toBe(
    404,
  );
  const actions = (await auditRecords(a.broker.deps.redis, a.broker.deps.keys)).filter((x) => x.action.startsWith('quarantine.'));
  expect(actions.map((x) => [x.action, x.actor])).toEqual([
    ['quarantine.add', adminId],
    ['quarantine.remove', adminId],
  ]);
});

test('a pattern that matches the admin is refused', async () => {
  const r = await call(a.url, 'POST', '/v1/admin/quarantine', a.as(ADMIN), { agent: 'spiffe://dev.local/ops/*', reason: 'oops' });
  expect(r.status).toBe(400);
  expect(r.body.code).toBe('quarantine_self');
  // Audited like every denial (before: no record at all).
  const records = (await auditRecords(a.broker.deps.redis, a.broker.deps.keys)).filter((x) => x.reason === 'quarantine_self');
  expect(records.map((x) => [x.action, x.actor, x.decision, x.detail?.pattern])).toEqual([
    ['quarantine.add', `spiffe://dev.local${ADMIN}`, 'deny', 'spiffe://dev.local/ops/*'],
  ]);
});

test('quarantining an orchestrator ends the tasks it opened, as well as any it is the agent of', async () => {
  // Found from outside: a compromised orchestrator's grants stayed in force (tasks 0, leases 0): its tasks
  // stayed open, their tokens active, and their agents kept getting credentials.
  const rogueOrch = '/orchestrator/rogue';
  const taskId = `t-kill-orch-${++n}`;
  const open = await call(a.url, 'POST', '/v1/tasks', a.as(rogueOrch), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'granted by an orchestrator later found compromised',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  expect(open.status).toBe(201);
  const lease = await call(a.url, 'POST', '/v1/credentials', a.as(AGENT), { taskId, role: 'demo-api' });
  expect(lease.status).toBe(201);
  const bystander = await taskWithLeases(AGENT, 1); // opened by another orchestrator: untouched
  const pattern = `spiffe://dev.local${rogueOrch}`;
  const q = await call(a.url, 'POST', '/v1/admin/quarantine', a.as(ADMIN), { agent: pattern, reason: 'orchestrator key leaked' });
  expect(q.status).toBe(201);
  expect(q.body).toMatchObject({ tasks: 1, leases: 1 });
  expect((await call(a.url, 'GET', `/v1/tasks/${taskId}`, a.as(ADMIN))).body.status).toBe('completed');
  expect((await call(a.url, 'POST', '/v1/credentials', a.as(AGENT), { taskId, role: 'demo-api' })).status).toBe(409);
  await waitFor(async () => (await a.broker.deps.leases.get(lease.body.leaseId))?.status === 'revoked', 10_000);
  expect((await call(a.url, 'GET', `/v1/tasks/${bystander.taskId}`, a.as(ADMIN))).body.status).toBe('open');
  await call(a.url, 'DELETE', `/v1/admin/quarantine/${encodeURIComponent(pattern)}`, a.as(ADMIN));
});

test('a task opened while the quarantine was being written is ended, not missed by the scan (found in review)', async () => {
  // An instance checks callers against a list up to 2 s old: an orchestrator (or a task's agent) quarantined on
  // another instance could open a task here after the admin's scan, and it stayed open for good.
  a.broker.deps.quarantine.stop(); // this instance has not re-read the list yet
  try {
    const lateOrch = '/orchestrator/late';
    const redis = a.broker.deps.redis;
    const entry = () => JSON.stringify({ reason: 'race', by: adminId, at: new Date().toISOString() });
    await redis.hset(a.broker.deps.keys.quarantine(), `spiffe://dev.local${lateOrch}`, entry());
    const byOrch = await call(a.url, 'POST', '/v1/tasks', a.as(lateOrch), {
      taskId: `t-kill-late-${++n}`,
      agent: `spiffe://dev.local${AGENT}`,
      tenant: 'acme',
      purpose: 'opened in the window',
      ttlSeconds: 600,
      grants: [{ role: 'demo-api' }],
    });
    // Before: 201 and an open task.
    expect({ status: byOrch.status, code: byOrch.body.code }).toEqual({ status: 403, code: 'identity_quarantined' });
    const lateAgent = '/agent/late';
    await redis.hset(a.broker.deps.keys.quarantine(), `spiffe://dev.local${lateAgent}`, entry());
    const forAgent = await call(a.url, 'POST', '/v1/tasks', a.as(ORCH), {
      taskId: `t-kill-late-${++n}`,
      agent: `spiffe://dev.local${lateAgent}`,
      tenant: 'acme',
      purpose: 'for an agent quarantined in the window',
      ttlSeconds: 600,
      grants: [{ role: 'demo-api' }],
    });
    expect(forAgent.status).toBe(201);
    expect((await call(a.url, 'GET', `/v1/tasks/${forAgent.body.taskId}`, a.as(ADMIN))).body.status).toBe('completed');
    for (const p of [lateOrch, lateAgent])
      await call(a.url, 'DELETE', `/v1/admin/quarantine/${encodeURIComponent(`spiffe://dev.local${p}`)}`, a.as(ADMIN));
  } finally {
    await a.broker.deps.quarantine.start();
  }
});

test('a task for an agent already quarantined is refused up front: 403 identity_quarantined, no task, audited', async () => {
  // Before: 201 with a task already `completed` (opened, then ended by the re-read of the quarantine list).
  const QA = '/agent/quarantined-before';
  const pattern = `spiffe://dev.local${QA}`;
  expect((await call(a.url, 'POST', '/v1/admin/quarantine', a.as(ADMIN), { agent: pattern, reason: 'known bad' })).status).toBe(201);
  try {
    const taskId = `t-kill-pre-${++n}`;
    const r = await call(a.url, 'POST', '/v1/tasks', a.as(ORCH), {
      taskId,
      agent: pattern,
      tenant: 'acme',
      purpose: 'for a quarantined agent',
      ttlSeconds: 600,
      grants: [{ role: 'demo-api' }],
    });
    expect(r.status).toBe(403);
    expect(r.headers.get('content-type')).toContain('application/problem+json');
    expect(r.body.code).toBe('identity_quarantined');
    expect(r.body.detail).toContain('agent');
    expect((await call(a.url, 'GET', `/v1/tasks/${taskId}`, a.as(ADMIN))).status).toBe(404);
    // A sub-task handed to it by another task's agent is refused the same way, recorded under its parent.
    const parent = await taskWithLeases(AGENT, 0);
    const sub = await call(a.url, 'POST', '/v1/tasks', a.as(AGENT), {
      parentTaskId: parent.taskId,
      taskId: 'helper',
      agent: pattern,
      ttlSeconds: 60,
      grants: [{ role: 'demo-api' }],
    });
    expect({ status: sub.status, code: sub.body.code }).toEqual({ status: 403, code: 'identity_quarantined' });
    expect((await call(a.url, 'GET', `/v1/tasks/${parent.taskId}~helper`, a.as(ADMIN))).status).toBe(404);
    const denials = (await auditRecords(a.broker.deps.redis, a.broker.deps.keys)).filter((x) => x.reason === 'identity_quarantined');
    expect(denials).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ action: 'access.deny', decision: 'deny', actor: `spiffe://dev.local${ORCH}`, taskId }),
        expect.objectContaining({
          action: 'access.deny',
          decision: 'deny',
          actor: `spiffe://dev.local${AGENT}`,
          taskId: parent.taskId,
          detail: expect.objectContaining({ subtask: `${parent.taskId}~helper` }),
        }),
      ]),
    );
    expect((await auditRecords(a.broker.deps.redis, a.broker.deps.keys)).some((x) => x.taskId === taskId && x.action === 'task.open')).toBe(
      false,
    );
    // A replay of an open made before the quarantine answers as opens of an existing id do: 200, that task.
    await call(a.url, 'DELETE', `/v1/admin/quarantine/${encodeURIComponent(pattern)}`, a.as(ADMIN));
    const made = await taskWithLeases(QA, 0);
    expect((await call(a.url, 'POST', '/v1/admin/quarantine', a.as(ADMIN), { agent: pattern, reason: 'known bad' })).status).toBe(201);
    const replay = await call(a.url, 'POST', '/v1/tasks', a.as(ORCH), {
      taskId: made.taskId,
      agent: pattern,
      tenant: 'acme',
      purpose: 'p',
      ttlSeconds: 600,
      grants: [{ role: 'demo-api' }],
    });
    // Before: 403, though the task exists (ended by the quarantine).
    expect({ status: replay.status, taskId: replay.body.taskId, status2: replay.body.status }).toEqual({
      status: 200,
      taskId: made.taskId,
      status2: 'completed',
    });
    // A caller policy refuses anyway gets its policy's refusal, and learns nothing of the quarantine (found in
    // review: the check ran before policy). The shipped policies let agents delegate to depth 2 only.
    const root = await taskWithLeases(AGENT, 0);
    let at = root.taskId;
    for (const [i, agent] of ['/agent/d1', '/agent/d2'].entries()) {
      const by = i === 0 ? AGENT : '/agent/d1';
      const d = await call(a.url, 'POST', '/v1/tasks', a.as(by), {
        parentTaskId: at,
        taskId: `d${i + 1}`,
        agent: `spiffe://dev.local${agent}`,
        ttlSeconds: 50 - i * 10,
        grants: [{ role: 'demo-api' }],
      });
      expect(d.status === 201 ? 'ok' : `${d.status} ${d.body.code} ${d.body.detail}`).toBe('ok');
      at = d.body.taskId;
    }
    const deep = await call(a.url, 'POST', '/v1/tasks', a.as('/agent/d2'), {
      parentTaskId: at,
      taskId: 'd3',
      agent: pattern,
      ttlSeconds: 20,
      grants: [{ role: 'demo-api' }],
    });
    expect(deep.status).toBe(403);
    expect(deep.body.code).not.toBe('identity_quarantined');
  } finally {
    await call(a.url, 'DELETE', `/v1/admin/quarantine/${encodeURIComponent(pattern)}`, a.as(ADMIN));
  }
});

test('lifting a quarantine first ends a task its agent got while quarantined (a process died before its re-check)', async () => {
  // Found by the race review: an instance whose list had not caught up yet opens the task, then re-reads the list
  // and ends it; a process that died between the two left the quarantined agent's task open. Refused while the
  // quarantine stood, it came to life when the quarantine was lifted, a grant made for a quarantined agent.
  const QA = '/agent/slipped';
  const pattern = `spiffe://dev.local${QA}`;
  expect((await call(a.url, 'POST', '/v1/admin/quarantine', a.as(ADMIN), { agent: pattern, reason: 'leaked' })).status).toBe(201);
  // What the dead process left: the task, opened on a list that did not hold the quarantine, never re-checked.
  const q = b.broker.deps.quarantine;
  const [match, reload] = [q.match.bind(q), q.reload.bind(q)];
  q.match = () => undefined;
  let reached!: () => void;
  const atRecheck = new Promise<void>((r) => {
    reached = r;
  });
  q.reload = () => {
    reached();
    return new Promise<void>(() => {}); // the process is gone: the re-check never runs
  };
  const taskId = `t-kill-slipped-${++n}`;
  const gone = new AbortController();
  const opening = fetch(`${b.url}/v1/tasks`, {
    method: 'POST',
    signal: gone.signal,
    headers: { ...b.as(ORCH), 'content-type': 'application/json' },
    body: JSON.stringify({ taskId, agent: pattern, tenant: 'acme', purpose: 'p', ttlSeconds: 600, grants: [{ role: 'demo-api' }] }),
  }).catch(() => undefined);
  try {
    await atRecheck;
    gone.abort();
    await opening;
  } finally {
    q.match = match;
    q.reload = reload;
  }
  expect((await call(a.url, 'GET', `/v1/tasks/${taskId}`, a.as(ADMIN))).body.status).toBe('open');

  const lift = await call(a.url, 'DELETE', `/v1/admin/quarantine/${encodeURIComponent(pattern)}`, a.as(ADMIN));
  expect(lift.status).toBe(200);
  const task = (await call(a.url, 'GET', `/v1/tasks/${taskId}`, a.as(ADMIN))).body;
  expect({ status: task.status, reason: task.reason }).toEqual({ status: 'completed', reason: 'revoked_by_admin' });
  expect((await call(a.url, 'POST', '/v1/credentials', a.as(QA), { taskId, role: 'demo-api' })).status).toBe(409);
});
