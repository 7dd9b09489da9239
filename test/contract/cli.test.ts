/**
 * Contract section 9 (the `jit` command on Node 20) where it deviated from the
 * contract: a verify command must detect tampering with any record (section 7).
 */
import { jest } from '@jest/globals';
import { type AuditRecord, hashRecord } from '../../src/audit/record.ts';
import { recordHash } from '../../src/cli/audit-chain.ts';
import { ADMIN, AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { ensureBuilt, jit, node20Version } from '../helpers/cli.ts';

jest.setTimeout(90_000);

let t: TestBroker;
const as = (path: string) => ({ JIT_BROKER_URL: t.url, JIT_TOKEN: t.issuer.svid(path, { ttl: 600 }) });

beforeAll(async () => {
  expect(node20Version()).toMatch(/^v20\./);
  await ensureBuilt();
  t = await startTestBroker('contract-cli');
}, 120_000);
afterAll(async () => {
  await t?.close();
});

/** A task with `n` credential.issue records after its task.open record (on broker `b`, default `t`). */
async function busyTask(n: number, b: TestBroker = t): Promise<string> {
  const taskId = `t-verify-${Date.now()}`;
  const open = await call(b.url, 'POST', '/v1/tasks', b.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'contract verify',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
  });
  expect(open.status).toBe(201);
  for (let i = 0; i < n; i++) {
    const r = await call(b.url, 'POST', '/v1/credentials', b.as(AGENT), { taskId, role: 'tickets-api' });
    expect(r.status).toBe(201);
  }
  return taskId;
}

describe('jit audit verify --task: every record of the task, not just the first page', () => {
  test('a record deleted past the first page (50 records) is found: exit 1, broken', async () => {
    const taskId = await busyTask(60);
    expect(await jit(['audit', 'verify', '--task', taskId], as(ORCH))).toMatchObject({ code: 0 });
    // Someone with Redis access deletes record 56 of the task's chain.
    const page = await call(t.url, 'GET', `/v1/audit?taskId=${taskId}&limit=500`, t.as(ORCH));
    expect(page.body.items.length).toBeGreaterThan(56);
    const victim = page.body.items[55];
    const { deps } = t.broker;
    expect(await deps.redis.xdel(deps.keys.auditStream(victim.chain), victim.streamId)).toBe(1);
    const r = await jit(['audit', 'verify', '--task', taskId, '--json'], as(ORCH));
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ taskId, chain: 'broken' });
  });
});

describe('jit audit verify without --task (admins): every record the broker holds', () => {
  // A broker of its own: the test above breaks a chain of `t` on purpose.
  let u: TestBroker;
  const asU = (path: string) => ({ JIT_BROKER_URL: u.url, JIT_TOKEN: u.issuer.svid(path, { ttl: 600 }) });
  beforeAll(async () => {
    u = await startTestBroker('contract-cli-all');
  });
  afterAll(async () => {
    await u?.close();
  });

  // Before the test below breaks a chain of `u`.
  test('records left unsealed for longer than the bound (the export lock kept by someone): exit 1, not "intact"', async () => {
    const { deps } = u.broker;
    // Someone keeps the export lock the way a broker holds it (a plausible TTL): no pass runs, nothing is sealed.
    await deps.redis.set(deps.keys.lock('audit-export'), 'someone', 'PX', 29_000);
    try {
      await busyTask(1, u);
      await new Promise((r) => setTimeout(r, 3000));
      const r = await jit(['audit', 'verify', '--max-seal-age', '2', '--json'], asU(ADMIN));
      expect(r.code).toBe(1);
      const out = JSON.parse(r.stdout);
      expect(out).toMatchObject({ chain: 'unsealed', seals: { maxSealAgeSeconds: 2 } });
      expect(out.seals.problems).toContainEqual({
        chain: expect.any(String),
        problem: expect.stringMatching(/record\(s\) unsealed for \d+ s, longer than the bound of 2 s: sealing has stopped/),
      });
      const text = await jit(['audit', 'verify', '--max-seal-age', '2'], asU(ADMIN));
      expect(text).toMatchObject({
        code: 1,
        stdout: expect.stringMatching(/audit log: chain not provable \(records unsealed for too long\)/),
      });
      // The broker's bound (audit.sealMaxAgeSeconds, 180 s) is not reached yet.
      expect(await jit(['audit', 'verify'], asU(ADMIN))).toMatchObject({ code: 0 });
    } finally {
      await deps.redis.del(deps.keys.lock('audit-export'));
    }
  });

  test('intact: exit 0; a record deleted from a chain: exit 1, broken; non-admins: exit 2 (give --task)', async () => {
    const taskId = await busyTask(3, u);
    const ok = await jit(['audit', 'verify', '--json'], asU(ADMIN));
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ chain: 'intact' });
    expect(JSON.parse(ok.stdout).records).toBeGreaterThanOrEqual(4);
    expect((await jit(['audit', 'verify'], asU(ORCH))).code).toBe(2);

    const page = await call(u.url, 'GET', `/v1/audit?taskId=${taskId}`, u.as(ADMIN));
    const victim = page.body.items[1];
    const { deps } = u.broker;
    expect(await deps.redis.xdel(deps.keys.auditStream(victim.chain), victim.streamId)).toBe(1);
    const broken = await jit(['audit', 'verify'], asU(ADMIN));
    expect(broken.code).toBe(1);
    expect(broken.stdout).toMatch(/chain broken/);
    expect(broken.stdout).toMatch(new RegExp(`records ${victim.seq}\\.\\.${victim.seq} are missing`));
  });

  test("the CLI's copy of the hash rule is the broker's", () => {
    const r = {
      action: 'credential.issue',
      actor: 'spiffe://dev.local/agent/x',
      decision: 'allow',
      taskId: 't',
      // Not only ASCII: the broker hashes one concatenated string, the CLI three updates; both must be UTF-8.
      detail: { b: [1, 'x'], a: { z: true, y: null }, note: 'é ✓ 𝄞' },
      seq: 7,
      time: '2026-01-01T00:00:00.000Z',
      prev: 'ab'.repeat(32),
    } as unknown as Omit<AuditRecord, 'hash'>;
    expect(recordHash({ ...r, hash: 'x', chain: 3, streamId: '1-0' } as never)).toBe(hashRecord(r));
  });
});

