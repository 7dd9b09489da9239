import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { ADMIN, AGENT, ORCH, call, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';
import { ensureBuilt, jit, node20Version } from '../helpers/cli.ts';
import { send, startFakeBroker } from '../helpers/fake-broker.ts';

// Every step spawns a Node process; on a busy 2-core machine a test of ten steps needs more than jest's 20 s.
jest.setTimeout(90_000);

/**
 * `jit task ...` on the machine's Node 20 against a real broker (API +
 * worker, real Redis): what the broker answers, and the exit codes of
 * contract section 9.
 */
let t: TestBroker;
const agentId = 'spiffe://dev.local/agent/support';
const as = (path: string) => ({ JIT_BROKER_URL: t.url, JIT_TOKEN: t.issuer.svid(path, { ttl: 600 }) });
let n = 0;
const id = () => `t-cli-${++n}-${Date.now()}`;

beforeAll(async () => {
  expect(node20Version()).toMatch(/^v20\./);
  await ensureBuilt();
  t = await startTestBroker('cli-tasks');
}, 120_000);
afterAll(async () => {
  await t?.close();
});

const open = (taskId: string, ...more: string[]) =>
  jit(
    ['task', 'open', '--task', taskId, '--agent', agentId, '--tenant', 'acme', '--purpose', 'cli test', '--ttl', '10m', ...more],
    as(ORCH),
  );

describe('jit task open', () => {
  it('prints the task id on stdout; the grant forms reach the broker as written', async () => {
    const taskId = id();
    const r = await open(
      taskId,
      '--grant',
      'tickets-api:tickets:read,tickets:write@300',
      '--grant',
      'demo-api:',
      '--label',
      'ticket=4711',
      '--label',
      'team=blue',
    );
    expect(r).toMatchObject({ code: 0, stdout: `${taskId}\n` });
    expect(r.stderr).toContain(`opened task ${taskId}`);
    const task = await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH));
    expect(task.body).toMatchObject({
      taskId,
      agent: agentId,
      tenant: 'acme',
      purpose: 'cli test',
      status: 'open',
      labels: { ticket: '4711', team: 'blue' },
      grants: [
        { role: 'tickets-api', scopes: ['tickets:read', 'tickets:write'], maxTtlSeconds: 300 },
        { role: 'demo-api', scopes: [] },
      ],
    });
    // --ttl 10m: the deadline is ten minutes out.
    const left = Date.parse(task.body.expiresAt) - Date.now();
    expect(left).toBeGreaterThan(590_000);
    expect(left).toBeLessThanOrEqual(600_000);
  });

  it('--grant-json and --json: the response JSON on stdout', async () => {
    const taskId = id();
    const r = await open(taskId, '--grant-json', '[{"role":"tickets-api","scopes":["tickets:read"],"maxTtlSeconds":120}]', '--json');
    expect(r.code).toBe(0);
    const body = JSON.parse(r.stdout);
    expect(body).toMatchObject({ taskId, status: 'open', grants: [{ role: 'tickets-api', scopes: ['tickets:read'], maxTtlSeconds: 120 }] });
  });

  it('a bare role opens a task with that grant', async () => {
    const r = await open(id(), '--grant', 'demo-api');
    expect(r.code).toBe(0);
  });

  it('the same --task twice answers the same task; a different body is refused (exit 1, 409)', async () => {
    const taskId = id();
    expect((await open(taskId, '--grant', 'demo-api:')).code).toBe(0);
    expect(await open(taskId, '--grant', 'demo-api:')).toMatchObject({ code: 0, stdout: `${taskId}\n` });
    const r = await open(taskId, '--grant', 'tickets-api:', '--json');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^jit: 409 task_id_conflict: /);
    expect(JSON.parse(r.stdout)).toMatchObject({ status: 409, code: 'task_id_conflict' });
  });

  it('refusals exit 1: not an orchestrator (403), an unknown role (400)', async () => {
    const notOrch = await jit(
      ['task', 'open', '--agent', agentId, '--tenant', 'acme', '--purpose', 'p', '--ttl', '60', '--grant', 'demo-api:'],
      as(AGENT),
    );
    expect(notOrch.code).toBe(1);
    expect(notOrch.stderr).toMatch(/403 not_orchestrator/);
    const unknown = await open(id(), '--grant', 'no-such-role:');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/400 unknown_role/);
  });

  it.each([
    ['no grant', []],
    ['a malformed grant', ['--grant', 'bad role']],
    ['malformed --grant-json', ['--grant-json', '{nope']],
    ['a malformed --ttl', ['--grant', 'demo-api:', '--ttl', 'soon']],
    ['an unknown flag', ['--grant', 'demo-api:', '--colour', 'red']],
  ])('bad usage exits 2 without asking the broker: %s', async (_what, more) => {
    const r = await open(id(), ...more);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^jit: .+\nusage: jit task open /);
  });

  it.each([['support'], ['/agent/support'], ['agent/support']])(
    '--agent %s, not an identity, is bad usage, not a task its agent can never use',
    async (agent) => {
      // Found by a newcomer: `jit dev token --sub /agent/support` takes the path, so `--agent` was given it too; the
      // task opened, and the agent's `jit cred get` was refused with 403 not_task_agent.
      const taskId = id();
      const r = await jit(
        ['task', 'open', '--task', taskId, '--agent', agent, '--tenant', 'acme', '--purpose', 'p', '--ttl', '10m', '--grant', 'demo-api:'],
        as(ORCH),
      );
      expect(r).toMatchObject({ code: 2, stdout: '' });
      expect(r.stderr).toContain(`--agent "${agent}" is not an identity: give a SPIFFE ID (spiffe://dev.local/agent/support)`);
      expect((await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH))).status).toBe(404);
    },
  );

  it('a label key given twice is bad usage naming the key; no task is opened', async () => {
    // Found in review: `--label a=b --label a=c` opened the task with a=c, the first value dropped silently.
    const taskId = id();
    const r = await open(taskId, '--grant', 'demo-api:', '--label', 'a=b', '--label', 'team=blue', '--label', 'a=c');
    expect(r).toMatchObject({ code: 2, stdout: '' });
    expect(r.stderr).toMatch(/^jit: --label key "a" is given twice\nusage: jit task open /);
    expect((await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH))).status).toBe(404);
  });

  it('a missing required flag is bad usage', async () => {
    const r = await jit(['task', 'open', '--agent', agentId, '--grant', 'demo-api:', '--purpose', 'p', '--ttl', '60'], as(ORCH));
    expect(r).toMatchObject({ code: 2, stderr: expect.stringContaining('--tenant is required') });
  });
});

