import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ADMIN, AGENT, ORCH, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';
import { JIT, NODE20, ensureBuilt, jit, node20Version } from '../helpers/cli.ts';

// Every step spawns a Node process; on a busy 2-core machine a test of ten steps needs more than jest's 20 s.
jest.setTimeout(90_000);

/** `jit admin ...`, `jit approvals list` and `jit audit ...` on Node 20 against a real broker. */
let t: TestBroker;
const agentId = 'spiffe://dev.local/agent/support';
const as = (path: string) => ({ JIT_BROKER_URL: t.url, JIT_TOKEN: t.issuer.svid(path, { ttl: 600 }) });
let n = 0;

beforeAll(async () => {
  expect(node20Version()).toMatch(/^v20\./);
  await ensureBuilt();
  t = await startTestBroker('cli-admin');
}, 120_000);
afterAll(async () => {
  await t?.close();
});

async function openTask(opts: { agent?: string; tenant?: string; grants?: unknown[] } = {}): Promise<string> {
  const taskId = `t-adm-${++n}-${Date.now()}`;
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: opts.agent ?? agentId,
    tenant: opts.tenant ?? 'acme',
    purpose: 'cli admin',
    ttlSeconds: 600,
    grants: opts.grants ?? [{ role: 'tickets-api', scopes: ['tickets:read'] }],
  });
  expect(r.status).toBe(201);
  return taskId;
}
const issue = async (taskId: string, agent = AGENT) =>
  (await call(t.url, 'POST', '/v1/credentials', t.as(agent), { taskId, role: 'tickets-api' })).body;
const leaseOf = async (leaseId: string) => (await call(t.url, 'GET', `/v1/leases/${leaseId}`, t.as(ADMIN))).body;

describe('jit admin rotate | reload-policy', () => {
  it('rotate signing-key: 202 passed through; the new key appears in the JWKS', async () => {
    const before = (await (await fetch(`${t.url}/.well-known/jwks.json`)).json()) as { keys: { kid: string }[] };
    const r = await jit(['admin', 'rotate', 'signing-key', '--json'], as(ADMIN));
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ target: 'signing-key' });
    const after = (await (await fetch(`${t.url}/.well-known/jwks.json`)).json()) as { keys: { kid: string }[] };
    expect(after.keys.map((k) => k.kid)).toEqual(expect.arrayContaining(before.keys.map((k) => k.kid)));
    expect(after.keys.length).toBeGreaterThan(before.keys.length);
  });

  it('reload-policy: accepted for an admin, refused (exit 1) for anyone else', async () => {
    const r = await jit(['admin', 'reload-policy'], as(ADMIN));
    expect(r).toMatchObject({ code: 0, stdout: expect.stringMatching(/^policy reload accepted/) });
    expect(await jit(['admin', 'reload-policy'], as(ORCH))).toMatchObject({ code: 1, stderr: expect.stringMatching(/403 not_admin/) });
    expect(await jit(['admin', 'rotate', 'signing-key'], as(AGENT))).toMatchObject({ code: 1, stderr: expect.stringMatching(/403/) });
    expect((await jit(['admin', 'rotate'], as(ADMIN))).code).toBe(2);
  });
});

describe('jit admin revoke (POST /v1/admin/revoke)', () => {
  it('needs exactly one selector (exit 2 otherwise)', async () => {
    expect((await jit(['admin', 'revoke'], as(ADMIN))).code).toBe(2);
    expect((await jit(['admin', 'revoke', '--agent', agentId, '--tenant', 'acme'], as(ADMIN))).code).toBe(2);
  });

  it('--tenant ends every open task of the tenant and revokes its leases', async () => {
    const tenant = `tenant-${Date.now()}`;
    const a = await openTask({ tenant });
    const b = await openTask({ tenant });
    const other = await openTask();
    const la = await issue(a);
    const r = await jit(['admin', 'revoke', '--tenant', tenant, '--json'], as(ADMIN));
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ tasks: 2, leases: 1 });
    for (const id of [a, b]) expect((await call(t.url, 'GET', `/v1/tasks/${id}`, t.as(ADMIN))).body.status).toBe('completed');
    expect((await call(t.url, 'GET', `/v1/tasks/${other}`, t.as(ADMIN))).body.status).toBe('open');
    await waitFor(async () => (await leaseOf(la.leaseId)).status === 'revoked', 8000, 25);
    expect((await leaseOf(la.leaseId)).reason).toBe('revoked_by_admin');
    expect(await jit(['admin', 'revoke', '--task', other], as(ORCH))).toMatchObject({ code: 1 });
  });
});

