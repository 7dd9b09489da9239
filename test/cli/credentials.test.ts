import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ADMIN, AGENT, ORCH, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';
import { NODE20, ensureBuilt, jit, node20Version } from '../helpers/cli.ts';

// Every step spawns a Node process; on a busy 2-core machine a test of ten steps needs more than jest's 20 s.
jest.setTimeout(90_000);

/**
 * `jit cred get`, `jit exec`, `jit lease` and deciding approvals, on Node 20
 * against a real broker.
 */
let t: TestBroker;
const agentId = 'spiffe://dev.local/agent/support';
const as = (path: string) => ({ JIT_BROKER_URL: t.url, JIT_TOKEN: t.issuer.svid(path, { ttl: 600 }) });
let n = 0;

beforeAll(async () => {
  expect(node20Version()).toMatch(/^v20\./);
  await ensureBuilt();
  t = await startTestBroker('cli-cred');
}, 120_000);
afterAll(async () => {
  await t?.close();
});

async function openTask(grants: unknown[] = [{ role: 'tickets-api', scopes: ['tickets:read', 'tickets:write'] }]): Promise<string> {
  const taskId = `t-cred-${++n}-${Date.now()}`;
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'cli',
    ttlSeconds: 600,
    grants,
  });
  expect(r.status).toBe(201);
  return taskId;
}
const lease = async (leaseId: string) => (await call(t.url, 'GET', `/v1/leases/${leaseId}`, t.as(ORCH))).body;
const introspect = async (token: string) => {
  const res = await fetch(`${t.url}/v1/introspect`, {
    method: 'POST',
    headers: { ...t.as('/resource/tickets'), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token }),
  });
  return (await res.json()) as { active: boolean; scope?: string; task_id?: string };
};
const revoked = (leaseId: string) => waitFor(async () => (await lease(leaseId)).status === 'revoked', 8000, 25);

describe('jit cred get', () => {
  it('--format json (the default): the broker’s 201, a token the broker vouches for', async () => {
    const taskId = await openTask();
    const r = await jit(['cred', 'get', '--task', taskId, '--role', 'tickets-api', '--scopes', 'tickets:read', '--ttl', '2m'], as(AGENT));
    expect(r.code).toBe(0);
    const cred = JSON.parse(r.stdout);
    expect(cred).toMatchObject({
      taskId,
      role: 'tickets-api',
      provider: 'jwt',
      ttlSeconds: 120,
      credentials: { token_type: 'Bearer', scope: 'tickets:read' },
    });
    expect(await introspect(cred.credentials.access_token)).toMatchObject({ active: true, scope: 'tickets:read', task_id: taskId });
  });

  it('--scopes is a comma list, repeatable; --scopes "" asks for no scope', async () => {
    const taskId = await openTask();
    const two = JSON.parse(
      (
        await jit(
          ['cred', 'get', '--task', taskId, '--role', 'tickets-api', '--scopes', 'tickets:read', '--scopes', 'tickets:write'],
          as(AGENT),
        )
      ).stdout,
    );
    expect(two.credentials.scope).toBe('tickets:read tickets:write');
    const none = JSON.parse((await jit(['cred', 'get', '--task', taskId, '--role', 'tickets-api', '--scopes', ''], as(AGENT))).stdout);
    expect(none.scopes).toEqual([]);
    const beyond = await jit(['cred', 'get', '--task', taskId, '--role', 'tickets-api', '--scopes', 'tickets:admin'], as(AGENT));
    expect(beyond).toMatchObject({ code: 1, stderr: expect.stringMatching(/403 scope_not_granted/) });
  });

  it('--format env: export lines a shell can eval', async () => {
    const taskId = await openTask();
    const r = await jit(['cred', 'get', '--task', taskId, '--role', 'tickets-api', '--format', 'env'], as(AGENT));
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.map((l) => l.split('=')[0]).sort()).toEqual(
      ['JIT_ACCESS_TOKEN', 'JIT_CREDENTIAL_EXPIRES_AT', 'JIT_LEASE_ID', 'JIT_ROLE', 'JIT_TASK_ID'].map((k) => `export ${k}`),
    );
    const evaluated = execFileSync('sh', ['-c', 'eval "$CRED"; printf "%s\\n%s\\n%s" "$JIT_ACCESS_TOKEN" "$JIT_TASK_ID" "$JIT_LEASE_ID"'], {
      env: { PATH: process.env.PATH, CRED: r.stdout },
      encoding: 'utf8',
    }).split('\n');
    expect(evaluated[1]).toBe(taskId);
    expect(await introspect(evaluated[0]!)).toMatchObject({ active: true, task_id: taskId });
    expect((await lease(evaluated[2]!)).status).toBe('active');
  });

  it('--format aws-process on a jwt role: bad usage (2), and the lease it got is given back', async () => {
    const taskId = await openTask();
    const r = await jit(['cred', 'get', '--task', taskId, '--role', 'tickets-api', '--format', 'aws-process'], as(AGENT));
    expect(r).toMatchObject({ code: 2, stdout: '', stderr: expect.stringMatching(/tickets-api is a jwt role/) });
    const task = await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH));
    expect(task.body.leases).toHaveLength(1);
    await revoked(task.body.leases[0].leaseId);
    expect((await lease(task.body.leases[0].leaseId)).reason).toBe('revoked_by_caller');
  });

  it('refusals exit 1: not the task’s agent, a role not granted; bad usage 2: no --role, an unknown --format', async () => {
    const taskId = await openTask();
    expect(await jit(['cred', 'get', '--task', taskId, '--role', 'tickets-api'], as('/agent/other'))).toMatchObject({
      code: 1,
      stderr: expect.stringMatching(/403 not_task_agent/),
    });
    expect(await jit(['cred', 'get', '--task', taskId, '--role', 'demo-api', '--json'], as(AGENT))).toMatchObject({
      code: 1,
      stdout: expect.stringContaining('"code": "role_not_granted"'),
    });
    expect((await jit(['cred', 'get', '--task', taskId], as(AGENT))).code).toBe(2);
    expect((await jit(['cred', 'get', '--task', taskId, '--role', 'tickets-api', '--format', 'yaml'], as(AGENT))).code).toBe(2);
  });
});