describe('jit task show | complete', () => {
  it('show prints the task and its leases; --json the broker’s answer; complete revokes them', async () => {
    const taskId = id();
    expect((await open(taskId, '--grant', 'tickets-api:tickets:read')).code).toBe(0);
    const cred = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api' });
    expect(cred.status).toBe(201);

    const shown = await jit(['task', 'show', taskId], as(AGENT));
    expect(shown.code).toBe(0);
    expect(shown.stdout).toMatch(new RegExp(`^task +${taskId}$`, 'm'));
    expect(shown.stdout).toMatch(/^status +open$/m);
    expect(shown.stdout).toMatch(/^grants +tickets-api\[tickets:read\]@900s$/m);
    expect(shown.stdout).toMatch(new RegExp(`^${cred.body.leaseId} +tickets-api +active `, 'm'));
    expect(shown.stdout).toMatch(/^expires +\S+ \(in \d+m \d+s\)$/m);

    const done = await jit(['task', 'complete', taskId, '--json'], as(ORCH));
    expect(done.code).toBe(0);
    expect(JSON.parse(done.stdout)).toEqual({ taskId, status: 'completed', leases: 1 });

    const after = await jit(['task', 'show', '--json', taskId], as(ORCH));
    expect(JSON.parse(after.stdout)).toMatchObject({ taskId, status: 'completed', leases: [{ leaseId: cred.body.leaseId }] });
    // Ended: the time it would have expired, without "(in 14m 59s)", which read as if it were still live.
    const ended = await jit(['task', 'show', taskId], as(ORCH));
    expect(ended.stdout).toMatch(/^status +completed$/m);
    expect(ended.stdout).toMatch(/^expires +\S+ \(ended before\)$/m);
    await waitFor(async () => (await call(t.url, 'GET', `/v1/leases/${cred.body.leaseId}`, t.as(ORCH))).body.status === 'revoked', 10_000);
    const lease = await jit(['lease', 'show', cred.body.leaseId], as(ORCH));
    expect(lease.stdout).toMatch(/^status +revoked$/m);
    expect(lease.stdout).toMatch(/^expires +\S+ \(ended before\)$/m);
  });

  it('show quotes a label value holding a space, "=" or a quote: one label never reads as two', async () => {
    // Red team: labels printed as k=v joined by spaces, so {env: 'staging', note: 'x env=prod'} read
    // `env=staging note=x env=prod`, a second env label the task does not have (a sub-task's agent may add keys).
    const taskId = id();
    const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
      taskId,
      agent: agentId,
      tenant: 'acme',
      purpose: 'cli test',
      ttlSeconds: 600,
      grants: [{ role: 'demo-api' }],
      labels: { env: 'staging', note: 'x env=prod', q: 'say "hi"' },
    });
    expect(r.status).toBe(201);
    const show = await jit(['task', 'show', taskId], as(ORCH));
    expect(show.stdout).toMatch(/^labels +env=staging note="x env=prod" q="say \\"hi\\""$/m);
  });

  it('exit codes: unknown task 1 (404), a stranger 1 (403), no identity 2, no argument 2, no broker 3', async () => {
    const missing = await jit(['task', 'show', 'no-such-task'], as(ORCH));
    expect(missing).toMatchObject({ code: 1, stderr: expect.stringMatching(/404 task_not_found/) });
    const taskId = id();
    await open(taskId, '--grant', 'demo-api:');
    const stranger = await jit(['task', 'show', taskId], as('/agent/other'));
    expect(stranger).toMatchObject({ code: 1, stderr: expect.stringMatching(/403 not_task_party/) });
    const noIdentity = await jit(['task', 'show', taskId], { JIT_BROKER_URL: t.url });
    expect(noIdentity).toMatchObject({ code: 2, stderr: expect.stringMatching(/JIT_TOKEN/) });
    expect((await jit(['task', 'show'], as(ORCH))).code).toBe(2);
    // A port nothing listens on: no answer is exit 3.
    const down = await jit(['task', 'show', taskId], { ...as(ORCH), JIT_BROKER_URL: 'http://127.0.0.1:9' });
    expect(down).toMatchObject({ code: 3, stderr: expect.stringMatching(/cannot reach the broker at http:\/\/127\.0\.0\.1:9/) });
  });

  it('--broker and --token-file override the environment; the file is what authenticates', async () => {
    const { mkdtempSync, writeFileSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const file = join(mkdtempSync(join(tmpdir(), 'jit-cli-')), 'svid');
    writeFileSync(file, `${t.issuer.svid(ADMIN, { ttl: 600 })}\n`);
    const taskId = id();
    await open(taskId, '--grant', 'demo-api:');
    const r = await jit(['task', 'show', taskId, '--broker', t.url, '--token-file', file, '--json'], {
      JIT_BROKER_URL: 'http://127.0.0.1:9',
      JIT_TOKEN_FILE: '/nonexistent',
    });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).taskId).toBe(taskId);
    const viaEnvFile = await jit(['task', 'show', taskId], { JIT_BROKER_URL: t.url, JIT_TOKEN_FILE: file });
    expect(viaEnvFile.code).toBe(0);
    const unreadable = await jit(['task', 'show', taskId], { JIT_BROKER_URL: t.url, JIT_TOKEN_FILE: '/nonexistent/svid' });
    expect(unreadable).toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/cannot read the token file \/nonexistent\/svid \(ENOENT\)/),
    });
  });

  it('a broker failure (5xx) exits 3', async () => {
    // The broker's own "not ready" answer: a 503 from /readyz would not do, as the CLI never calls it;
    // instead point the CLI at a server that answers 502 like a failing upstream.
    const problem = { type: 'about:blank', title: 'Bad Gateway', status: 502, code: 'upstream_unavailable', detail: 'Vault is sealed.' };
    const fake = await startFakeBroker((_req, res) => send(res, 502, JSON.stringify(problem), 'application/problem+json'));
    try {
      const r = await jit(['task', 'show', 'x', '--json'], { JIT_BROKER_URL: fake.url, JIT_TOKEN: 'a.b.c' });
      expect(r.code).toBe(3);
      expect(r.stderr).toBe('jit: 502 upstream_unavailable: Vault is sealed.\n');
      expect(JSON.parse(r.stdout)).toMatchObject({ status: 502, code: 'upstream_unavailable' });
    } finally {
      await fake.close();
    }
  });
});

