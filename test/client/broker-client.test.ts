import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ApprovalPendingError,
  BrokerClient,
  BrokerResponseError,
  BrokerUnreachableError,
  ClientConfigError,
  type IssuedCredential,
  type JwtCredentials,
  isPending,
} from '../../src/client/index.ts';
import { ADMIN, AGENT, ORCH, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';

/** BrokerClient against a real broker (API + worker, real Redis). */
let t: TestBroker;
let n = 0;
const agentId = 'spiffe://dev.local/agent/support';

beforeAll(async () => {
  t = await startTestBroker('client', {
    config: {
      roles: {
        'tickets-api': {
          provider: 'jwt',
          audience: 'https://tickets.internal',
          maxTtlSeconds: 900,
          scopes: ['tickets:read', 'tickets:write'],
        },
        'short-api': { provider: 'jwt', audience: 'https://short.internal', maxTtlSeconds: 60 },
        'prod-deploy': { provider: 'jwt', audience: 'https://deploy.internal', maxTtlSeconds: 300, approval: 'required' },
      },
    },
  });
}, 60_000);
afterAll(async () => {
  await t?.close();
});

const as = (path: string, more: ConstructorParameters<typeof BrokerClient>[0] = {}) =>
  new BrokerClient({ url: t.url, token: () => t.issuer.svid(path), env: {}, ...more });
const orch = () => as(ORCH);

async function openTask(
  grants = [
    { role: 'tickets-api', scopes: ['tickets:read'] },
    { role: 'short-api', scopes: [] },
  ],
) {
  return orch().openTask({ taskId: `t-client-${++n}`, agent: agentId, tenant: 'acme', purpose: 'client', ttlSeconds: 1800, grants });
}

describe('tasks and leases', () => {
  it('opens, reads and completes a task; lease status and revocation', async () => {
    const task = await openTask();
    expect(task).toMatchObject({ taskId: task.taskId, status: 'open', agent: agentId });
    expect(
      await orch().openTask({
        taskId: task.taskId,
        agent: agentId,
        tenant: 'acme',
        purpose: 'client',
        ttlSeconds: 1800,
        grants: task.grants.map((g) => ({ role: g.role, scopes: g.scopes })),
      }),
    ).toMatchObject({ taskId: task.taskId });
    const agent = as(AGENT);
    const cred = await agent.getCredential<JwtCredentials>({ taskId: task.taskId, role: 'tickets-api' });
    expect(cred).toMatchObject({ taskId: task.taskId, provider: 'jwt', credentials: { token_type: 'Bearer', scope: 'tickets:read' } });
    expect((await agent.introspect(cred.credentials.access_token)).active).toBe(true);
    expect(await agent.getLease(cred.leaseId)).toMatchObject({ leaseId: cred.leaseId, status: 'active' });
    const detail = await orch().getTask(task.taskId);
    expect(detail.leases.map((l) => l.leaseId)).toEqual([cred.leaseId]);
    expect(await orch().completeTask(task.taskId)).toEqual({ taskId: task.taskId, status: 'completed', leases: 1 });
    await waitFor(async () => (await agent.getLease(cred.leaseId)).status === 'revoked');
    expect((await agent.introspect(cred.credentials.access_token)).active).toBe(false);
  });

  it('requestCredential answers 201 and 202 as they are; exchangeToken is RFC 8693', async () => {
    const task = await openTask([
      { role: 'tickets-api', scopes: ['tickets:read'] },
      { role: 'prod-deploy', scopes: [] },
    ]);
    const agent = as(AGENT);
    const issued = await agent.requestCredential({ taskId: task.taskId, role: 'tickets-api' });
    expect(isPending(issued)).toBe(false);
    const pending = await agent.requestCredential({ taskId: task.taskId, role: 'prod-deploy' });
    expect(isPending(pending) && pending.approvalId).toMatch(/^[a-f0-9]{32}$/);
    const exchanged = await agent.exchangeToken({ taskId: task.taskId, audience: 'tickets-api', scope: ['tickets:read'] });
    expect(exchanged).toMatchObject({
      token_type: 'Bearer',
      issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
      scope: 'tickets:read',
    });
    await expect(agent.exchangeToken({ taskId: task.taskId, audience: 'demo-api' })).rejects.toMatchObject({
      status: 400,
      code: 'invalid_target',
    });
  });
});

describe('the credential cache', () => {
  it('hands out one credential until the margin: 60 s before expiry, at most a quarter of its lifetime', async () => {
    const task = await openTask();
    let clock = Date.now();
    const agent = as(AGENT, { now: () => clock });
    const long = await agent.getCredential({ taskId: task.taskId, role: 'tickets-api' });
    const short = await agent.getCredential({ taskId: task.taskId, role: 'short-api' });
    const longExp = Date.parse(long.expiresAt);
    const shortExp = Date.parse(short.expiresAt);
    expect(longExp - clock).toBeGreaterThan(890_000);
    // A 60-s credential. expiresAt is on the broker's clock (Redis's), which may run a few ms ahead of this
    // process's: `<= 60_000` failed once at 60,001.
    expect(shortExp - clock).toBeGreaterThan(55_000);
    expect(shortExp - clock).toBeLessThan(61_000);

    // 900 s credential: kept until 60 s before expiry.
    clock = longExp - 61_000;
    expect((await agent.getCredential({ taskId: task.taskId, role: 'tickets-api' })).leaseId).toBe(long.leaseId);
    clock = longExp - 59_000;
    const renewed = await agent.getCredential({ taskId: task.taskId, role: 'tickets-api' });
    expect(renewed.leaseId).not.toBe(long.leaseId);

    // 60 s credential: a 60 s margin would renew it on every call; a quarter of its life (15 s) is the margin.
    clock = shortExp - 16_000;
    expect((await agent.getCredential({ taskId: task.taskId, role: 'short-api' })).leaseId).toBe(short.leaseId);
    clock = shortExp - 14_000;
    expect((await agent.getCredential({ taskId: task.taskId, role: 'short-api' })).leaseId).not.toBe(short.leaseId);
  });

  it('distinct requests are distinct entries; concurrent callers share one request', async () => {
    const task = await openTask([{ role: 'tickets-api', scopes: ['tickets:read', 'tickets:write'] }]);
    const agent = as(AGENT);
    const same = await Promise.all([1, 2, 3, 4].map(() => agent.getCredential({ taskId: task.taskId, role: 'tickets-api' })));
    expect(new Set(same.map((c) => c.leaseId)).size).toBe(1);
    const narrower = await agent.getCredential({ taskId: task.taskId, role: 'tickets-api', scopes: ['tickets:read'] });
    expect(narrower.leaseId).not.toBe(same[0]!.leaseId);
    expect((await orch().getTask(task.taskId)).leases).toHaveLength(2);
    // fresh: always a new lease.
    const fresh = await agent.getCredential({ taskId: task.taskId, role: 'tickets-api' }, { fresh: true });
    expect(fresh.leaseId).not.toBe(same[0]!.leaseId);
  });

  it('a refresh that gets no answer keeps the still-valid credential; a refusal is thrown', async () => {
    const task = await openTask();
    let clock = Date.now();
    let broken = false;
    const agent = as(AGENT, {
      now: () => clock,
      // The network fails between the client and the broker (fault injection, the broker is real).
      fetch: (input, init) => (broken ? Promise.reject(new TypeError('fetch failed')) : fetch(input, init)),
    });
    const first = await agent.getCredential({ taskId: task.taskId, role: 'tickets-api' });
    clock = Date.parse(first.expiresAt) - 30_000;
    broken = true;
    expect((await agent.getCredential({ taskId: task.taskId, role: 'tickets-api' })).leaseId).toBe(first.leaseId);
    // Past its expiry nothing is handed out.
    clock = Date.parse(first.expiresAt) + 1;
    await expect(agent.getCredential({ taskId: task.taskId, role: 'tickets-api' })).rejects.toBeInstanceOf(BrokerUnreachableError);
    broken = false;
    clock = Date.parse(first.expiresAt) - 30_000;
    await orch().completeTask(task.taskId);
    await expect(agent.getCredential({ taskId: task.taskId, role: 'tickets-api' })).rejects.toMatchObject({ status: 409 });
  });

  it('revokeCached gives back every cached credential', async () => {
    const task = await openTask();
    const agent = as(AGENT);
    const a = await agent.getCredential({ taskId: task.taskId, role: 'tickets-api' });
    const b = await agent.getCredential({ taskId: task.taskId, role: 'short-api' });
    await agent.revokeCached();
    for (const c of [a, b]) await waitFor(async () => (await agent.getLease(c.leaseId)).status === 'revoked');
    expect((await agent.getCredential({ taskId: task.taskId, role: 'tickets-api' })).leaseId).not.toBe(a.leaseId);
  });

  it('close() revokes what it holds and what is still being issued, and issues no more', async () => {
    const task = await openTask();
    // The broker issues at once; its answers reach the client only when released (a slow network).
    const gates: (() => void)[] = [];
    let gated = false;
    let asked = 0;
    const agent = as(AGENT, {
      fetch: async (input, init) => {
        const res = await fetch(input, init);
        if (String(input).endsWith('/v1/credentials')) {
          asked++;
          if (gated) await new Promise<void>((r) => gates.push(r));
        }
        return res;
      },
    });
    const held = await agent.getCredential({ taskId: task.taskId, role: 'tickets-api' });
    gated = true;
    const issuing = agent.getCredential({ taskId: task.taskId, role: 'short-api' }).catch((e: unknown) => e);
    const fresh = agent.getCredential({ taskId: task.taskId, role: 'tickets-api' }, { fresh: true }).catch((e: unknown) => e);
    await waitFor(async () => asked === 3);
    const closing = agent.close({ waitMs: 5000 });
    setTimeout(() => {
      for (const open of gates) open();
    }, 300);
    await closing;
    for (const r of [await issuing, await fresh]) expect(r).toMatchObject({ code: 'client_closed' });
    const leases = (await orch().getTask(task.taskId)).leases;
    expect(leases).toHaveLength(3);
    for (const l of leases) await waitFor(async () => (await agent.getLease(l.leaseId)).status === 'revoked');
    expect(leases.map((l) => l.leaseId)).toContain(held.leaseId);
    // Closed: nothing more is asked for, cached or not.
    await expect(agent.getCredential({ taskId: task.taskId, role: 'tickets-api' })).rejects.toMatchObject({ code: 'client_closed' });
    await expect(agent.requestCredential({ taskId: task.taskId, role: 'tickets-api' })).rejects.toMatchObject({ code: 'client_closed' });
    expect(asked).toBe(3);
  });

  it('close() waits only waitMs; a credential answered later is revoked when it arrives', async () => {
    const task = await openTask();
    let release = () => {};
    const agent = as(AGENT, {
      fetch: async (input, init) => {
        const res = await fetch(input, init);
        if (String(input).endsWith('/v1/credentials')) await new Promise<void>((r) => (release = r));
        return res;
      },
    });
    const issuing = agent.getCredential({ taskId: task.taskId, role: 'tickets-api' }).catch((e: unknown) => e);
    const lease = await waitFor(async () => (await orch().getTask(task.taskId)).leases[0]);
    const started = Date.now();
    await agent.close({ waitMs: 200 });
    expect(Date.now() - started).toBeLessThan(2000);
    expect((await agent.getLease(lease.leaseId)).status).toBe('active');
    release();
    expect(await issuing).toMatchObject({ code: 'client_closed' });
    await waitFor(async () => (await agent.getLease(lease.leaseId)).status === 'revoked');
  });
});

describe('approvals', () => {
  it('ApprovalPendingError by default; waitForApproval waits for the approver, then issues', async () => {
    const task = await openTask([{ role: 'prod-deploy', scopes: [] }]);
    const agent = as(AGENT);
    const err = await agent.getCredential({ taskId: task.taskId, role: 'prod-deploy' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApprovalPendingError);
    const approvalId = (err as ApprovalPendingError).approvalId;
    expect(await agent.getApproval(approvalId)).toMatchObject({ approvalId, status: 'pending', role: 'prod-deploy' });

    const waiting = agent.getCredential({ taskId: task.taskId, role: 'prod-deploy' }, { waitForApproval: { intervalMs: 50 } });
    await new Promise((r) => setTimeout(r, 200));
    expect(await as(ADMIN).approve(approvalId, 'ok')).toMatchObject({ status: 'approved' });
    const cred: IssuedCredential = await waiting;
    expect(cred).toMatchObject({ taskId: task.taskId, role: 'prod-deploy' });
  });

  it('a rejected request is a 403; waiting gives up after timeoutMs', async () => {
    const task = await openTask([{ role: 'prod-deploy', scopes: [] }]);
    const agent = as(AGENT);
    await expect(
      agent.getCredential({ taskId: task.taskId, role: 'prod-deploy' }, { waitForApproval: { intervalMs: 50, timeoutMs: 150 } }),
    ).rejects.toBeInstanceOf(ApprovalPendingError);
    const id = ((await agent.requestCredential({ taskId: task.taskId, role: 'prod-deploy' })) as { approvalId: string }).approvalId;
    await as(ADMIN).reject(id, 'no');
    await expect(agent.getCredential({ taskId: task.taskId, role: 'prod-deploy' })).rejects.toMatchObject({
      status: 403,
      code: 'approval_rejected',
    });
  });
});

describe('approvals on a stepped clock', () => {
  const realDateNow = Date.now;
  afterEach(() => {
    Date.now = realDateNow;
  });
  it('waiting gives up after timeoutMs even when the wall clock steps back an hour meanwhile', async () => {
    // The deadline was on the wall clock: a step back (NTP setting a fast clock right) made a 300-ms wait an
    // hour long, and one forward ended a long wait at once.
    const task = await openTask([{ role: 'prod-deploy', scopes: [] }]);
    // One token minted before the step (the test's issuer dates its tokens on this process's wall clock).
    const agent = new BrokerClient({ url: t.url, token: t.issuer.svid(AGENT), env: {} });
    const waiting = agent.getCredential(
      { taskId: task.taskId, role: 'prod-deploy' },
      { waitForApproval: { intervalMs: 50, timeoutMs: 300 } },
    );
    await new Promise((r) => setTimeout(r, 100));
    Date.now = () => realDateNow() - 3_600_000;
    const outcome = await Promise.race([
      waiting.then(
        () => 'issued',
        (e: unknown) => (e instanceof ApprovalPendingError ? 'gave up' : String(e)),
      ),
      new Promise((r) => setTimeout(() => r('still waiting after 3 s'), 3000)),
    ]);
    expect(outcome).toBe('gave up');
  });
});

describe('identity and errors', () => {
  it('a token file is re-read on every request', async () => {
    const task = await openTask();
    const file = join(mkdtempSync(join(tmpdir(), 'jit-client-')), 'svid');
    writeFileSync(file, `${t.issuer.svid(AGENT)}\n`);
    const client = new BrokerClient({ url: t.url, tokenFile: file, env: {} });
    expect((await client.getTask(task.taskId)).taskId).toBe(task.taskId);
    writeFileSync(file, t.issuer.svid('/agent/other'));
    await expect(client.getTask(task.taskId)).rejects.toMatchObject({ status: 403, code: 'not_task_party' });
  });

  it('reads JIT_BROKER_URL, JIT_TOKEN and JIT_TOKEN_FILE (JIT_TOKEN first) from the environment it is given', async () => {
    const task = await openTask();
    const file = join(mkdtempSync(join(tmpdir(), 'jit-client-')), 'svid');
    writeFileSync(file, t.issuer.svid('/agent/other'));
    const viaEnv = new BrokerClient({ env: { JIT_BROKER_URL: t.url, JIT_TOKEN: t.issuer.svid(AGENT), JIT_TOKEN_FILE: file } });
    expect(viaEnv.url).toBe(t.url);
    expect((await viaEnv.getTask(task.taskId)).taskId).toBe(task.taskId);
    const viaFile = new BrokerClient({ env: { JIT_BROKER_URL: t.url, JIT_TOKEN_FILE: file } });
    await expect(viaFile.getTask(task.taskId)).rejects.toMatchObject({ status: 403 });
    await expect(new BrokerClient({ env: { JIT_BROKER_URL: t.url } }).getTask(task.taskId)).rejects.toMatchObject({ code: 'no_identity' });
    expect(new BrokerClient({ env: {} }).url).toBe('http://127.0.0.1:8080');
  });

  it('errors: a problem is a BrokerResponseError with the broker’s code and detail; no answer is BrokerUnreachableError', async () => {
    const err = (await as(ORCH)
      .getTask('no-such-task')
      .catch((e: unknown) => e)) as BrokerResponseError;
    expect(err).toBeInstanceOf(BrokerResponseError);
    expect(err).toMatchObject({ status: 404, code: 'task_not_found', detail: 'No task no-such-task.' });
    expect(err.message).toBe('404 task_not_found: No task no-such-task.');
    const down = await new BrokerClient({ url: 'http://127.0.0.1:9', token: 'x.y.z', env: {} }).getTask('x').catch((e: unknown) => e);
    expect(down).toBeInstanceOf(BrokerUnreachableError);
    expect(down).toMatchObject({ code: 'broker_unreachable' });
    expect(() => new BrokerClient({ url: 'ftp://x', env: {} })).toThrow(ClientConfigError);
    const slow = await new BrokerClient({ url: t.url, token: () => t.issuer.svid(ORCH), timeoutMs: 1, env: {} })
      .getTask('x')
      .catch((e: unknown) => e);
    expect(slow).toMatchObject({ code: 'timeout' });
  });

  it('operations without identity: health, ready, metadata, jwks', async () => {
    const c = new BrokerClient({ url: t.url, env: {} });
    expect(await c.health()).toEqual({ status: 'ok' });
    expect(await c.ready()).toMatchObject({ ready: true, status: 'ready' });
    expect(await c.metadata()).toMatchObject({ token_endpoint: expect.stringMatching(/\/v1\/token$/) });
    expect((await c.jwks()).keys.length).toBeGreaterThan(0);
  });
});

describe('lists (GET /v1/tasks, /v1/approvals, /v1/audit)', () => {
  it('paginate walks every page of a list', async () => {
    const o = as('/orchestrator/paging');
    const ids: string[] = [];
    for (let i = 0; i < 3; i++)
      ids.push(
        (
          await o.openTask({
            taskId: `t-page-${i}-${Date.now()}`,
            agent: agentId,
            tenant: 'acme',
            purpose: 'p',
            ttlSeconds: 60,
            grants: [{ role: 'short-api', scopes: [] }],
          })
        ).taskId,
      );
    const seen: string[] = [];
    for await (const task of o.paginate((cursor) => o.listTasks({ limit: 2, cursor }))) seen.push(task.taskId);
    expect(seen).toEqual([...ids].reverse());
    const audit = await as(ADMIN).queryAudit({ taskId: ids[0], limit: 10 });
    expect(audit.items[0]).toMatchObject({ action: 'task.open', taskId: ids[0], seq: expect.any(Number), hash: expect.any(String) });
    const approvals = await as(ADMIN).listApprovals({ status: 'pending' });
    expect(Array.isArray(approvals.items)).toBe(true);
  });
});