describe('jit exec', () => {
  const dir = mkdtempSync(join(tmpdir(), 'jit-exec-'));
  // The command under test: reports its environment, then exits as told.
  const probe = join(dir, 'probe.mjs');
  writeFileSync(
    probe,
    `const keys = ['JIT_ACCESS_TOKEN', 'JIT_LEASE_ID', 'JIT_TASK_ID', 'JIT_ROLE', 'JIT_TOKEN', 'JIT_TOKEN_FILE', 'KEEP_ME'];
process.stdout.write(JSON.stringify(Object.fromEntries(keys.map((k) => [k, process.env[k] ?? null]))));
const how = process.argv[2];
if (how === 'signal') process.kill(process.pid, 'SIGTERM');
else process.exitCode = Number(how);
`,
  );
  const run = (taskId: string, how: string, env: Record<string, string> = as(AGENT)) =>
    jit(['exec', '--task', taskId, '--role', 'tickets-api', '--scopes', 'tickets:read', '--', NODE20, probe, how], {
      ...env,
      KEEP_ME: 'yes',
    });

  it('runs the command with the credential and without the identity; revokes the lease after a zero exit', async () => {
    const taskId = await openTask();
    const tokenFile = join(dir, 'svid');
    writeFileSync(tokenFile, t.issuer.svid(AGENT, { ttl: 600 }));
    const r = await run(taskId, '0', { JIT_BROKER_URL: t.url, JIT_TOKEN_FILE: tokenFile });
    expect(r.code).toBe(0);
    const seen = JSON.parse(r.stdout);
    expect(seen).toMatchObject({ JIT_TASK_ID: taskId, JIT_ROLE: 'tickets-api', JIT_TOKEN: null, JIT_TOKEN_FILE: null, KEEP_ME: 'yes' });
    expect(seen.JIT_ACCESS_TOKEN).toMatch(/^ey/);
    // Revoked by the time jit exits: introspection says so at once, the worker finishes upstream.
    expect(await introspect(seen.JIT_ACCESS_TOKEN)).toEqual({ active: false });
    await revoked(seen.JIT_LEASE_ID);
    expect(await lease(seen.JIT_LEASE_ID)).toMatchObject({ status: 'revoked', reason: 'revoked_by_caller' });
  });

  it('passes a non-zero exit code through, and still revokes', async () => {
    const taskId = await openTask();
    const r = await run(taskId, '7');
    expect(r.code).toBe(7);
    const seen = JSON.parse(r.stdout);
    expect(seen.JIT_TOKEN).toBeNull();
    await revoked(seen.JIT_LEASE_ID);
  });

  it('a command killed by a signal exits 128 + the signal number; the lease is revoked', async () => {
    const taskId = await openTask();
    const r = await run(taskId, 'signal');
    expect(r.code).toBe(143);
    await revoked(JSON.parse(r.stdout).JIT_LEASE_ID);
  });

  it('a command that does not exist: 127, and the lease is revoked', async () => {
    const taskId = await openTask();
    const r = await jit(['exec', '--task', taskId, '--role', 'tickets-api', '--', join(dir, 'no-such-command')], as(AGENT));
    expect(r).toMatchObject({ code: 127, stderr: expect.stringMatching(/cannot run .*no-such-command: ENOENT/) });
    const task = await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH));
    await revoked(task.body.leases[0].leaseId);
  });

  it('no credential, no command run: a refusal exits 1, a missing -- exits 2', async () => {
    const taskId = await openTask();
    const marker = join(dir, 'ran');
    const refused = await jit(['exec', '--task', taskId, '--role', 'demo-api', '--', 'touch', marker], as(AGENT));
    expect(refused).toMatchObject({ code: 1, stderr: expect.stringMatching(/403 role_not_granted/) });
    expect(await import('node:fs').then((fs) => fs.existsSync(marker))).toBe(false);
    expect((await jit(['exec', '--task', taskId, '--role', 'tickets-api'], as(AGENT))).code).toBe(2);
  });
});