describe('jit task list (GET /v1/tasks)', () => {
  it('lists the tasks an orchestrator opened, newest first, filtered by status, paged', async () => {
    const orch = '/orchestrator/lister';
    const env = as(orch);
    const ids = [id(), id(), id()];
    for (const taskId of ids) {
      const r = await jit(
        [
          'task',
          'open',
          '--task',
          taskId,
          '--agent',
          agentId,
          '--tenant',
          'acme',
          '--purpose',
          'list',
          '--ttl',
          '600',
          '--grant',
          'demo-api:',
        ],
        env,
      );
      expect(r.code).toBe(0);
    }
    expect((await jit(['task', 'complete', ids[0]!], env)).code).toBe(0);

    const all = await jit(['task', 'list', '--json'], env);
    expect(all.code).toBe(0);
    expect(JSON.parse(all.stdout).items.map((x: { taskId: string }) => x.taskId)).toEqual([...ids].reverse());

    const open1 = await jit(['task', 'list', '--status', 'open', '--limit', '1', '--json'], env);
    const page1 = JSON.parse(open1.stdout);
    expect(page1.items.map((x: { taskId: string }) => x.taskId)).toEqual([ids[2]]);
    expect(page1.nextCursor).toEqual(expect.any(String));
    const page2 = JSON.parse(
      (await jit(['task', 'list', '--status', 'open', '--limit', '1', '--cursor', page1.nextCursor, '--json'], env)).stdout,
    );
    expect(page2.items.map((x: { taskId: string }) => x.taskId)).toEqual([ids[1]]);

    const everything = JSON.parse((await jit(['task', 'list', '--status', 'open', '--limit', '1', '--all', '--json'], env)).stdout);
    expect(everything).toEqual({
      items: [expect.objectContaining({ taskId: ids[2] }), expect.objectContaining({ taskId: ids[1] })],
      nextCursor: null,
    });

    const human = await jit(['task', 'list', '--status', 'open'], env);
    expect(human.stdout.split('\n')[0]).toMatch(/^TASK +STATUS +AGENT +TENANT +EXPIRES +GRANTS$/);
    expect(human.stdout).toContain(ids[1]);
  });

  it('--limit over 500 is bad usage', async () => {
    expect((await jit(['task', 'list', '--limit', '501'], as(ORCH))).code).toBe(2);
  });
});