describe('jit admin quarantine | unquarantine (/v1/admin/quarantine)', () => {
  it('quarantines a pattern (its calls answer 403), lists it, lifts it', async () => {
    const pattern = 'spiffe://dev.local/agent/rogue/*';
    const rogue = '/agent/rogue/one';
    const taskId = await openTask({ agent: `spiffe://dev.local${rogue}` });
    expect((await issue(taskId, rogue)).leaseId).toBeDefined();
    expect((await jit(['admin', 'quarantine', '--agent', pattern], as(ADMIN))).code).toBe(2);
    const q = await jit(['admin', 'quarantine', '--agent', pattern, '--reason', 'exfiltration'], as(ADMIN));
    // What it ended, as the kill switch says it (docs/operations.md: the answer says how many).
    expect(q).toMatchObject({
      code: 0,
      stdout: `quarantined ${pattern}; ended 1 task(s); 1 lease(s) being revoked; 0 lease(s) issued under its approvals revoked\n`,
    });
    const refused = await jit(['cred', 'get', '--task', taskId, '--role', 'tickets-api'], as(rogue));
    expect(refused).toMatchObject({ code: 1, stderr: expect.stringMatching(/403 identity_quarantined/) });
    const list = JSON.parse((await jit(['admin', 'quarantine', '--list', '--json'], as(ADMIN))).stdout);
    expect(list.items).toEqual(
      expect.arrayContaining([expect.objectContaining({ pattern, reason: 'exfiltration', by: 'spiffe://dev.local/ops/alice' })]),
    );
    const human = await jit(['admin', 'quarantine', '--list'], as(ADMIN));
    expect(human.stdout.split('\n')[0]).toMatch(/^PATTERN +REASON +BY +SINCE$/);
    expect(human.stdout).toContain(`${pattern}  exfiltration  spiffe://dev.local/ops/alice  `);
    // The quarantined agent's task was ended.
    expect((await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ADMIN))).body.status).toBe('completed');

    expect((await jit(['admin', 'unquarantine', pattern], as(ADMIN))).code).toBe(0);
    const again = JSON.parse((await jit(['admin', 'quarantine', '--list', '--json'], as(ADMIN))).stdout);
    expect(again.items.map((i: { pattern: string }) => i.pattern)).not.toContain(pattern);
    // Quarantining yourself is refused.
    expect(await jit(['admin', 'quarantine', '--agent', 'spiffe://dev.local/ops/*', '--reason', 'x'], as(ADMIN))).toMatchObject({
      code: 1,
    });
  });
});

describe('jit approvals list (GET /v1/approvals)', () => {
  it('an approver sees pending approvals with what they ask for', async () => {
    const taskId = await openTask({ grants: [{ role: 'prod-deploy', scopes: [] }] });
    const pending = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'prod-deploy', ttlSeconds: 60 });
    expect(pending.status).toBe(202);
    const r = await jit(['approvals', 'list', '--json'], as(ADMIN));
    expect(r.code).toBe(0);
    const page = JSON.parse(r.stdout);
    expect(page.items).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          approvalId: pending.body.approvalId,
          taskId,
          role: 'prod-deploy',
          scopes: [],
          ttlSeconds: 60,
          agent: agentId,
          status: 'pending',
          requestedAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
        }),
      ]),
    );
    const human = await jit(['approvals', 'list'], as(ADMIN));
    expect(human.stdout).toMatch(new RegExp(`^${pending.body.approvalId} +pending +${taskId} +prod-deploy `, 'm'));
  });
});