describe('jit task open --parent: what the API inherits may be left out', () => {
  test('without --tenant and --purpose a sub-task opens (the parent’s are inherited): exit 0, prints its id', async () => {
    const parent = `t-parent-${Date.now()}`;
    const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
      taskId: parent,
      agent: `spiffe://dev.local${AGENT}`,
      tenant: 'acme',
      purpose: 'triage ticket 4711',
      ttlSeconds: 600,
      grants: [{ role: 'tickets-api', scopes: ['tickets:read'], maxTtlSeconds: 300 }],
    });
    expect(open.status).toBe(201);
    const r = await jit(
      [
        'task',
        'open',
        '--parent',
        parent,
        '--agent',
        'spiffe://dev.local/agent/helper',
        '--ttl',
        '60',
        '--grant',
        'tickets-api:tickets:read@300',
        '--task',
        'lookup',
      ],
      as(AGENT),
    );
    expect(r).toMatchObject({ code: 0, stdout: `${parent}~lookup\n` });
    const sub = await call(t.url, 'GET', `/v1/tasks/${parent}~lookup`, t.as(AGENT));
    expect(sub.body).toMatchObject({ tenant: 'acme', purpose: 'triage ticket 4711', parentTaskId: parent });
  });
});

describe('global flags (--json, --broker, --token-file) before the command', () => {
  test('jit --json --broker URL task show ID: JSON on stdout, exit 0', async () => {
    const taskId = await busyTask(0);
    const { JIT_TOKEN } = as(ORCH);
    const r = await jit(['--json', '--broker', t.url, 'task', 'show', taskId], { JIT_TOKEN });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ taskId, status: 'open' });
    const eq = await jit([`--broker=${t.url}`, '--json', 'task', 'show', taskId], { JIT_TOKEN });
    expect(eq.code).toBe(0);
    expect(JSON.parse(eq.stdout)).toMatchObject({ taskId });
  });

  test('an unknown flag before the command is still bad usage (exit 2)', async () => {
    expect((await jit(['--colour', 'task', 'list'], as(ORCH))).code).toBe(2);
  });
});

describe('bad usage is exit 2, before anything is sent', () => {
  test.each([[['task', 'list', '--status', 'bogus']], [['approvals', 'list', '--status', 'bogus']]])('jit %j', async (args) => {
    const r = await jit(args, as(ORCH));
    expect(r).toMatchObject({ code: 2, stderr: expect.stringMatching(/--status must be one of/) });
  });
});