describe('jit task evidence (GET /v1/tasks/{id}/evidence)', () => {
  it('shows the task, its leases and records, and an intact chain (exit 0)', async () => {
    const taskId = id();
    await open(taskId, '--grant', 'tickets-api:tickets:read');
    await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api' });
    const r = await jit(['task', 'evidence', taskId], as(ORCH));
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/audit chain: intact/);
    expect(r.stdout).toMatch(/task\.open/);
    expect(r.stdout).toMatch(/credential\.issue/);
    const json = JSON.parse((await jit(['task', 'evidence', taskId, '--json'], as(ORCH))).stdout);
    expect(json).toMatchObject({ task: { taskId }, chain: 'intact' });
  });
});

describe('jit task leases (GET /v1/tasks/{id}/leases)', () => {
  it('task show says where the leases past the first 100 are; task leases --all pages them all', async () => {
    const taskId = id();
    await open(taskId, '--grant', 'tickets-api:tickets:read');
    for (let i = 0; i < 105; i += 35) {
      // Within the default rate limit (50/s, burst 100).
      if (i > 0) await new Promise((r) => setTimeout(r, 1000));
      const batch = Array.from({ length: 35 }, () => call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api' }));
      for (const r of await Promise.all(batch)) expect(r.status).toBe(201);
    }
    const show = await jit(['task', 'show', taskId], as(ORCH));
    expect(show.code).toBe(0);
    expect(show.stderr).toContain(`more leases: jit task leases ${taskId} --cursor `);
    const all = await jit(['task', 'leases', taskId, '--all', '--limit', '40', '--json'], as(ORCH));
    expect(all.code).toBe(0);
    const page = JSON.parse(all.stdout);
    expect(page.nextCursor).toBeNull();
    expect(new Set(page.items.map((l: { leaseId: string }) => l.leaseId)).size).toBe(105);
    const tree = await jit(['task', 'leases', taskId, '--tree', '--limit', '2'], as(AGENT));
    expect(tree.code).toBe(0);
    expect(tree.stdout).toContain(taskId);
  });
});