describe('jit approvals: the TTL approving gives', () => {
  it('list and show print the TTL a credential is issued with, and the one asked when it differs', async () => {
    // Red team: they printed the TTL as asked; beyond the role's maximum (prod-deploy: 300 s) it is issued for 300 s,
    // and an AWS request below STS's 900 s minimum for 900 s (test/approvals/issued-ttl.test.ts).
    const taskId = await openTask({ grants: [{ role: 'prod-deploy', scopes: [] }] });
    const pending = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'prod-deploy', ttlSeconds: 86_400 });
    expect(pending.status).toBe(202);
    const list = await jit(['approvals', 'list'], as(ADMIN));
    expect(list.stdout).toMatch(new RegExp(`^${pending.body.approvalId} +pending +${taskId} +prod-deploy +300s \\(asked 86400s\\) `, 'm'));
    const show = await jit(['approvals', 'show', pending.body.approvalId], as(ADMIN));
    expect(show.stdout).toMatch(/^ttl +300s \(asked 86400s\)$/m);
  });
});

describe('jit audit query | tail | verify | export (GET /v1/audit, evidence)', () => {
  it('query: a task’s records for its orchestrator, oldest first; without --task a non-admin is refused', async () => {
    const taskId = await openTask();
    await issue(taskId);
    const r = await jit(['audit', 'query', '--task', taskId, '--json'], as(ORCH));
    expect(r.code).toBe(0);
    const actions = JSON.parse(r.stdout).items.map((x: { action: string }) => x.action);
    expect(actions.slice(0, 2)).toEqual(['task.open', 'credential.issue']);
    expect(await jit(['audit', 'query'], as(ORCH))).toMatchObject({ code: 1, stderr: expect.stringMatching(/400/) });
    const human = await jit(['audit', 'query', '--task', taskId], as(ADMIN));
    expect(human.stdout).toMatch(/^SEQ +TIME +ACTOR +ACTION +DECISION +TASK +ROLE +REASON$/m);
  });

  it('export: every record as JSON lines to a file', async () => {
    const taskId = await openTask();
    await issue(taskId);
    const file = join(mkdtempSync(join(tmpdir(), 'jit-export-')), 'audit.jsonl');
    const r = await jit(['audit', 'export', '--task', taskId, '--output', file], as(ADMIN));
    expect(r).toMatchObject({ code: 0, stderr: expect.stringMatching(/exported \d+ record\(s\)/) });
    const records = readFileSync(file, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(records.map((x) => x.action).slice(0, 2)).toEqual(['task.open', 'credential.issue']);
    expect(records.every((x) => typeof x.hash === 'string' && typeof x.seq === 'number')).toBe(true);
  });

  it('tail: follows new records until interrupted', async () => {
    const child = spawn(NODE20, [JIT, 'audit', 'tail', '--interval', '1', '--json'], { env: { PATH: process.env.PATH, ...as(ADMIN) } });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    const exited = new Promise<number | null>((r) => child.on('close', r));
    try {
      await new Promise((r) => setTimeout(r, 1500));
      const taskId = await openTask();
      await waitFor(async () => out.includes(taskId), 10_000, 100);
      const rec = out
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l))
        .find((x) => x.taskId === taskId);
      expect(rec).toMatchObject({ action: 'task.open', actor: 'spiffe://dev.local/orchestrator/main' });
    } finally {
      child.kill('SIGINT');
    }
    expect(await exited).toBe(0);
  });

  it('verify --task: intact chain exits 0; without --task only an admin may (the whole log), others get bad usage', async () => {
    const taskId = await openTask();
    const r = await jit(['audit', 'verify', '--task', taskId], as(ORCH));
    expect(r).toMatchObject({ code: 0, stdout: expect.stringMatching(/audit chain intact/) });
    expect(await jit(['audit', 'verify'], as(ADMIN))).toMatchObject({ code: 0, stdout: expect.stringMatching(/audit log: chain intact/) });
    expect((await jit(['audit', 'verify'], as(ORCH))).code).toBe(2);
  });
});