describe('jit lease show | revoke', () => {
  it('shows a lease without secrets and revokes it', async () => {
    const taskId = await openTask();
    const cred = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api' });
    const leaseId = cred.body.leaseId as string;
    const shown = await jit(['lease', 'show', leaseId], as(AGENT));
    expect(shown.code).toBe(0);
    expect(shown.stdout).toMatch(new RegExp(`^lease +${leaseId}$`, 'm'));
    expect(shown.stdout).toMatch(/^status +active$/m);
    expect(shown.stdout).not.toContain(cred.body.credentials.access_token);
    const json = JSON.parse((await jit(['lease', 'show', leaseId, '--json'], as(ORCH))).stdout);
    expect(json).toMatchObject({ leaseId, taskId, role: 'tickets-api', status: 'active' });

    const r = await jit(['lease', 'revoke', leaseId], as(AGENT));
    expect(r).toMatchObject({ code: 0, stdout: `lease ${leaseId}: revocation accepted\n` });
    await revoked(leaseId);
    expect(await introspect(cred.body.credentials.access_token)).toEqual({ active: false });
    expect(await jit(['lease', 'show', 'f'.repeat(32)], as(ADMIN))).toMatchObject({
      code: 1,
      stderr: expect.stringMatching(/404 lease_not_found/),
    });
  });
});

describe('approvals: cred get on an approval role, jit approvals approve | reject', () => {
  const prod = [{ role: 'prod-deploy', scopes: [] }];
  const ask = (taskId: string, ...more: string[]) => jit(['cred', 'get', '--task', taskId, '--role', 'prod-deploy', ...more], as(AGENT));
  const approvalIdOf = (stderr: string) => /approval ([a-f0-9]{32})/.exec(stderr)?.[1];

  it('pending exits 1 naming the approval; once approved the same request answers the credential, once', async () => {
    const taskId = await openTask(prod);
    const first = await ask(taskId);
    expect(first.code).toBe(1);
    const approvalId = approvalIdOf(first.stderr)!;
    expect(approvalId).toBeDefined();
    expect(first.stderr).toContain(`jit approvals approve ${approvalId}`);
    expect(JSON.parse((await ask(taskId, '--json')).stdout)).toEqual({ approvalId, status: 'pending' });

    // The agent cannot approve its own request; an approver can.
    expect((await jit(['approvals', 'approve', approvalId], as(AGENT))).code).toBe(1);
    const ok = await jit(['approvals', 'approve', approvalId, '--reason', 'change 42'], as(ADMIN));
    expect(ok).toMatchObject({ code: 0, stdout: `approval ${approvalId}: approved (task ${taskId}, role prod-deploy)\n` });
    const shown = JSON.parse((await jit(['approvals', 'show', approvalId, '--json'], as(AGENT))).stdout);
    expect(shown).toMatchObject({ approvalId, status: 'approved', reason: 'change 42' });

    const cred = await ask(taskId);
    expect(cred.code).toBe(0);
    expect(JSON.parse(cred.stdout)).toMatchObject({ taskId, role: 'prod-deploy', provider: 'jwt' });
    // Deciding again is a conflict.
    expect(await jit(['approvals', 'reject', approvalId], as(ADMIN))).toMatchObject({ code: 1, stderr: expect.stringMatching(/409/) });
  });

  it('rejected: the request is refused (exit 1, 403 approval_rejected)', async () => {
    const taskId = await openTask(prod);
    const approvalId = approvalIdOf((await ask(taskId)).stderr)!;
    const r = await jit(['approvals', 'reject', approvalId, '--reason', 'not today', '--json'], as(ADMIN));
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ approvalId, status: 'rejected' });
    expect(await ask(taskId)).toMatchObject({ code: 1, stderr: expect.stringMatching(/403 approval_rejected/) });
  });

  it('--wait waits for the approver, then prints the credential', async () => {
    const taskId = await openTask(prod);
    const waiting = ask(taskId, '--wait');
    // The approval jit's own request created (asking here too could approve before jit ever saw it pending).
    const approval = await waitFor(async () => {
      const list = await call(t.url, 'GET', '/v1/approvals?status=pending', t.as(ADMIN));
      return (list.body.items as { approvalId: string; taskId: string }[]).find((a) => a.taskId === taskId)?.approvalId;
    });
    expect((await jit(['approvals', 'approve', approval], as(ADMIN))).code).toBe(0);
    const r = await waiting;
    expect(r.code).toBe(0);
    expect(r.stderr).toBe(`jit: waiting for approval ${approval} (an approver runs \`jit approvals approve ${approval}\`)\n`);
    expect(JSON.parse(r.stdout)).toMatchObject({ taskId, role: 'prod-deploy' });
  });
});
